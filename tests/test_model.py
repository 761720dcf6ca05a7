"""MultimodalLM: placeholder checks, forward, save/load round trips, local checkpoints,
generation and the parameters each training stage trains."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from mmtune.config import ModelConfig, from_dict
from mmtune.data.collate import Example, collate
from mmtune.data.text.tokenizer import build_word_tokenizer, synthetic_words
from mmtune.batch import IGNORE, Batch
from mmtune.model import MultimodalLM, PlaceholderMismatchError
from mmtune.train.params import parameter_rows, set_trainable

from conftest import tiny_clip_arch, tiny_llm_arch, tiny_model_dict, tiny_siglip_arch

BOS, EOS = 2, 3


def image_pixels(model: MultimodalLM, n: int, seed: int = 0) -> torch.Tensor:
    size = model.encoders["image"].spec.size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def text_ids(model: MultimodalLM, words: str) -> list[int]:
    return model.tokenizer(words, add_special_tokens=False)["input_ids"]


def make_batch(model: MultimodalLM, rows: list[tuple[list[int], int]], seed: int = 0,
               ids: list[str] | None = None, left_pad: bool = False) -> Batch:
    """rows: (token ids with one placeholder id per image, number of images). Each placeholder
    is expanded to tokens_per_medium ids, as the collator does."""
    k = model.tokens_per_medium("image")
    ph = model.placeholder_ids["image"]
    examples, n_before = [], 0
    for i, (toks, n_images) in enumerate(rows):
        expanded = [t for tok in toks for t in ([tok] * k if tok == ph else [tok])]
        media = {"image": image_pixels(model, n_images, seed + n_before)} if n_images else {}
        n_before += n_images
        examples.append(Example(ids[i] if ids else f"rec{i}", expanded, list(expanded), media))
    batch = collate(examples, model.tokenizer.pad_token_id, left_pad=left_pad)
    if "image" in batch.media:  # collate stacks per example; re-draw so each image differs
        batch.media["image"] = image_pixels(model, batch.media["image"].shape[0], seed)
    return batch


def one_image_prompt(model: MultimodalLM, before: str = "USER :", after: str = "what shape ? ASSISTANT :"):
    return [BOS, *text_ids(model, before), model.placeholder_ids["image"], *text_ids(model, after)]


def forbid_running(model: MultimodalLM):
    """Hooks that fail the test if the encoder, projector or LLM run."""

    def boom(module, args, kwargs=None):
        raise AssertionError(f"{type(module).__name__} ran: no PlaceholderMismatchError stopped "
                             "this batch before the model did any work")

    handles = [m.register_forward_pre_hook(boom) for m in
               (*model.encoders.values(), *model.projectors.values(), model.llm,
                model.llm.get_input_embeddings())]
    return handles


# ========================================================================= placeholders
def test_placeholder_mismatch_raises_before_any_work(tiny_model):
    model = tiny_model()
    k = model.tokens_per_medium("image")
    assert k == 16  # 32 px / 8 px patches, CLS dropped
    good = make_batch(model, [(one_image_prompt(model), 1)], ids=["shapes-000042"])
    bad_ids = good.input_ids.clone()
    first_slot = int((bad_ids[0] == model.placeholder_ids["image"]).nonzero()[0])
    bad_ids[0, first_slot] = text_ids(model, "red")[0]  # one slot fewer: 15 instead of 16
    bad = Batch(input_ids=bad_ids, attention_mask=good.attention_mask, labels=good.labels,
                media=good.media, media_per_row=good.media_per_row, ids=good.ids)

    handles = forbid_running(model)
    try:
        with pytest.raises(PlaceholderMismatchError) as err:
            model(bad)
        with pytest.raises(PlaceholderMismatchError):
            model.generate(bad, max_new_tokens=2)
    finally:
        for h in handles:
            h.remove()
    msg = str(err.value)
    assert "shapes-000042" in msg
    assert str(k - 1) in msg and str(k) in msg
    assert f"{k - 1} <image> placeholder tokens" in msg and f"= {k} feature vectors" in msg
    assert isinstance(err.value, ValueError)
    model(good)  # the well-formed batch runs


def test_placeholder_mismatch_names_the_right_row(tiny_model):
    model = tiny_model()
    k = model.tokens_per_medium("image")
    batch = make_batch(model, [(one_image_prompt(model), 1), (one_image_prompt(model), 1)],
                       ids=["ok-row", "bad-row"])
    batch.media_per_row["image"] = [1, 2]  # row 1 claims two images, has slots for one
    batch.media["image"] = image_pixels(model, 3)
    handles = forbid_running(model)
    try:
        with pytest.raises(PlaceholderMismatchError, match="bad-row") as err:
            model(batch)
    finally:
        for h in handles:
            h.remove()
    assert "ok-row" not in str(err.value)
    assert f"{k} <image> placeholder tokens" in str(err.value) and f"{2 * k} feature vectors" in str(err.value)


def test_placeholders_without_images_and_images_without_placeholders(tiny_model):
    model = tiny_model()
    k = model.tokens_per_medium("image")
    # Slots, but no image anywhere in the batch (no media, no media_per_row).
    with_slots = make_batch(model, [(one_image_prompt(model), 1)], ids=["no-image"])
    no_media = Batch(input_ids=with_slots.input_ids, attention_mask=with_slots.attention_mask,
                     labels=with_slots.labels, ids=["no-image"])
    with pytest.raises(PlaceholderMismatchError, match=rf"no-image: {k} <image>.* 0 image"):
        model(no_media)
    # An image, but the text has no slot for it.
    text = make_batch(model, [([BOS, *text_ids(model, "USER : hello")], 0)], ids=["no-slot"])
    text.media = {"image": image_pixels(model, 1)}
    text.media_per_row = {"image": [1]}
    with pytest.raises(PlaceholderMismatchError, match=rf"no-slot: 0 <image>.* = {k} feature"):
        model(text)


@pytest.mark.parametrize("n_media", [2, 0])
def test_media_tensor_disagreeing_with_media_per_row_raises(tiny_model, n_media):
    """Slots agree with media_per_row ([1]), but the batch carries 2 (or 0) images: the features
    cannot fill the slots one to one, so this must fail before the encoder runs, not silently
    drop an image (2) or fail deep in masked_scatter (0)."""
    model = tiny_model()
    batch = make_batch(model, [(one_image_prompt(model), 1)], ids=["count-off"])
    batch.media["image"] = image_pixels(model, n_media)
    handles = forbid_running(model)
    try:
        with pytest.raises(PlaceholderMismatchError, match="count-off"):
            model(batch)
    finally:
        for h in handles:
            h.remove()


def test_media_per_row_shorter_than_batch_raises(tiny_model):
    """media_per_row covering only row 0 of 2 must not leave row 1's slots unchecked: here row 1
    has K slots and the batch one image (row 0's), so row 1 has no features to fill them."""
    model = tiny_model()
    batch = make_batch(model, [(one_image_prompt(model), 1), (one_image_prompt(model), 1)],
                       ids=["r0", "r1"])
    batch.media_per_row["image"] = [1]
    batch.media["image"] = batch.media["image"][:1]
    handles = forbid_running(model)
    try:
        with pytest.raises(PlaceholderMismatchError):
            model(batch)
    finally:
        for h in handles:
            h.remove()


# ========================================================================= forward
def test_forward_shapes_and_image_features_reach_the_llm(tiny_model):
    model = tiny_model()
    vocab = model.llm.config.vocab_size
    assert vocab == len(model.tokenizer)
    prompt = one_image_prompt(model)
    batch = make_batch(model, [(prompt, 1), ([BOS, *text_ids(model, "USER : no image here")], 0)])
    with torch.no_grad():
        logits = model(batch)
    B, T = batch.input_ids.shape
    assert logits.shape == (B, T, vocab)
    assert torch.isfinite(logits).all()

    slots = (batch.input_ids[0] == model.placeholder_ids["image"]).nonzero().flatten()
    first, last = int(slots[0]), int(slots[-1])
    other = batch.media["image"].clone()
    other[0] = -other[0]
    changed = dataclasses.replace(batch, media={"image": other})
    with torch.no_grad():
        logits2 = model(changed)
    n_text = int(batch.attention_mask[0].sum())
    # Positions before the image cannot see it (causal): unchanged.
    torch.testing.assert_close(logits2[0, :first], logits[0, :first], rtol=0, atol=1e-6)
    # Text after the image sees it: changed at every position.
    after = (logits2[0, last + 1:n_text] - logits[0, last + 1:n_text]).abs().amax(dim=-1)
    assert (after > 1e-4).all(), after
    # The other row has no image: untouched.
    torch.testing.assert_close(logits2[1], logits[1], rtol=0, atol=1e-6)


def test_embed_places_each_images_features_in_its_own_slots(tiny_model):
    """Two rows, three images (two in row 0): slot j of image i holds projector(encoder(i))[j]."""
    model = tiny_model()
    ph = model.placeholder_ids["image"]
    row0 = [BOS, *text_ids(model, "USER :"), ph, *text_ids(model, "and"), ph, *text_ids(model, "?")]
    row1 = [BOS, ph, *text_ids(model, "what shape ?")]
    batch = make_batch(model, [(row0, 2), (row1, 1)])
    with torch.no_grad():
        embeds = model.embed(batch)
        feats = model.projectors["image"](model.encoders["image"](batch.media["image"]))
        tok = model.llm.get_input_embeddings()(batch.input_ids.masked_fill(batch.input_ids == ph, 0))
    k = model.tokens_per_medium("image")
    slots0 = (batch.input_ids[0] == ph).nonzero().flatten()
    slots1 = (batch.input_ids[1] == ph).nonzero().flatten()
    assert len(slots0) == 2 * k and len(slots1) == k
    torch.testing.assert_close(embeds[0, slots0], feats[:2].reshape(2 * k, -1))
    torch.testing.assert_close(embeds[1, slots1], feats[2])
    text = batch.input_ids != ph
    torch.testing.assert_close(embeds[text], tok[text])


def test_frozen_encoder_gets_no_grad_but_projector_does(tiny_model):
    model = tiny_model().train()
    batch = make_batch(model, [(one_image_prompt(model), 1)])
    logits = model(batch)
    logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is None for p in model.encoders.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projectors.parameters())


# ========================================================================= save / load
VARIANTS = {
    "hf_clip": {},
    "hf_siglip": {"encoders": {"image": {"type": "hf_siglip", "drop_cls": False,
                                         "arch": tiny_siglip_arch()}}},
    "open_clip": {"encoders": {"image": {"type": "open_clip", "drop_cls": True,
                                         "arch": {"model_name": "mmtune-tiny-ViT"}}}},
    "lora": {"llm": {"lora": {"r": 4}}},
}


def _build_variant(name: str):
    updates = VARIANTS[name]
    cfg_dict = tiny_model_dict(**updates)
    if name in ("hf_siglip", "open_clip"):  # replace, not merge, the encoder block
        cfg_dict["encoders"] = updates["encoders"]
    torch.manual_seed(0)
    model = MultimodalLM.build(from_dict(ModelConfig, cfg_dict))
    base_llm_state = {k: v.clone() for k, v in model.llm.state_dict().items()}
    if name == "lora":
        set_trainable(model, ["projector", "llm"])
        assert hasattr(model.llm, "peft_config")
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for n, p in model.llm.named_parameters():
                if "lora_" in n:  # lora_B starts at zero: make the adapter do something
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval(), base_llm_state


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each variant built, run and saved once (module scope keeps the file fast)."""
    out = {}
    for name in VARIANTS:
        model, base = _build_variant(name)
        batch = make_batch(model, [(one_image_prompt(model), 1),
                                   ([BOS, *text_ids(model, "USER : two")], 0)], seed=3)
        with torch.no_grad():
            logits = model(batch)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        out[name] = {"model": model, "base": base, "batch": batch, "logits": logits, "path": path}
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_round_trip_identical_logits(saved, name):
    s = saved[name]
    loaded = MultimodalLM.from_pretrained(s["path"]).eval()
    assert loaded.tokens_per_medium("image") == s["model"].tokens_per_medium("image")
    assert loaded.placeholder_ids == s["model"].placeholder_ids
    assert loaded.tokenizer.get_vocab() == s["model"].tokenizer.get_vocab()
    assert loaded.encoders["image"].spec == s["model"].encoders["image"].spec
    with torch.no_grad():
        logits = loaded(s["batch"])
    torch.testing.assert_close(logits, s["logits"], rtol=0, atol=1e-6)
    # and every weight, not only what this batch happens to exercise
    want = s["model"].state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("name", list(VARIANTS))
def test_saved_config_is_relative_and_reloadable(saved, name):
    path = saved[name]["path"]
    cfg = json.loads((path / "mmtune_config.json").read_text())
    assert cfg["preset"] is None
    assert cfg["llm"]["path"] == "llm" and cfg["llm"]["arch"] == {}
    assert cfg["encoders"]["image"]["path"] == "encoders/image"
    assert cfg["tokenizer"] == {"type": "auto", "path": "tokenizer", "chat_template": None}
    assert cfg["llm"]["lora"]["r"] == (4 if name == "lora" else 0)
    assert (path / "llm_adapter").exists() == (name == "lora")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_saved_llm_loads_on_its_own(saved, name):
    """llm/ holds the base LLM in transformers' layout, loadable without mmtune."""
    from transformers import AutoModelForCausalLM

    s = saved[name]
    llm = AutoModelForCausalLM.from_pretrained(s["path"] / "llm")
    got = llm.state_dict()
    assert set(got) == set(s["base"]), sorted(set(got) ^ set(s["base"]))[:6]
    for k, v in s["base"].items():
        assert torch.equal(got[k], v), f"llm/{k} differs from the model's base weight"


def test_saved_adapter_loads_with_peft(saved):
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    s = saved["lora"]
    arch = dict(tiny_llm_arch())
    arch.pop("model_type")
    base = LlamaForCausalLM(LlamaConfig(**arch))
    base.load_state_dict(s["base"])  # the true base weights, independent of llm/
    peft_model = PeftModel.from_pretrained(base, s["path"] / "llm_adapter").eval()
    want = {k: v for k, v in s["model"].llm.state_dict().items() if "lora_" in k}
    got = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert want and set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    with torch.no_grad():
        embeds = s["model"].embed(s["batch"])
        logits = peft_model(inputs_embeds=embeds, attention_mask=s["batch"].attention_mask).logits
    torch.testing.assert_close(logits, s["logits"], rtol=0, atol=1e-6)


def test_saved_clip_encoder_loads_with_transformers(saved):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    s = saved["hf_clip"]
    tower = CLIPVisionModel.from_pretrained(s["path"] / "encoders" / "image")
    want = s["model"].encoders["image"].tower.state_dict()
    got = tower.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    proc = CLIPImageProcessor.from_pretrained(s["path"] / "encoders" / "image")
    assert tuple(proc.image_mean) == s["model"].encoders["image"].spec.mean


def test_saved_siglip_encoder_loads_with_transformers(saved):
    from transformers import SiglipVisionModel

    s = saved["hf_siglip"]
    tower = SiglipVisionModel.from_pretrained(s["path"] / "encoders" / "image")
    want = s["model"].encoders["image"].tower.state_dict()
    assert all(torch.equal(tower.state_dict()[k], want[k]) for k in want)


# ========================================================================= local checkpoints
def test_build_from_local_checkpoints(tmp_path):
    """A user's own checkpoints on disk: an HF Llama, an HF CLIP tower with its processor, a tokenizer."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    tok = build_word_tokenizer(synthetic_words())
    torch.manual_seed(11)
    arch = dict(tiny_llm_arch(len(tok)))
    arch.pop("model_type")
    llm = LlamaForCausalLM(LlamaConfig(**arch))
    tower = CLIPVisionModel(CLIPVisionConfig(**tiny_clip_arch()))
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]  # not CLIP's defaults: must come from disk
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                              image_mean=mean, image_std=std)
    llm.save_pretrained(tmp_path / "my-llama")
    tower.save_pretrained(tmp_path / "my-clip")
    proc.save_pretrained(tmp_path / "my-clip")
    tok.save_pretrained(tmp_path / "my-tok")

    cfg = from_dict(ModelConfig, {
        "llm": {"path": str(tmp_path / "my-llama")},
        "encoders": {"image": {"type": "hf_clip", "path": str(tmp_path / "my-clip")}},
        "projectors": {"image": {"type": "mlp2x_gelu"}},
        "tokenizer": {"type": "auto", "path": str(tmp_path / "my-tok")},
    })
    torch.manual_seed(99)  # different from the seed the checkpoints were made with
    model = MultimodalLM.build(cfg).eval()

    for k, v in llm.state_dict().items():
        assert torch.equal(model.llm.state_dict()[k], v), f"llm {k}"
    for k, v in tower.state_dict().items():
        assert torch.equal(model.encoders["image"].tower.state_dict()[k], v), f"encoder {k}"
    enc = model.encoders["image"]
    assert enc.spec.mean == tuple(mean) and enc.spec.std == tuple(std) and enc.spec.size == 32
    assert model.tokenizer.get_vocab() == tok.get_vocab()
    assert model.placeholder_ids["image"] == tok.convert_tokens_to_ids("<image>")
    assert not any(p.requires_grad for p in model.encoders.parameters())  # trainable: false
    batch = make_batch(model, [(one_image_prompt(model), 1)])
    with torch.no_grad():
        assert model(batch).shape[-1] == len(tok)


def test_auto_tokenizer_falls_back_to_llm_path(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_word_tokenizer(synthetic_words())
    arch = dict(tiny_llm_arch(len(tok)))
    arch.pop("model_type")
    LlamaForCausalLM(LlamaConfig(**arch)).save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    d = tiny_model_dict(llm={"path": str(tmp_path / "llm")})
    del d["llm"]["arch"]
    d["tokenizer"] = {"type": "auto"}
    model = MultimodalLM.build(from_dict(ModelConfig, d))
    assert model.tokenizer.get_vocab() == tok.get_vocab()


# ========================================================================= generate
def _prompts(model):
    ph = model.placeholder_ids["image"]
    return [
        [BOS, *text_ids(model, "USER :"), ph, *text_ids(model, "what colour is the shape ? ASSISTANT :")],
        [BOS, ph, *text_ids(model, "ASSISTANT :")],
        [BOS, *text_ids(model, "USER : how many ?"), ph, *text_ids(model, "ASSISTANT :")],
    ]


def test_generate_left_padded_batch_equals_each_prompt_alone(tiny_model):
    model = tiny_model(seed=4)
    with torch.no_grad():  # sharper logits: greedy choices well clear of float noise
        model.llm.lm_head.weight.mul_(20)
    prompts = _prompts(model)
    batch = make_batch(model, [(p, 1) for p in prompts], seed=7, left_pad=True)
    assert (batch.attention_mask[:, 0] == 0).any() and (batch.attention_mask[:, -1] == 1).all()
    new = model.generate(batch, max_new_tokens=6)
    assert new.shape[0] == len(prompts) and 1 <= new.shape[1] <= 6
    pad = model.tokenizer.pad_token_id
    for i, p in enumerate(prompts):
        alone = make_batch(model, [(p, 1)], left_pad=True)
        alone.media["image"] = batch.media["image"][i:i + 1]
        one = model.generate(alone, max_new_tokens=6)
        # New tokens only: the first is the argmax after the prompt, not the prompt's first id.
        with torch.no_grad():
            first = model(alone)[0, -1].argmax()
        assert one[0, 0] == first
        n = one.shape[1]
        assert torch.equal(new[i, :n], one[0]), (i, new[i], one[0])
        assert (new[i, n:] == pad).all()  # a row that ended early (EOS) is padded


def test_generate_returns_only_new_tokens(tiny_model):
    model = tiny_model(seed=4)
    batch = make_batch(model, [(_prompts(model)[1], 1)], left_pad=True)
    new = model.generate(batch, max_new_tokens=3)
    assert new.shape[1] <= 3  # never prompt + new
    assert new.dtype == torch.long


# ========================================================================= stages
def _rows(model) -> dict[str, dict]:
    return {r["part"]: r for r in parameter_rows(model)}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_pretrain_trains_only_the_projector(tiny_model):
    model = tiny_model()
    set_trainable(model, ["projector"])
    rows = _rows(model)
    proj = _count(model.projectors)
    assert rows["projector.image"]["trainable"] == rows["projector.image"]["params"] == proj > 0
    assert rows["encoder.image"]["trainable"] == 0 and rows["llm"]["trainable"] == 0
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == proj


def test_finetune_trains_projector_and_llm(tiny_model):
    model = tiny_model()
    set_trainable(model, ["projector", "llm"])
    rows = _rows(model)
    assert rows["llm"]["trainable"] == rows["llm"]["params"] == _count(model.llm)
    assert rows["projector.image"]["trainable"] == _count(model.projectors)
    assert rows["encoder.image"]["trainable"] == 0
    assert rows["encoder.image"]["params"] == _count(model.encoders) > 0
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == _count(model.llm) + _count(model.projectors)


def test_finetune_with_lora_trains_only_the_adapters(tiny_model):
    model = tiny_model(llm={"lora": {"r": 4}})
    r = 4
    base_count = _count(model.llm)
    # peft's "all-linear" targets every Linear of the LLM except the output head.
    linears = [(n, m) for n, m in model.llm.named_modules() if isinstance(m, nn.Linear)]
    expected_lora = sum(r * (m.in_features + m.out_features) for n, m in linears if n != "lm_head")
    assert len(linears) == 2 * 7 + 1  # 2 layers x (q, k, v, o, gate, up, down) + lm_head

    set_trainable(model, ["projector", "llm"])
    rows = _rows(model)
    assert rows["llm"]["trainable"] == expected_lora
    assert rows["llm"]["params"] == base_count + expected_lora
    assert rows["projector.image"]["trainable"] == _count(model.projectors)
    assert rows["encoder.image"]["trainable"] == 0
    # Base weights are frozen; only lora_ tensors train.
    for n, p in model.llm.named_parameters():
        assert p.requires_grad == ("lora_" in n), n

    # Going back to a projector-only stage freezes the adapters again; LoRA stays attached.
    set_trainable(model, ["projector"])
    rows = _rows(model)
    assert rows["llm"]["trainable"] == 0 and rows["llm"]["params"] == base_count + expected_lora


def test_encoder_stage_and_unknown_part(tiny_model):
    model = tiny_model()
    set_trainable(model, ["encoder"])
    rows = _rows(model)
    assert rows["encoder.image"]["trainable"] == _count(model.encoders)
    assert rows["projector.image"]["trainable"] == 0 and rows["llm"]["trainable"] == 0
    with pytest.raises(ValueError, match="vision"):
        set_trainable(model, ["vision"])
