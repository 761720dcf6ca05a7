"""QLoRA on CPU: NF4 + double-quant loading, LoRA steps on the 4-bit model, adapter save/load,
and `mmtune export --merge` into full-precision weights."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import bitsandbytes as bnb  # noqa: E402  (a test dependency: QLoRA runs on CPU)

from mmtune.config import LLMConfig, ModelConfig, from_dict  # noqa: E402
from mmtune.data.collate import Example, collate  # noqa: E402
from mmtune.data.text.tokenizer import build_word_tokenizer, synthetic_words  # noqa: E402
from mmtune.llm import is_4bit, kbit_optimizer, load_llm, weight_bytes  # noqa: E402
from mmtune.batch import IGNORE
from mmtune.model import MultimodalLM  # noqa: E402
from mmtune.train.params import set_trainable  # noqa: E402

from conftest import tiny_llm_arch, tiny_model_dict  # noqa: E402

BOS = 2
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def save_llama(path, hidden: int = 64, intermediate: int = 128, layers: int = 2, heads: int = 2,
               seed: int = 0, tie: bool = False):
    """A random-init tiny Llama (+ the synthetic tokenizer) saved as an HF checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_word_tokenizer(synthetic_words())
    arch = dict(tiny_llm_arch(len(tok)))
    arch.pop("model_type")
    arch.update(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    llm = LlamaForCausalLM(LlamaConfig(**arch))
    llm.save_pretrained(path)
    tok.save_pretrained(path)
    return llm


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Path of a tiny full-precision Llama checkpoint (hidden 64, 2 layers)."""
    path = tmp_path_factory.mktemp("base") / "llama"
    save_llama(path)
    return path


def qlora_model(base, r: int = 8, seed: int = 0, quantize: str | None = "nf4", **llm) -> MultimodalLM:
    """A MultimodalLM on the 4-bit base with LoRA on, the adapters made non-trivial (peft
    starts lora_B at zero, which would make every adapter test pass vacuously). `llm`: more
    model.llm fields."""
    d = tiny_model_dict(llm={"path": str(base), "quantize": quantize, "lora": {"r": r, "dropout": 0.0}, **llm})
    del d["llm"]["arch"]
    torch.manual_seed(seed)
    model = MultimodalLM.build(from_dict(ModelConfig, d))
    set_trainable(model, ["projector", "llm"])
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def make_batch(model: MultimodalLM, seed: int = 0):
    """Row 0: text, one image, text; row 1: text only. Labels = inputs (all tokens)."""
    ph = model.placeholder_ids["image"]
    k = model.tokens_per_medium("image")
    ids = lambda s: model.tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = [[BOS, *ids("USER :"), *[ph] * k, *ids("what shape ? ASSISTANT : red circle")],
            [BOS, *ids("USER : how many ? ASSISTANT : two")]]
    size = model.encoders["image"].spec.size
    g = torch.Generator().manual_seed(seed)
    examples = [Example("r0", rows[0], list(rows[0]), {"image": torch.randn(1, 3, size, size, generator=g)}),
                Example("r1", rows[1], list(rows[1]), {})]
    return collate(examples, model.tokenizer.pad_token_id)


def loss_of(model: MultimodalLM, batch) -> torch.Tensor:
    logits = model(batch)
    labels = batch.labels[:, 1:]
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                       ignore_index=IGNORE)


def lora_steps(model: MultimodalLM, batch, lora: dict[str, nn.Parameter], steps: int) -> list[float]:
    """AdamW steps on the adapters alone; every adapter gets a gradient at every step."""
    opt = torch.optim.AdamW(lora.values(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = loss_of(model, batch)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())
        opt.step()
        losses.append(loss.item())
    return losses


def decoder_linears(llm: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in llm.named_modules() if n.rsplit(".", 1)[-1] in LINEARS}


# ========================================================================= loading
def test_nf4_load_gives_double_quantised_linear4bit(base):
    llm = load_llm(LLMConfig(path=str(base), quantize="nf4"))
    assert is_4bit(llm)
    linears = decoder_linears(llm)
    assert len(linears) == 2 * 7
    ref = load_llm(LLMConfig(path=str(base))).state_dict()
    for name, m in linears.items():
        assert isinstance(m, bnb.nn.Linear4bit), name
        qs = m.weight.quant_state
        assert qs.quant_type == "nf4" and qs.blocksize == 64, name
        assert qs.nested and qs.state2 is not None, f"{name}: no double quantisation"
        assert qs.absmax.dtype == torch.uint8 and qs.state2.absmax.dtype == torch.float32
        assert m.weight.dtype == torch.uint8 and m.weight.numel() * 2 == m.in_features * m.out_features
        assert m.compute_dtype == torch.float32  # CPU + float32 model: exact matmul (see llm.py)
        w = bnb.functional.dequantize_4bit(m.weight.data, qs).float()
        want = ref[f"{name}.weight"]
        err = (w - want).norm() / want.norm()
        assert 0 < err < 0.15, f"{name}: NF4 relative error {err:.3f}"
    assert type(llm.lm_head) is nn.Linear  # the output head stays in full precision
    assert not any(p.requires_grad for p in llm.parameters())  # prepare_model_for_kbit_training
    assert all(p.dtype == torch.float32 for n, p in llm.named_parameters() if "proj" not in n)

    # An eval forward keeps the layout (no CPU inference repacking that drops double quant).
    llm.eval()
    with torch.no_grad():
        llm(torch.tensor([[BOS, 5, 6, 7]]))
    qs = linears["model.layers.0.self_attn.q_proj"].weight.quant_state
    assert qs.nested and not getattr(qs, "packing_format_for_cpu", False)


def test_nf4_weights_are_a_fraction_of_full_precision(tmp_path):
    """hidden 256, 2 layers: the decoder's Linear layers are 88% of the weights."""
    path = tmp_path / "llama256"
    save_llama(path, hidden=256, intermediate=704, layers=2, heads=4)
    fp32 = load_llm(LLMConfig(path=str(path)))
    bf16 = load_llm(LLMConfig(path=str(path), dtype="bfloat16"))
    nf4 = load_llm(LLMConfig(path=str(path), quantize="nf4"))

    def in_layers(name, module):
        return ".layers." in f".{name}." and isinstance(module, nn.Linear)

    lin32, lin16, lin4 = (weight_bytes(m, only=in_layers) for m in (fp32, bf16, nf4))
    n_weights = sum(m.in_features * m.out_features for m in decoder_linears(fp32).values())
    assert lin32 == 4 * n_weights and lin16 == 2 * n_weights
    # 4 bits + an 8-bit absmax per 64 + an fp32 absmax per 256 x 64 = 4.127, plus each layer's
    # own code books (16 + 256 fp32: ~1 KiB, a visible 0.05 bits at these tiny layer sizes).
    bits_per_weight = 8 * lin4 / n_weights
    assert 4.125 < bits_per_weight < 4.25, bits_per_weight
    assert lin4 / lin32 < 0.135 and lin4 / lin16 < 0.27
    total32, total4 = weight_bytes(fp32), weight_bytes(nf4)
    assert total4 / total32 < 0.25, (total4, total32)  # embeddings / head / norms stay fp32


def test_nf4_needs_a_checkpoint(tiny_config):
    cfg = tiny_config(llm={"quantize": "nf4"}).llm
    with pytest.raises(ValueError, match=r"needs model\.llm\.path.*save_pretrained"):
        load_llm(cfg)
    with pytest.raises(ValueError, match="'int3' is not supported"):
        load_llm(LLMConfig(path="unused", quantize="int3"))


# ========================================================================= training
def test_qlora_steps_on_cpu_reduce_the_loss(base):
    model = qlora_model(base).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    lora = {n: p for n, p in model.llm.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == set(LINEARS)  # all-linear
    frozen = {n: m.weight.data.clone() for n, m in model.llm.named_modules()
              if isinstance(m, bnb.nn.Linear4bit)}  # peft's lora.Linear4bit wraps them
    assert len(frozen) == 14

    assert kbit_optimizer(trainable, 1e-2, (0.9, 0.999), 0.0, "cpu") is None  # caller: AdamW
    losses = lora_steps(model, make_batch(model), lora, 8)
    assert losses[-1] < 0.9 * losses[0] and min(losses[4:]) < min(losses[:4]), losses
    for n, m in model.llm.named_modules():  # the 4-bit base never changes
        if n in frozen:
            assert torch.equal(m.weight.data, frozen[n]), n


def test_gradient_checkpointing_is_off_by_default_and_can_be_turned_on(base):
    from mmtune.config import LoraConfig
    from mmtune.llm import add_lora

    def checkpointing(llm) -> bool:  # transformers 5 renamed it; older ones lack the new name
        new = hasattr(type(llm), "is_activation_checkpointing")
        return getattr(llm, "is_activation_checkpointing" if new else "is_gradient_checkpointing")

    assert not checkpointing(load_llm(LLMConfig(path=str(base), quantize="nf4")))
    llm = load_llm(LLMConfig(path=str(base), quantize="nf4"), gradient_checkpointing=True)
    assert checkpointing(llm)
    llm = add_lora(llm, LoraConfig(r=4, dropout=0.0)).train()
    ids = torch.tensor([[BOS, 5, 6, 7, 8, 9]])
    llm(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in llm.named_parameters() if "lora_A" in n]
    assert len(grads) == 14 and all(g is not None for g in grads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kbit_optimizer_on_cuda_is_paged_adamw_8bit():
    p = nn.Parameter(torch.zeros(4096, device="cuda"))
    opt = kbit_optimizer([p], 1e-3, (0.9, 0.999), 0.0, "cuda")
    assert isinstance(opt, bnb.optim.PagedAdamW8bit)


# ========================================================================= save / load
def test_adapter_saved_in_peft_format_and_reloads_to_the_same_logits(base, tmp_path):
    from safetensors.torch import load_file

    model = qlora_model(base).eval()
    batch = make_batch(model, seed=1)
    with torch.no_grad():
        want = model(batch)
    model.save_pretrained(tmp_path / "m")

    adapter = tmp_path / "m" / "llm_adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["task_type"] == "CAUSAL_LM"
    targets = cfg["target_modules"]  # "all-linear", resolved by peft to the module names
    assert len(targets) == 14 and {t.rsplit(".", 1)[-1] for t in targets} == set(LINEARS)
    tensors = load_file(adapter / "adapter_model.safetensors")
    assert len(tensors) == 2 * 14 and all("lora_A" in k or "lora_B" in k for k in tensors)
    assert not (tmp_path / "m" / "llm").exists()  # the base stays where it was loaded from

    # The saved config keeps `quantize`, so a reload is the 4-bit model that was trained.
    assert json.loads((tmp_path / "m" / "mmtune_config.json").read_text())["llm"]["quantize"] == "nf4"
    loaded = MultimodalLM.from_pretrained(tmp_path / "m").eval()
    assert is_4bit(loaded.llm.get_base_model())
    assert isinstance(loaded.llm.get_base_model().model.layers[0].mlp.up_proj.base_layer, bnb.nn.Linear4bit)
    with torch.no_grad():
        got = loaded(batch)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    state = {k: v for k, v in loaded.llm.state_dict().items() if "lora_" in k}
    for k, v in model.llm.state_dict().items():
        if "lora_" in k:
            assert torch.equal(state[k], v), k


# ========================================================================= export
def test_export_merge_writes_full_precision_base_plus_adapter(base, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmtune.cli import main as cli

    model = qlora_model(base, seed=3).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = make_batch(model)
    for _ in range(2):  # an adapter trained against the 4-bit base
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    run = tmp_path / "run"
    model.eval().save_pretrained(run / "model")

    with pytest.raises(SystemExit, match="--merge is required"):
        cli(["export", str(run), "--out", str(tmp_path / "nomerge")])
    out = tmp_path / "merged"
    cli(["export", str(run), "--merge", "--out", str(out)])
    assert "wrote" in capsys.readouterr().out

    # Reference: the full-precision base + the adapter, through peft alone.
    ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    ref = PeftModel.from_pretrained(ref, run / "model" / "llm_adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # transformers alone
    assert not is_4bit(merged) and getattr(merged.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    assert not any("lora" in k for k in merged.state_dict())
    ids = batch.input_ids[1:].clone()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, ref(ids).logits, rtol=0, atol=1e-4)
        # the adapter changes the model: the merge did something
        plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        assert (plain(ids).logits - ref(ids).logits).abs().max() > 1e-2
    assert AutoTokenizer.from_pretrained(out).get_vocab() == model.tokenizer.get_vocab()

    # The rest of the MultimodalLM: loads with the merged LLM and no adapter.
    mm = MultimodalLM.from_pretrained(out).eval()
    assert not hasattr(mm.llm, "peft_config") and not (out / "llm_adapter").exists()
    for k, v in model.projectors.state_dict().items():
        assert torch.equal(mm.projectors.state_dict()[k], v), k
    with torch.no_grad():
        embeds = mm.embed(batch)
        want = ref(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
        torch.testing.assert_close(mm(batch), want, rtol=0, atol=1e-4)

    with pytest.raises(SystemExit, match="not empty"):
        cli(["export", str(run), "--merge", "--out", str(out)])


def test_export_merge_of_a_random_init_lora_model(tmp_path, tiny_model):
    """No quantisation, base only in the saved model's llm/: merged the same way."""
    from transformers import AutoModelForCausalLM

    from mmtune.export import export_merged

    model = tiny_model(llm={"lora": {"r": 4}})
    set_trainable(model, ["llm"])
    with torch.no_grad():
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    model.eval().save_pretrained(tmp_path / "m")
    out = export_merged(tmp_path / "m", tmp_path / "out")
    ids = torch.tensor([[BOS, 5, 6, 7, 8]])
    with torch.no_grad():
        want = model.llm(ids).logits
        got = AutoModelForCausalLM.from_pretrained(out)(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_training_a_4bit_llm_without_lora_is_a_config_error(base):
    from mmtune.train.params import set_trainable

    d = tiny_model_dict(llm={"path": str(base), "quantize": "nf4", "lora": {"r": 0}})
    del d["llm"]["arch"]
    model = MultimodalLM.build(from_dict(ModelConfig, d))
    with pytest.raises(ValueError, match="lora.r > 0"):
        set_trainable(model, ["projector", "llm"])
