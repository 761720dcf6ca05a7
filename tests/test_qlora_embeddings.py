"""`model.llm.quantize_embeddings`: the input embedding and the lm_head in NF4 too, tied or not.

Loading, weight memory, LoRA training, generation, and a tiny QLoRA SFT run through the CLI
that saves, reloads and exports a merged full-precision model."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import bitsandbytes as bnb

from mmtune.config import LLMConfig, ModelConfig, from_dict
from mmtune.llm import load_llm, nf4_embedding_class, weight_bytes
from mmtune.model import MultimodalLM

from conftest import tiny_model_dict
from test_qlora import BOS, LINEARS, lora_steps, make_batch, qlora_model, save_llama


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def base(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "llama"
    save_llama(path, tie=request.param)
    return path


def vocab_modules(llm: nn.Module) -> tuple[nn.Module, nn.Module]:
    return llm.get_input_embeddings(), llm.get_output_embeddings()


def dequantised(weight) -> torch.Tensor:
    return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()


# ========================================================================= loading, memory
def test_embedding_and_head_are_nf4_and_the_default_is_unchanged(tmp_path):
    for tie in (True, False):
        path = tmp_path / f"llama-{tie}"
        save_llama(path, tie=tie)
        ref = load_llm(LLMConfig(path=str(path)))
        default = load_llm(LLMConfig(path=str(path), quantize="nf4"))
        q = load_llm(LLMConfig(path=str(path), quantize="nf4", quantize_embeddings=True))

        assert type(default.get_input_embeddings()) is nn.Embedding and type(default.lm_head) is nn.Linear
        emb, head = vocab_modules(q)
        assert isinstance(emb, bnb.nn.Embedding4bit) and isinstance(head, bnb.nn.Linear4bit)
        assert (head.weight is emb.weight) == tie  # tied: one Params4bit, one storage
        for m in (emb, head):
            qs = m.weight.quant_state
            assert qs.quant_type == "nf4" and qs.blocksize == 64 and qs.nested  # double quant
            assert m.weight.dtype == torch.uint8 and not m.weight.requires_grad
        assert head.compute_dtype == torch.float32 and not head.support_avx512bf16_for_cpu

        # A row gather reads exactly the rows of the dequantised table, which is NF4-close to fp32.
        ids = torch.tensor([[BOS, 5, 6, 7, 40], [9, 9, 3, 0, 1]])
        table, want = dequantised(emb.weight), ref.get_input_embeddings().weight
        assert emb(ids).dtype == torch.float32  # prepared: the residual stream starts in fp32
        assert torch.equal(emb(ids), table[ids])
        assert 0 < (table - want).norm() / want.norm() < 0.15

        # Tied: the shared storage is counted once -- the head adds no bytes of its own.
        head_bytes = weight_bytes(q) - weight_bytes(q, only=lambda n, m: n != "lm_head")
        assert (head_bytes == 0) == tie
        # fp32 -> 4.13 bits a weight, plus ~1 KiB of code books per matrix (visible at vocab 63).
        vocab = lambda n, m: n in ("model.embed_tokens", "lm_head")  # noqa: E731
        assert weight_bytes(q, only=vocab) < 0.3 * weight_bytes(default, only=vocab)
        assert weight_bytes(q) < weight_bytes(default) < weight_bytes(ref)


def test_quantize_embeddings_needs_nf4_and_whole_blocks_per_row(tmp_path):
    with pytest.raises(ValueError, match="quantize_embeddings needs model.llm.quantize: nf4"):
        load_llm(LLMConfig(path="unused", quantize_embeddings=True))
    save_llama(tmp_path / "h96", hidden=96)  # NF4 blocks of 64 would straddle embedding rows
    with pytest.raises(ValueError, match="hidden size 96 is not a multiple of the NF4 block size 64"):
        load_llm(LLMConfig(path=str(tmp_path / "h96"), quantize="nf4", quantize_embeddings=True))


def test_a_4bit_llm_with_nf4_embeddings_saves_only_as_an_adapter(base, tmp_path):
    # transformers reloads 4-bit Linear layers but not a packed embedding: fail at save, not reload.
    d = tiny_model_dict(llm={"path": str(base), "quantize": "nf4", "quantize_embeddings": True, "lora": {"r": 0}})
    del d["llm"]["arch"]
    model = MultimodalLM.build(from_dict(ModelConfig, d))
    with pytest.raises(ValueError, match="saves only as a LoRA adapter"):
        model.save_pretrained(tmp_path / "m")


# ========================================================================= training, generation
def test_lora_steps_with_nf4_embeddings(base):
    model = qlora_model(base, quantize_embeddings=True).train()
    emb, head = vocab_modules(model.llm)
    assert isinstance(emb, nf4_embedding_class()) and isinstance(head, bnb.nn.Linear4bit)
    lora = {n: p for n, p in model.llm.named_parameters() if p.requires_grad}
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == set(LINEARS)  # not lm_head
    frozen = {id(m.weight): m.weight.data.clone() for m in (emb, head)}

    batch = make_batch(model)
    losses = lora_steps(model, batch, lora, 4)
    assert losses[-1] < 0.95 * losses[0], losses
    assert all(torch.equal(m.weight.data, frozen[id(m.weight)]) for m in (emb, head))

    out = model.eval().generate(batch, max_new_tokens=4)
    assert out.shape[0] == 2 and 0 < out.shape[1] <= 4


# ========================================================================= run: save, reload, export
def test_qlora_sft_run_with_nf4_embeddings_saves_reloads_and_exports(base, tmp_path):
    """The tolerance of each logits comparison:
      * reload vs. the 4-bit model before saving: the same quantisation of the same base and
        the same adapter, the same fp32 arithmetic -> 1e-6;
      * merged export vs. the full-precision base + the adapter through peft: the merge folds
        B @ A into fp32 weights, rounding only -> 1e-4 (as without quantize_embeddings);
      * the trained 4-bit model vs. that full-precision reference: they differ by the NF4
        error of the base weights, ~9% relative per Gaussian matrix; the embedding's error
        enters the logits directly and so does the head's: about sqrt(2 * 0.09^2) = 0.13 on top
        of the decoder's (0.06 measured without quantize_embeddings, 0.11 with): bound 0.2."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mmtune.cli import main as cli

    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "merged"
    cli(["data", "synth", "text", "--out", str(data), "--n-train", "48", "--n-test", "4",
         "--seed", "1", "--skills", "copy"])
    cli(["train", "qlora", "--config", "tiny", "--output-dir", str(run), "--data", str(data),
         f"model.llm.path={base}", "model.llm.quantize_embeddings=true", "stages.sft.max_steps=3",
         "stages.sft.batch_size=16", "stages.sft.warmup_steps=0", "train.log_every=1", "eval.batch_size=4"])
    saved = json.loads((run / "model" / "mmtune_config.json").read_text())["llm"]
    assert saved["quantize"] == "nf4" and saved["quantize_embeddings"] is True
    assert json.loads((run / "eval.json").read_text())["n"] == 4  # generated with NF4 embeddings
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0], losses

    model = MultimodalLM.from_pretrained(run / "model").eval()
    emb, head = vocab_modules(model.llm.get_base_model())
    assert isinstance(emb, nf4_embedding_class()) and isinstance(head, bnb.nn.Linear4bit)
    ids = torch.tensor([[BOS, *model.tokenizer("USER : copy red blue ASSISTANT :",
                                               add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        got = model.llm(ids).logits
    model.save_pretrained(tmp_path / "again")
    again = MultimodalLM.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        torch.testing.assert_close(again.llm(ids).logits, got, rtol=0, atol=1e-6)

    cli(["export", str(run), "--merge", "--out", str(out)])
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(merged.get_input_embeddings()) is nn.Embedding and type(merged.lm_head) is nn.Linear
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    ref = PeftModel.from_pretrained(ref, run / "model" / "llm_adapter").eval()
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(ids).logits
        torch.testing.assert_close(merged(ids).logits, want, rtol=0, atol=1e-4)
        assert (want - plain(ids).logits).abs().max() > 1e-1  # the adapter matters: not a vacuous merge
    assert (got - want).norm() / want.norm() < 0.2
