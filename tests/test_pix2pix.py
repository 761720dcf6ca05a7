"""InstructPix2Pix wiring on seconds-long models: parts, objective, data, runs, CLI, pipeline."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image

from mmtune.cli import main as cli
from mmtune.config import ConfigError
from mmtune.data.formats.records import RecordError
from mmtune.synth.edits import generate
from mmtune.diffusion.components import EditComponents, build_components, count_parameters, load_pipeline
from mmtune.recipes.instruct_pix2pix import load_edit_config
from mmtune.diffusion.data import read_triplets
from mmtune.diffusion.evaluate import score_edit
from mmtune.diffusion.objective import conditioning_dropout
from mmtune.recipes.instruct_pix2pix import main as pix2pix

# The tiny config shrunk further: 16 px, two UNet levels, a handful of steps.
SMALL = ["model.unet.sample_size=16", "model.unet.block_out_channels=[8,16]",
         "model.unet.down_block_types=[DownBlock2D,CrossAttnDownBlock2D]",
         "model.unet.up_block_types=[CrossAttnUpBlock2D,UpBlock2D]", "edit.resolution=16",
         "stages.train.batch_size=4", "max_steps=3", "train.log_every=1", "stages.train.warmup_steps=0",
         "eval.num_inference_steps=2", "eval.batch_size=8", "eval.grid_rows=2"]


@pytest.fixture(scope="module")
def edits(tmp_path_factory):
    out = tmp_path_factory.mktemp("edits")
    generate(out, n_train=24, n_test=6, seed=1, image_size=32)
    return out


def test_metric_scores_truth_one_and_input_zero(edits):
    triplets, _ = read_triplets(edits / "test.jsonl")
    assert {t.meta["edit"] for t in read_triplets(edits / "train.jsonl")[0]} == {"recolour", "remove"}
    assert all(score_edit(t.edited(), t)["success"] for t in triplets)
    assert not any(score_edit(t.original(), t)["success"] for t in triplets)
    assert all(score_edit(t.edited(), t)["background_error"] == 0 for t in triplets)


def test_conditioning_dropout_rates():
    torch.manual_seed(0)
    text, image = conditioning_dropout(200_000, 0.05, "cpu")
    shares = {"text only": (text & ~image), "image only": (image & ~text), "both": (text & image)}
    for name, mask in shares.items():
        assert abs(mask.float().mean().item() - 0.05) < 0.003, name


def _tiny_sd_folder(path):
    """A text-to-image 'Stable Diffusion' folder: 4-channel latents, UNet with 4 inputs."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    cfg = load_edit_config("tiny", SMALL)
    parts = build_components(cfg.model)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4, sample_size=16)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, cross_attention_dim=32, **cfg.model.unet)
    for name, module in {"vae": vae, "unet": unet, "text_encoder": parts.text_encoder,
                         "tokenizer": parts.tokenizer, "scheduler": DDPMScheduler()}.items():
        module.save_pretrained(path / name)
    return unet


def test_init_from_text_to_image_zero_fills_new_channels(tmp_path):
    torch.manual_seed(0)
    t2i = _tiny_sd_folder(tmp_path)
    cfg = load_edit_config("tiny", [*SMALL, f"model.pretrained={tmp_path}"])
    parts = build_components(cfg.model)
    conv = parts.unet.conv_in
    assert conv.in_channels == 8 and parts.unet.config.in_channels == 8
    assert torch.equal(conv.weight[:, :4], t2i.conv_in.weight) and not conv.weight[:, 4:].any()
    # At step 0 the edit model is the text-to-image model: the input image has no effect.
    z, text = torch.randn(2, 4, 16, 16), torch.randn(2, 8, 32)
    with torch.no_grad():
        want = t2i(z, 10, encoder_hidden_states=text).sample
        got = parts.unet(torch.cat([z, torch.randn_like(z)], 1), 10, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, want)
    assert not any(p.requires_grad for p in parts.text_encoder.parameters())


def test_bad_inputs_name_file_and_line(tmp_path, edits):
    bad = tmp_path / "bad.jsonl"
    good = (edits / "train.jsonl").read_text().splitlines()[0].replace("images/", f"{edits}/images/")
    bad.write_text(good + "\n{not json\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:2"):
        read_triplets(bad)
    assert len(read_triplets(bad, skip_bad=True)[0]) == 1
    bad.write_text(json.dumps({"original_image": "x.png", "edit_prompt": "make it red", "edited_image": "y.png",
                               "caption": "?"}) + "\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:1: unknown field\(s\) \['caption'\]"):
        read_triplets(bad)
    (tmp_path / "x.png").write_bytes(b"not a png")
    bad.write_text(json.dumps({"original_image": "x.png", "edit_prompt": "p", "edited_image": "y.png"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: image .*x\.png cannot be decoded"):
        read_triplets(bad)[0][0].original()
    with pytest.raises(ConfigError, match=r"tiny\.yaml: train: unknown key\(s\) 'lrr'"):
        load_edit_config("tiny", ["train.lrr=1"])


def test_hf_datasets_folder_matches_jsonl(tmp_path, edits):
    import datasets

    jsonl, _ = read_triplets(edits / "test.jsonl")
    rows = {"original_image": [str(edits / f"images/{t.id}_in.png") for t in jsonl],
            "edit_prompt": [t.prompt for t in jsonl],
            "edited_image": [str(edits / f"images/{t.id}_out.png") for t in jsonl]}
    features = datasets.Features({"original_image": datasets.Image(), "edit_prompt": datasets.Value("string"),
                                  "edited_image": datasets.Image()})
    ds = datasets.Dataset.from_dict(rows, features=features)
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "parquet" / "train-00000-of-00001.parquet"))
    for folder in ("saved", "parquet"):
        got, _ = read_triplets(tmp_path / folder)
        assert [t.prompt for t in got] == [t.prompt for t in jsonl]
        assert np.array_equal(np.asarray(got[2].edited()), np.asarray(jsonl[2].edited()))


def test_run_resume_pipeline_and_cli(tmp_path, edits):
    run = tmp_path / "run"
    cfg = load_edit_config("tiny", [*SMALL, f"data_dir={edits}", "edit.ema_decay=0.9",
                                    "train.save_every=2"])
    partial = pix2pix(cfg, run, stop_after=2)
    assert partial["steps"] == 2 and not (run / "model").exists()
    summary = pix2pix(cfg, run, evaluate=False)  # resumes at step 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and summary["ema"]
    assert (run / "train" / "checkpoint-2" / "hooks.safetensors").exists() and (run / "config.yaml").exists()
    assert not (run / "train" / "checkpoint-3").exists()  # the last step's record is the pipeline itself

    # The run is a plain diffusers pipeline with separate text and image guidance.
    pipe = load_pipeline(run / "model")
    image = Image.open(edits / "images" / "test_00000_in.png").resize((16, 16))
    out = pipe("make the circle blue", image=image, num_inference_steps=2, guidance_scale=3.0,
               image_guidance_scale=1.5, generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == (16, 16)

    cli(["edit", str(run), "--image", str(edits / "images" / "test_00001_in.png"),
         "--instruction", "remove the square", "--out", str(tmp_path / "out.png"), "--steps", "2"])
    assert Image.open(tmp_path / "out.png").size == (16, 16)
    cli(["eval", str(run)])
    result = json.loads((run / "eval.json").read_text())
    assert result["n"] == 6 and result["trained"]["n_scored"] == 6
    assert 0 <= result["edit_success"] <= 1 and 0 <= result["untrained_edit_success"] <= 1
    assert Image.open(run / "eval_grid.png").size == (96 * 4, 96 * 2)


def test_cli_train_and_synth(tmp_path):
    data = tmp_path / "data"
    cli(["data", "synth", "edits", "--out", str(data), "--n-train", "8", "--n-test", "2"])
    cli(["train", "instruct_pix2pix", "--config", "tiny", "--output-dir", str(tmp_path / "run"),
         "--data", str(data), *SMALL, "max_steps=1", "eval.limit=1"])
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["n"] == 1


def test_sd15_config_counts_match_stable_diffusion():
    counts = count_parameters(load_edit_config("instruct-pix2pix-sd15").model)
    # SD 1.5: UNet 859,520,964 with 4 inputs, + 4 x 320 x 3 x 3 for the 4 image channels;
    # its VAE and CLIP ViT-L/14 text tower.
    assert counts["unet"] == 859_520_964 + 4 * 320 * 9
    assert counts["vae"] == 83_653_863
    assert counts["text_encoder"] == 123_060_480


def test_zoo_lists_editing_presets(capsys):
    cli(["zoo", "--json"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["instruct-pix2pix-sd15"]["unet"] > 8e8
    assert 5e5 < rows["tiny-instruct-pix2pix"]["total"] < 2e6


def test_components_are_stock_diffusers(tmp_path):
    parts = build_components(load_edit_config("tiny", SMALL).model)
    assert isinstance(parts, EditComponents)
    assert parts.unet.config.in_channels == 6 and parts.unet.config.out_channels == 3


def _launch(run, edits, engine: str, *over: str) -> None:
    import os
    import subprocess
    import sys

    from mmtune.recipes.launch import path as launch_config

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_config(engine)),
           "--num_processes", "2", "--main_process_port", str(free_port()), "--mixed_precision", "no",
           "-m", "mmtune.cli", "train", "instruct_pix2pix", "--config", "tiny", "--output-dir", str(run),
           "--data", str(edits), *SMALL, "eval.limit=2", "train.threads=1", *over]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


def _losses(run) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # three 2-process launches, each importing torch + diffusers: ~1.5-2 min
def test_two_processes_ddp_and_fsdp_agree_and_fsdp_resumes(tmp_path, edits):
    """The recipe under `accelerate launch` with 2 processes (gloo on CPU): DDP, and FSDP with
    the UNet sharded block by block by mmtune's engine. Each process draws its own noise, so the
    reference for FSDP is DDP on the same processes (not 1 process): same losses, same EMA
    weights. FSDP resumes from its sharded checkpoint (EMA included) with the same losses."""
    from safetensors.torch import load_file

    over = ["max_steps=4", "train.save_every=2", "edit.ema_decay=0.9"]
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    _launch(ddp, edits, "ddp", *over)
    _launch(fsdp, edits, "fsdp", *over)
    assert [json.loads(x)["step"] for x in (ddp / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    shards = json.loads((fsdp / "train_summary.json").read_text())["fsdp"]
    assert shards["dtensor"] and shards["local_numel"] < 0.6 * shards["numel"], shards  # half each
    assert "fsdp" not in json.loads((ddp / "train_summary.json").read_text())
    assert _losses(fsdp) == pytest.approx(_losses(ddp), abs=1e-5)
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(ddp / "model" / weights), load_file(fsdp / "model" / weights)  # the EMA weights
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    # Conv biases right before a GroupNorm have a gradient of zero up to rounding; Adam scales
    # that rounding (which the reduction order changes) to lr-sized steps. Measured: mean 1.4e-7,
    # 0.25% of elements (all such biases) above 1e-5.
    assert diff.mean() < 1e-6 and (diff > 1e-5).float().mean() < 0.01, (diff.mean(), diff.max())
    assert (fsdp / "train" / "checkpoint-2" / "sharded" / ".metadata").exists()
    assert (fsdp / "train" / "checkpoint-2" / "hooks.safetensors").exists()  # EMA gathered whole
    first = _losses(fsdp)
    shutil.rmtree(fsdp / "model")
    _launch(fsdp, edits, "fsdp", *over)  # resumes at step 2
    assert json.loads((fsdp / "train_summary.json").read_text())["resumed_from"] == 2
    assert _losses(fsdp) == pytest.approx(first, abs=1e-6)
    c = load_file(fsdp / "model" / weights)
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert (fsdp / "eval.json").exists()
