"""Speed switches keep the arithmetic: varlen attention, head only at labels, feature cache, FLOPs."""
from __future__ import annotations

import json

import pytest
import torch

from mmtune.attention import set_attention
from mmtune.config import TrainConfig
from mmtune.data.collate import collate, pack
from mmtune.synth.text import generate as generate_text
from mmtune.model import MultimodalLM
from mmtune.recipes.common import load_recipe_config, training_data
from mmtune.train.run import seed_everything
from mmtune.train.flops import FlopCounter, MFUMeter, device_peak
from mmtune.train.head import head_loss_sum
from mmtune.train.loop import loss_sum
from mmtune.train.speed import attention_for, configure

from test_packing import TINY_LM


def _text_examples(tmp_path, n=8):
    generate_text(tmp_path, n_train=n, n_test=2, seed=4)
    cfg = load_recipe_config("sft", "tiny", [f"data_dir={tmp_path}", *TINY_LM])
    seed_everything(0)
    model = MultimodalLM.build(cfg.model)
    dataset, _, _ = training_data(model, cfg, tmp_path / "train.jsonl", None)
    return model, [dataset[i] for i in range(n)]


def _loss_and_grads(model, batch, head: bool):
    model.zero_grad()
    loss = head_loss_sum(model, batch) if head else loss_sum(model(batch), batch.labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_varlen_one_row_and_head_at_labels_match_padded(tmp_path):
    """One packed row (no padding), per-example causal SDPA and the head at labels only give
    the padded batch's loss and gradients."""
    model, examples = _text_examples(tmp_path)
    pad = model.tokenizer.pad_token_id
    padded, packed = collate(examples, pad), pack(examples, pad)
    assert packed.input_ids.shape[0] == 1 and int(packed.attention_mask.sum()) == packed.input_ids.numel()
    set_attention(model.llm, "sdpa")
    ref, ref_grads = _loss_and_grads(model, padded, head=False)
    set_attention(model.llm, "varlen")
    got, grads = _loss_and_grads(model, packed, head=True)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert ref_grads.keys() == grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    # Generation (no segments) falls back to SDPA with its mask: same logits as plain SDPA.
    with torch.no_grad():
        varlen_logits = model(padded)
        set_attention(model.llm, "sdpa")
        torch.testing.assert_close(varlen_logits, model(padded))


def test_attention_choice():
    cpu = torch.device("cpu")
    assert attention_for(TrainConfig(packing=True), cpu) == "varlen"
    assert attention_for(TrainConfig(packing=False), cpu) == "sdpa"
    assert attention_for(TrainConfig(attention="eager"), cpu) == "eager"
    with pytest.raises(ValueError, match="train.attention"):
        attention_for(TrainConfig(attention="fast"), cpu)


def test_feature_cache_encodes_each_medium_once(tiny_model):
    model = tiny_model()
    configure(model, TrainConfig(feature_cache=True), torch.device("cpu"))
    images = torch.randn(3, 3, 32, 32)
    calls = []
    model.encoders["image"].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    first = model.encode_media("image", images)
    again = model.encode_media("image", torch.cat([images[1:], images[:1], images[:1]]))
    assert calls == [3]  # the second call was all hits (and a duplicate in a batch encodes once)
    torch.testing.assert_close(again[:2], first[1:])
    cache = model.feature_caches["image"]
    assert (cache.hits, cache.misses) == (4, 3)
    with torch.no_grad():  # new encoder weights: the cache must not answer with old features
        next(model.encoders["image"].parameters()).add_(1.0)
    model.encode_media("image", images)
    assert calls == [3, 3]
    model.encoders["image"].requires_grad_(True)  # a trainable encoder never reads the cache
    model.encode_media("image", images)
    assert calls == [3, 3, 3]
    # Sharded encoder weights (FSDP, ZeRO-3): the forward is a collective every process runs.
    configure(model, TrainConfig(feature_cache=True), torch.device("cpu"), sharded_weights=True)
    assert model.feature_caches == {}


def test_flop_count_follows_what_trains(tiny_model):
    model = tiny_model()
    llm = model.llm
    n_body = sum(p.numel() for p in llm.parameters()) - llm.get_input_embeddings().weight.numel() \
        - llm.get_output_embeddings().weight.numel()
    model.requires_grad_(False)
    model.projectors.requires_grad_(True)  # LLaVA pretrain: only the projector trains
    counter = FlopCounter(model)
    assert counter.per_token == 4 * n_body  # frozen LLM, gradients pass through to the projector
    enc_params = sum(p.numel() for p in model.encoders["image"].parameters())
    assert counter.encoder_per_medium["image"] == 2 * enc_params * model.encoders["image"].num_tokens()
    model.llm.requires_grad_(True)
    assert FlopCounter(model).per_token == 6 * n_body


def test_device_peak_measured_once_and_mfu(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    peak = device_peak(torch.device("cpu"), "no")
    saved = json.loads((tmp_path / "mmtune" / "peak_flops.json").read_text())
    assert list(saved.values()) == [peak] and peak > 1e8
    assert device_peak(torch.device("cpu"), "no") == peak  # read back, not measured again
    model = tiny_model()
    model.requires_grad_(True)
    meter = MFUMeter(model, "no", torch.device("cpu"))
    ids = torch.full((2, 20), 5)
    labels = ids.clone()
    labels[:, :10] = -100
    from mmtune.batch import Batch
    meter.add([Batch(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)])
    assert 0 < meter.take()["mfu"] and meter.summary()["model_flops"] > 0


def test_feature_cache_keeps_decoded_media_by_file_identity(tmp_path, tiny_model):
    """A frozen encoder's media are decoded once per unchanged file (the decode can cost more
    than a small encoder); a changed file is decoded again, non-tensor media pass through, and
    nothing is kept past the memory budget."""
    from mmtune.feature_cache import FeatureCache

    clip = tmp_path / "clip.bin"
    clip.write_bytes(b"x" * 10)
    decodes = []

    def decode(path: str, where: str) -> torch.Tensor:
        decodes.append(path)
        return torch.full((4, 2), float(len(open(path, "rb").read())))

    load = FeatureCache().loader(decode)
    a = load(str(clip), "d:1")
    b = load(str(clip), "d:2")
    assert len(decodes) == 1 and torch.equal(a, b) and a is not b  # a copy: transforms cannot alter it
    b.add_(1)
    assert torch.equal(load(str(clip), "d:3"), a)
    clip.write_bytes(b"y" * 12)  # new content, new size: decoded again
    assert load(str(clip), "d:4")[0, 0].item() == 12 and len(decodes) == 2
    small = FeatureCache(max_bytes=16).loader(decode)  # a [4, 2] float tensor is 32 bytes
    small(str(clip), "d:5"), small(str(clip), "d:6")
    assert len(decodes) == 4
    # Through the model: only a frozen encoder's media go through its cache.
    model = tiny_model()
    configure(model, TrainConfig(feature_cache=True), torch.device("cpu"))
    model.encoders["image"].load = decode
    model.requires_grad_(False)
    spec = model.media_specs()["image"]
    spec.load(str(clip), "d:7"), spec.load(str(clip), "d:8")
    assert len(decodes) == 5 and model.feature_caches["image"].decode_hits == 1
    model.encoders["image"].requires_grad_(True)
    spec = model.media_specs()["image"]
    spec.load(str(clip), "d:9")
    assert len(decodes) == 6
