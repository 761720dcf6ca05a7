"""The shared loop arithmetic: token-normalised accumulation, resume, schedule, data plan."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from mmtune.config import StageConfig
from mmtune.data.collate import collate
from mmtune.synth.shapes import generate
from mmtune.model import MultimodalLM
from mmtune.recipes.common import load_recipe_config, training_data
from mmtune.train.run import make_accelerator, seed_everything
from mmtune.recipes.llava import main as llava_main
from mmtune.train.loop import BatchPlan, LanguageModelObjective, loss_sum, make_scheduler, train_step

from conftest import SMALL



@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate(out, n_train=48, n_test=12, seed=3, image_size=32)
    return out


def small_cfg(shapes: Path, *extra: str):
    return load_recipe_config("llava", "tiny", [f"data_dir={shapes}", *SMALL, *extra])


def test_accumulation_matches_one_big_batch(shapes):
    """batch 8 x accumulation 1 and batch 1 x accumulation 8 give the same update."""
    cfg = small_cfg(shapes)
    seed_everything(0)
    model = MultimodalLM.build(cfg.model)
    model.requires_grad_(True)
    model.encoders.requires_grad_(False)
    dataset, collate_fn, _ = training_data(model, cfg, shapes / "train.jsonl", None)
    examples = [dataset[i] for i in range(8)]
    # Answers of different lengths make per-micro-batch averaging visibly wrong.
    assert len({sum(lab != -100 for lab in e.labels) for e in examples}) > 1
    accelerator = make_accelerator("no")  # fp32: the comparison is to 1e-6
    stage = StageConfig(lr=1.0, warmup_steps=0, max_steps=10, min_lr_ratio=1.0)

    def one_step(micro_batches):
        m = copy.deepcopy(model)
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1.0)
        result = train_step(m, micro_batches, LanguageModelObjective(), opt, make_scheduler(opt, stage), accelerator,
                            0.0, params)
        return result, [p.detach().clone() for p in params]

    big, after_big = one_step([collate_fn(examples)])
    small, after_small = one_step([collate_fn([e]) for e in examples])
    assert big.count == small.count
    assert big.loss == pytest.approx(small.loss, rel=1e-5)
    for a, b in zip(after_big, after_small):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    # Averaging each micro-batch's own mean (the common bug) moves the weights elsewhere:
    # the comparison above can fail.
    naive = copy.deepcopy(model)
    for e in examples:
        batch = collate_fn([e])
        (loss_sum(naive(batch), batch.labels) / batch.num_loss_tokens() / len(examples)).backward()
    naive_after = [p.detach() - p.grad for p in naive.parameters() if p.requires_grad]
    assert max((a - b).abs().max().item() for a, b in zip(after_big, naive_after)) > 1e-4


def _losses(run: Path, stage: str) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if r["stage"] == stage]


def test_resume_reproduces_losses(shapes, tmp_path):
    over = ["stages.finetune.max_steps=6", "stages.finetune.batch_size=4", "train.log_every=1",
            "train.save_every=2", "stages.finetune.warmup_steps=2"]
    cfg = small_cfg(shapes, *over)
    full, cut = tmp_path / "full", tmp_path / "cut"
    llava_main(cfg, full, stages=["finetune"], evaluate=False, fresh=True)
    # Interrupted after step 3 (last checkpoint at step 2), then resumed.
    partial = llava_main(cfg, cut, stages=["finetune"], evaluate=False, stop_after=3, fresh=True)
    assert partial["stages"]["finetune"]["steps"] == 3
    assert not (cut / "model").exists()
    llava_main(cfg, cut, stages=["finetune"], evaluate=False, fresh=True)
    expected, got = _losses(full, "finetune"), _losses(cut, "finetune")
    assert [s for s, _ in got] == [1, 2, 3, 4, 5, 6]  # step 3 of the first try was dropped
    for (s1, l1), (s2, l2) in zip(expected, got):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-6), (s1, l1, l2)
    # Different data order gives different losses: the comparison above can fail.
    other = small_cfg(shapes, *over, "train.seed=1")
    llava_main(other, tmp_path / "other", stages=["finetune"], evaluate=False, fresh=True)
    assert _losses(tmp_path / "other", "finetune")[3][1] != pytest.approx(expected[3][1], abs=1e-6)


def test_metrics_and_run_dir(shapes, tmp_path):
    cfg = small_cfg(shapes, "stages.pretrain.max_steps=2", "stages.finetune.max_steps=2",
                    "stages.pretrain.batch_size=4", "stages.finetune.batch_size=4", "train.log_every=1")
    summary = llava_main(cfg, tmp_path, evaluate=True)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("pretrain", 1), ("pretrain", 2), ("finetune", 1), ("finetune", 2)]
    for r in rows:
        assert {"step", "loss", "lr", "tokens_per_s"} <= set(r) and r["tokens_per_s"] > 0
    for p in ["config.yaml", "eval.json", "model/mmtune_config.json", "pretrain/model/mmtune_config.json"]:
        assert (tmp_path / p).exists(), p
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert {"accuracy", "blank_media_accuracy", "by_type", "chance"} <= set(ev)
    assert summary["stages"]["finetune"]["padding_efficiency"] == 1.0  # packed: one row, no padding
    # Trainable-parameter accounting per stage: pretrain trains the projector only.
    pre = {r["part"]: r for r in summary["stages"]["pretrain"]["parameters"]}
    fin = {r["part"]: r for r in summary["stages"]["finetune"]["parameters"]}
    assert pre["projector.image"]["trainable"] == pre["projector.image"]["params"] > 0
    assert pre["llm"]["trainable"] == 0 and pre["encoder.image"]["trainable"] == 0
    assert fin["llm"]["trainable"] == fin["llm"]["params"] > 0 and fin["encoder.image"]["trainable"] == 0


def test_batch_plan_is_a_function_of_step():
    plan = BatchPlan(n=10, batch_size=3, seed=0)
    first = [plan.indices(k) for k in range(6)]
    assert first == [BatchPlan(10, 3, 0).indices(k) for k in range(6)]
    assert sorted(sum(first[:3], [])) == sorted(set(sum(first[:3], [])))  # no repeats within an epoch
    assert first[:3] != first[3:6]  # a new permutation every epoch
    ranks = [BatchPlan(10, 2, 0, rank=r, world=2).indices(0) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])
    with pytest.raises(ValueError, match="fewer than one batch"):
        BatchPlan(n=2, batch_size=3, seed=0)


def test_warmup_then_cosine_to_min_ratio():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make_scheduler(opt, StageConfig(lr=1.0, warmup_steps=4, max_steps=20, min_lr_ratio=0.1))
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.02)


def test_final_weights_written_once_and_a_rerun_does_nothing(shapes, tmp_path, capsys):
    """The last step gets no checkpoint and the last stage no stage model: the run's model/ is
    the only copy of the final weights, and its presence marks the run finished."""
    cfg = small_cfg(shapes, "stages.pretrain.max_steps=2", "stages.finetune.max_steps=3", "train.save_every=1",
                    "stages.pretrain.batch_size=4", "stages.finetune.batch_size=4", "train.log_every=1")
    llava_main(cfg, tmp_path, evaluate=False)
    assert sorted(p.name for p in (tmp_path / "finetune").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert sorted(p.name for p in (tmp_path / "pretrain").iterdir()) == ["checkpoint-1", "model"]
    assert (tmp_path / "model" / "mmtune_config.json").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # published: no temporary folder left
    metrics = (tmp_path / "metrics.jsonl").read_text()
    stamp = (tmp_path / "model" / "projectors.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    summary = llava_main(cfg, tmp_path, evaluate=False)  # finished: nothing to train, nothing rewritten
    out = capsys.readouterr().out
    assert "[pretrain] finished earlier" in out and "[finetune] finished earlier" in out
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
    assert (tmp_path / "model" / "projectors.safetensors").stat().st_mtime_ns == stamp
    assert summary["stages"]["finetune"]["steps"] == 3  # the earlier run's figures, kept
    # A stage killed after its last step but before its model was published resumes from its
    # newest checkpoint and trains only the steps after it.
    shutil.rmtree(tmp_path / "model")
    summary = llava_main(cfg, tmp_path, evaluate=False)
    assert summary["stages"]["finetune"]["resumed_from"] == 2 and (tmp_path / "model").is_dir()


def test_rerun_rules_changed_settings_no_resume_and_skipped_stages(shapes, tmp_path):
    """A finished stage with other settings is an error that touches nothing; --no-resume
    trains a stage again and retires what it led to; a stage trained after a rerun skipped the
    one before it draws the random numbers (LoRA init, dropout) of the uninterrupted run."""
    from mmtune.train.finish import StageChangedError

    over = ["stages.pretrain.max_steps=2", "stages.finetune.max_steps=3", "train.save_every=1",
            "stages.pretrain.batch_size=4", "stages.finetune.batch_size=4", "train.log_every=1",
            "model.llm.lora.r=4", "model.llm.lora.dropout=0.3"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    llava_main(small_cfg(shapes, *over), whole, evaluate=False)
    llava_main(small_cfg(shapes, *over), parts, stages=["pretrain"], evaluate=False)
    assert (parts / "pretrain" / "model").is_dir() and not (parts / "model").exists()
    llava_main(small_cfg(shapes, *over), parts, evaluate=False)  # skips pretrain, trains finetune
    assert _losses(parts, "finetune") == _losses(whole, "finetune")

    config = (whole / "config.yaml").read_text()
    with pytest.raises(StageChangedError, match="stage 'pretrain'.*--no-resume"):
        llava_main(small_cfg(shapes, *over, "stages.pretrain.lr=5e-4"), whole, evaluate=False)
    assert (whole / "config.yaml").read_text() == config  # nothing was touched

    stamp = (whole / "pretrain" / "model" / "projectors.safetensors").stat().st_mtime_ns
    llava_main(small_cfg(shapes, *over, "stages.finetune.lr=5e-4"), whole, stages=["finetune"], resume=False,
               evaluate=False)  # finetune again, from the same pretrain model
    assert (whole / "pretrain" / "model" / "projectors.safetensors").stat().st_mtime_ns == stamp
    assert (whole / "model").is_dir() and _losses(whole, "finetune") != _losses(parts, "finetune")
    llava_main(small_cfg(shapes, *over), whole, stages=["pretrain"], resume=False, evaluate=False)
    assert not (whole / "model").exists()  # built on the pretrain model it replaced: retired
    assert sorted(p.name for p in (whole / "pretrain").iterdir()) == ["checkpoint-1", "model"]
