"""Load the language model: from a local HF checkpoint or a config, optionally in 4-bit, with LoRA.

QLoRA (Dettmers et al., 2023) = `quantize: nf4` + `lora.r > 0`: the frozen base weights are
stored as 4-bit NormalFloat with double-quantised block constants (bitsandbytes `Linear4bit`),
dequantised block by block for each matmul, and only the LoRA adapters (kept in fp32) train.
`quantize_embeddings` stores the input embedding and the lm_head in NF4 as well (QLoRA keeps
them in 16-bit; see `quantize_vocab_nf4`).
"""
from __future__ import annotations

import functools

import torch
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .config import LLMConfig, LoraConfig


def torch_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(dtypes)}")
    return dtypes[name]


def _on_cuda() -> bool:
    # transformers' bnb quantizer places a model loaded without a device_map on the current
    # CUDA device when there is one, on the CPU otherwise: the same test decides here.
    return torch.cuda.is_available()


def compute_dtype_4bit(cfg: LLMConfig) -> torch.dtype:
    """The dtype a `Linear4bit` dequantises its weight to and runs the matmul in.

    CUDA: bfloat16, as in the QLoRA paper (fast tensor-core matmuls, fp32 range).
    CPU: bitsandbytes 0.50.2 has CPU dequantise kernels for fp32, bf16 and fp16 and runs the
    training matmul as dequantise + `F.linear` in the compute dtype, so none is *required*.
    We still choose explicitly: float32 when the model is float32 (the default) -- the matmul
    is then exact on the dequantised weights, matching the fp32 LoRA adapters and fp32 norms
    and the full-precision model that `mmtune export --merge` writes; bfloat16 otherwise.
    Never float16 on CPU: most CPUs have no fast fp16 GEMM, and fp16's range overflows where
    bf16's does not.
    """
    if _on_cuda():
        return torch.bfloat16
    return torch.float32 if torch_dtype(cfg.dtype) == torch.float32 else torch.bfloat16


def _quantization(cfg: LLMConfig):
    if cfg.quantize is None:
        if cfg.quantize_embeddings:
            raise ValueError("model.llm.quantize_embeddings needs model.llm.quantize: nf4")
        return None
    if cfg.quantize != "nf4":
        raise ValueError(f"model.llm.quantize: {cfg.quantize!r} is not supported (use 'nf4')")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ImportError("model.llm.quantize: nf4 needs bitsandbytes: pip install 'mmtune[quant]'") from None
    from transformers import BitsAndBytesConfig

    # QLoRA: NF4 weights in blocks of 64, their fp32 absmax constants quantised again to
    # 8 bits in blocks of 256 (double quantisation: ~0.127 instead of 0.5 bits per weight).
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype_4bit(cfg))


def is_4bit(llm: torch.nn.Module) -> bool:
    return bool(getattr(llm, "is_loaded_in_4bit", False))


def load_llm(cfg: LLMConfig, *, prepare: bool = True,
             gradient_checkpointing: bool | None = None) -> PreTrainedModel:
    """The LLM `cfg` describes. With `quantize: nf4` it is loaded in 4-bit from `cfg.path` and,
    unless `prepare=False`, made ready for k-bit training (see `prepare_kbit`).

    `gradient_checkpointing`: None reads `cfg.gradient_checkpointing` when LLMConfig has such a
    field, else off -- the models mmtune trains on CPU are small enough that recomputing
    activations costs more than it saves."""
    dtype = torch_dtype(cfg.dtype)
    quantization = _quantization(cfg)
    if quantization is not None and cfg.path is None:
        # transformers quantises while it loads a checkpoint; a config-only model has none.
        # We do not save one to a temporary directory ourselves: that directory would be the
        # only full-precision copy of the base weights, and it would be gone by the time
        # `mmtune export --merge` needs it to merge the trained adapter into.
        raise ValueError(
            "model.llm.quantize: nf4 needs model.llm.path (a saved HF checkpoint): 4-bit weights are "
            "quantised while transformers loads a checkpoint, and a random-init model (arch only) has "
            "none. Build it without quantize, save it first -- llm.save_pretrained(DIR) and its "
            "tokenizer.save_pretrained(DIR) -- then set model.llm.path=DIR.")
    if cfg.path is not None:
        llm = AutoModelForCausalLM.from_pretrained(cfg.path, dtype=dtype, quantization_config=quantization)
        if quantization is not None:
            if cfg.quantize_embeddings:
                quantize_vocab_nf4(llm, compute_dtype_4bit(cfg))
            _keep_cpu_layout(llm)
            if prepare:
                if gradient_checkpointing is None:
                    gradient_checkpointing = bool(getattr(cfg, "gradient_checkpointing", False))
                prepare_kbit(llm, gradient_checkpointing=gradient_checkpointing)
        return llm
    if not cfg.arch.get("model_type"):
        raise ValueError("model.llm needs a path, or arch with a model_type (e.g. llama)")
    arch = dict(cfg.arch)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _keep_cpu_layout(llm: torch.nn.Module) -> None:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights.

    On CPUs with AVX512-BF16, bnb 0.50.2's `Linear4bit.forward` in eval mode without grad
    repacks the weight for a fused kernel the first time it runs: the double-quantised
    absmax is expanded to bf16 (double quantisation gone for the rest of the process), the
    matmul runs in bf16 whatever the compute dtype, and `state_dict()` (hence every save)
    repacks back with a lossy re-quantisation of the absmax. Evaluating between training
    steps would then change the weights being trained. Training and evaluation here use the
    one layout and the one compute dtype instead, at some cost in CPU inference speed."""
    for module in llm.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def prepare_kbit(llm: PreTrainedModel, gradient_checkpointing: bool = False) -> PreTrainedModel:
    """peft's `prepare_model_for_kbit_training`: freezes every base weight and upcasts the
    non-quantised ones (norms, embeddings, lm_head) to fp32 for stable training; with
    gradient checkpointing, non-reentrant (no need for inputs that require grad)."""
    from peft import prepare_model_for_kbit_training

    llm = prepare_model_for_kbit_training(
        llm, use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None)
    emb = llm.get_input_embeddings()
    if isinstance(emb, nf4_embedding_class()):
        emb.dtype = torch.float32  # the residual stream starts in fp32, as an upcast embedding's would
    return llm


@functools.cache
def nf4_embedding_class() -> type:
    """bitsandbytes' `Embedding4bit`, able to read a double-quantised weight (the one a tied
    `Linear4bit` lm_head shares) and to be saved. bnb 0.50.2's own forward gathers the rows'
    absmax and only then expands them with the nested constants, indexed by position in the
    gathered copy: right only without double quantisation. And it refuses to save, which peft
    does on every adapter save (`state_dict()` of the whole model). Built on first use:
    bitsandbytes is an optional dependency."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import QuantState, dequantize_4bit, dequantize_blockwise

    class NF4Embedding(bnb.nn.Embedding4bit):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            qs = self.weight.quant_state
            rows = self.weight.data.view(torch.uint8).view(self.num_embeddings, -1)  # 2 weights a byte
            absmax = qs.absmax
            if qs.nested:  # V*D/64 floats, 1/8 of the packed weight: expanded, then rows gathered
                absmax = dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
            per_row = QuantState(absmax=F.embedding(ids, absmax.view(self.num_embeddings, -1)).flatten(),
                                 shape=torch.Size((*ids.shape, self.embedding_dim)), code=qs.code,
                                 blocksize=qs.blocksize, quant_type=qs.quant_type, dtype=qs.dtype)
            return dequantize_4bit(F.embedding(ids, rows).view(-1, 1), per_row).to(self.dtype)

        def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
            # As Linear4bit saves: the packed weight and its quantisation state, no dequantising.
            torch.nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)
            for k, v in self.weight.quant_state.as_dict(packed=True).items():
                destination[prefix + "weight." + k] = v if keep_vars else v.detach()

    return NF4Embedding


def quantize_vocab_nf4(llm: PreTrainedModel, compute_dtype: torch.dtype) -> None:
    """Replace the input embedding and the lm_head by NF4 + double-quant modules, quantised from
    the weights as loaded. Tied weights stay tied: both modules hold the one `Params4bit`
    (the embedding matrix [V, D] and the head's [out=V, in=D] are the same row-major layout,
    so the same blocks of 64 serve a row gather and a matmul)."""
    import bitsandbytes as bnb

    emb, head = llm.get_input_embeddings(), llm.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    if emb.embedding_dim % 64:
        # A row gather needs whole blocks per row. (bnb 0.50.2's CPU dequantise kernel also
        # mis-scales 2-D weights whose rows are not whole blocks: any Linear4bit, not just these.)
        raise ValueError(f"model.llm.quantize_embeddings: hidden size {emb.embedding_dim} is not a "
                         "multiple of the NF4 block size 64")

    def nf4(weight: torch.Tensor):
        return bnb.nn.Params4bit(weight.data, requires_grad=False, blocksize=64, compress_statistics=True,
                                 quant_type="nf4").to(weight.device)  # .to quantises

    new_emb = nf4_embedding_class()(emb.num_embeddings, emb.embedding_dim, dtype=emb.weight.dtype,
                                    quant_type="nf4", device="meta")
    new_emb.weight = nf4(emb.weight)
    new_emb.padding_idx = emb.padding_idx
    llm.set_input_embeddings(new_emb)
    if head is None:
        return
    new_head = bnb.nn.Linear4bit(head.in_features, head.out_features, bias=head.bias is not None,
                                 compute_dtype=compute_dtype, quant_type="nf4", device="meta")
    new_head.weight = new_emb.weight if tied else nf4(head.weight)
    if head.bias is not None:
        new_head.bias = head.bias
    llm.set_output_embeddings(new_head)


def add_lora(llm: PreTrainedModel, cfg: LoraConfig):
    """Wrap the LLM with peft LoRA adapters; the base weights are frozen by peft.
    On a 4-bit model, `target_modules="all-linear"` puts an adapter on every `Linear4bit`
    (QLoRA adapts all linear layers; peft leaves the output head out)."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(llm, peft_cfg)


def kbit_optimizer(params, lr: float, betas: tuple[float, float], weight_decay: float,
                   device) -> torch.optim.Optimizer | None:
    """QLoRA's paged 8-bit AdamW (bitsandbytes `PagedAdamW8bit`) on CUDA; None elsewhere, where
    the caller uses torch's AdamW (paging moves optimizer state between GPU and CPU memory,
    which means nothing on a CPU)."""
    if torch.device(device).type != "cuda":
        return None
    import bitsandbytes as bnb

    return bnb.optim.PagedAdamW8bit(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def weight_bytes(module: torch.nn.Module, only=None) -> int:
    """Bytes of a module's weights: parameters, buffers and bitsandbytes 4-bit quantisation
    state (absmax, nested absmax, code books, offsets), each tensor counted once (tied weights
    share storage). `only(name, submodule) -> bool` restricts the count to some submodules."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(t) -> None:
        nonlocal total
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            return
        seen.add(key)
        total += t.numel() * t.element_size()

    def add_quant_state(qs) -> None:
        if qs is None:
            return
        for name in ("absmax", "code", "offset"):
            add(getattr(qs, name, None))
        add_quant_state(getattr(qs, "state2", None))

    for name, sub in module.named_modules():
        if only is not None and not only(name, sub):
            continue
        for t in sub.parameters(recurse=False):
            add(t)
            add_quant_state(getattr(t, "quant_state", None))
        for t in sub.buffers(recurse=False):
            add(t)
    return total


def adapter_parameters(llm: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The adapter weights peft injected, found through its own declaration of them (every
    tuner layer lists its adapter sub-modules in `adapter_layer_names`), never by name."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    params = []
    for layer in llm.modules():
        if isinstance(layer, BaseTunerLayer):
            for attr in layer.adapter_layer_names:
                params += list(getattr(layer, attr).parameters())
    return params
