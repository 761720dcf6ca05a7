"""`mmtune plan`: per-GPU memory of each training stage under each engine, before launch.

Parameter counts come from the architecture on the meta device (no weights), the trainable set
from the stage (`set_trainable`, LoRA included). Bytes per parameter, T trainable, F frozen,
P = T + F, N GPUs, c the compute width (2 under bf16/fp16, else 4), s the frozen storage width:

    strategy       weights                 gradients   optimizer (AdamW m, v; + fp32 master)
    ddp            4T + sF                 4T (+4T buckets when N > 1)   8T
    zero2          cP (DeepSpeed casts)    cT / N      12T / N
    zero3          cP / N + gathered       cT / N      12T / N
    fsdp (mmtune)  4P / N + gathered       4T / N      8T / N       (fp32 masters, engine.py)
    *_offload      gathered only on GPU: weights, gradients and optimizer state in CPU memory

"gathered" is 2 units (the running one and the prefetched one) of the largest sharding unit at c
bytes. Activations per GPU for micro-batch b and sequence length S, per token and LLM layer:
c(10h + 4i) bytes stored for backward (Llama-style block, SDPA attention: no S^2 term); with
gradient checkpointing only the layer input (c h) plus one layer recomputed. Logits cost
(c + 8) V bytes per token (the fp32 copy and log-softmax of the loss). Encoders: one layer's
activations when frozen (no_grad), all layers when trained.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

GiB = 1024 ** 3
# In order of preference: DDP when it fits, then mmtune's own FSDP (no extra dependency), then
# DeepSpeed, then offload (slowest).
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3", "fsdp_offload", "zero3_offload")


@dataclass
class Workload:
    """What one training stage asks of each GPU, in parameters and bytes."""

    stage: str
    params: int  # all parameters
    trainable: int
    frozen_bytes: float  # frozen weights as stored (4-bit layers at ~0.5 B per parameter)
    largest_unit: int  # parameters of the largest sharding unit (a decoder layer, an encoder, the root)
    compute_bytes: int  # 2 under bf16/fp16 mixed precision, else 4
    activations: float  # bytes, without gradient checkpointing
    activations_checkpointed: float  # bytes, with it
    micro_batch: int
    seq_len: int
    quantized: bool = False  # 4-bit LLM: DDP only (the engine cannot shard bitsandbytes weights)


def memory(w: Workload, strategy: str, gpus: int) -> dict[str, float]:
    """Bytes per GPU: weights, gradients, optimizer, activations (both ways), totals."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy}: choose from {list(STRATEGIES)}")
    t, p, c, n = w.trainable, w.params, w.compute_bytes, gpus
    gathered = 2 * w.largest_unit * c
    if strategy == "ddp":
        weights, grads, optim = 4 * t + w.frozen_bytes, 4 * t * (2 if n > 1 else 1), 8 * t
    elif strategy == "zero2":
        weights, grads, optim = c * p, c * t / n, 12 * t / n
    elif strategy == "zero3":
        weights, grads, optim = c * p / n + gathered, c * t / n, 12 * t / n
    elif strategy == "fsdp":
        weights, grads, optim = 4 * p / n + gathered, 4 * t / n, 8 * t / n
    else:  # fsdp_offload, zero3_offload: only the gathered units live on the GPU
        weights, grads, optim = gathered, 0.0, 0.0
    state = weights + grads + optim
    return {"weights": weights, "gradients": grads, "optimizer": optim, "activations": w.activations,
            "activations_checkpointed": w.activations_checkpointed, "total": state + w.activations,
            "total_checkpointed": state + w.activations_checkpointed}


# ------------------------------------------------------------------ workloads from configs
def _llm_shape(llm) -> tuple[int, int, int, int]:
    """(hidden, intermediate, layers, vocab) from the transformers config."""
    cfg = llm.config
    h = cfg.hidden_size
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or 4 * h  # OPT: ffn_dim
    return h, inter, cfg.num_hidden_layers, cfg.vocab_size


def llm_activation_bytes(tokens: int, h: int, inter: int, layers: int, vocab: int, c: int,
                         checkpointed: bool) -> float:
    per_layer = c * (10 * h + 4 * inter)  # bytes per token stored for backward
    embed = 3 * c * h  # token embeddings, the scattered copy, the final norm's output
    logits = (c + 8) * vocab
    if checkpointed:
        body = layers * c * h + per_layer  # layer inputs + one layer being recomputed
    else:
        body = layers * per_layer
    return tokens * (body + embed + logits)


def encoder_activation_bytes(tokens: int, hidden: int, params: int, c: int, trained: bool,
                             checkpointed: bool) -> float:
    """A transformer encoder of `params` parameters and width `hidden` over `tokens` tokens
    (all media of the micro-batch); its depth from its size (12 h^2 per standard layer)."""
    layers = max(1, round(params / (12 * hidden * hidden)))
    per_layer = c * 17 * hidden  # Korthikanti et al. 2022: 34 s b h bytes at 16 bit
    if not trained:
        return tokens * (per_layer + c * hidden)  # one layer at a time under no_grad, and the output
    return tokens * (c * hidden * layers + per_layer if checkpointed else per_layer * layers)


def multimodal_workloads(cfg) -> list[Workload]:
    """One Workload per stage of a RecipeConfig (MultimodalLM recipes)."""
    from .data.text.tokenizer import build_word_tokenizer, synthetic_words
    from .llm import load_llm, torch_dtype
    from .model import MultimodalLM, build_projector
    from .registry import ENCODERS
    from .train.engine import decoder_layers
    from .train.params import set_trainable

    m = cfg.model
    c = 2 if cfg.train.mixed_precision in ("bf16", "fp16") else 4
    storage = torch.finfo(torch_dtype(m.llm.dtype)).bits // 8
    workloads = []
    for name, stage in cfg.stages.items():
        with torch.device("meta"):
            llm = load_llm(dataclasses.replace(m.llm, path=None, quantize=None))
            d_llm = llm.get_input_embeddings().embedding_dim
            encoders = {k: ENCODERS.get(e.type)(dataclasses.replace(e, path=None)) for k, e in m.encoders.items()}
            projectors = {k: build_projector(k, m.projectors[k], encoders[k], d_llm) for k in encoders}
            # The tokenizer only names placeholder ids here; the synthetic one needs no files.
            model = MultimodalLM(m, llm, encoders, projectors, build_word_tokenizer(synthetic_words()))
            set_trainable(model, stage.train, f"stages.{name}.train")
        params = list(model.parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        layer_params = sum(p.numel() for layer in decoder_layers(model.llm) for p in layer.parameters()
                           if not p.requires_grad)
        frozen = total - trainable
        if m.llm.quantize:  # 4-bit decoder layers (NF4 + double-quantised scales: ~4.13 bits)
            frozen_bytes = layer_params * 4.13 / 8 + (frozen - layer_params) * storage
        else:
            frozen_bytes = frozen * storage
        units = [sum(p.numel() for p in layer.parameters()) for layer in decoder_layers(model.llm)]
        units += [sum(p.numel() for p in part.parameters()) for part in (*encoders.values(), *projectors.values())]
        units.append(total - sum(units))  # the root: embeddings, lm_head, norms
        b, s = stage.batch_size, cfg.train.max_length
        h, inter, layers, vocab = _llm_shape(model.llm)
        acts = {}
        for ckpt in (False, True):
            a = llm_activation_bytes(b * s, h, inter, layers, vocab, c, ckpt)
            for k, enc in encoders.items():
                enc_params = sum(p.numel() for p in enc.parameters())
                enc_tokens = b * enc.num_tokens()  # one medium per row per modality (an upper bound)
                a += encoder_activation_bytes(enc_tokens, enc.hidden_size, enc_params, c,
                                              any(p.requires_grad for p in enc.parameters()), ckpt)
            acts[ckpt] = a
        workloads.append(Workload(name, total, trainable, frozen_bytes, max(units), c, acts[False], acts[True], b, s,
                                  quantized=bool(m.llm.quantize)))
    return workloads


def edit_workloads(cfg) -> list[Workload]:
    """InstructPix2Pix: a trained UNet, frozen VAE and text encoder (counts as `mmtune zoo`).
    UNet activations: ~60 stored values per channel-pixel of each resolution level (ResNet and
    attention blocks, down and up paths), a rough figure for SD-style UNets."""
    from .diffusion.components import count_parameters

    counts = count_parameters(cfg.model)
    (name, stage), = cfg.stages.items()
    batch, resolution = stage.batch_size, cfg.edit.resolution
    c = 2 if cfg.train.mixed_precision in ("bf16", "fp16") else 4
    unet = cfg.model.unet
    side = resolution // 8  # latent side (VAE downsamples 8x)
    level_values = sum((side // 2 ** i) ** 2 * ch for i, ch in enumerate(unet["block_out_channels"]))
    acts = batch * c * 60 * level_values
    # The frozen VAE encodes the batch under no_grad: its widest activation at full resolution.
    acts += batch * c * resolution ** 2 * cfg.model.vae["block_out_channels"][0] * 2
    frozen = counts["vae"] + counts["text_encoder"]
    return [Workload(name, counts["total"], counts["unet"], frozen * 4, counts["unet"], c, acts, acts * 0.5,
                     batch, resolution)]


# ------------------------------------------------------------------ the command
def parse_size(text: str) -> float:
    match = re.fullmatch(r"\s*([\d.]+)\s*(GB|GiB|G|MB|MiB|M)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"--gpu-memory {text!r}: expected e.g. 80GB or 141GiB")
    value, unit = float(match.group(1)), (match.group(2) or "GB").upper()
    scale = {"GB": 1e9, "G": 1e9, "GIB": GiB, "MB": 1e6, "M": 1e6, "MIB": 1024 ** 2}[unit]
    return value * scale


def load_any(config: str, recipe: str | None, overrides: list[str]):
    """`recipe/name` (packaged) or `--recipe R path.yaml`; returns (recipe, config, workloads)."""
    from . import recipes  # noqa: F401  (fills RECIPES)
    from .config import RecipeConfig
    from .registry import RECIPES

    if recipe is None:
        if "/" not in config or Path(config).suffix in (".yaml", ".yml"):
            raise SystemExit(f"mmtune plan {config}: name a packaged config as RECIPE/NAME "
                             "(e.g. llava/llava-1.5-7b) or pass --recipe with a YAML path")
        recipe, config = config.split("/", 1)
    cfg = RECIPES.get(recipe).load_config(config, overrides)
    # A MultimodalLM recipe, or a diffusers one (InstructPix2Pix): the parts differ, so the count does.
    return recipe, config, multimodal_workloads(cfg) if isinstance(cfg, RecipeConfig) else edit_workloads(cfg)


def plan(workloads: list[Workload], gpus: int, gpu_bytes: float, strategies=STRATEGIES) -> dict:
    """Per stage and strategy: the memory rows and whether the stage fits (with / without
    gradient checkpointing); `fits`: strategies where every stage fits without it."""
    rows, fits, fits_ckpt = [], [], []
    if any(w.quantized for w in workloads):
        strategies = [s for s in strategies if s == "ddp"]
    for s in strategies:
        ok = ok_ckpt = True
        for w in workloads:
            mem = memory(w, s, gpus)
            rows.append({"stage": w.stage, "strategy": s, **mem,
                         "fits": mem["total"] <= gpu_bytes, "fits_checkpointed": mem["total_checkpointed"] <= gpu_bytes})
            ok &= rows[-1]["fits"]
            ok_ckpt &= rows[-1]["fits_checkpointed"]
        if ok:
            fits.append(s)
        if ok_ckpt:
            fits_ckpt.append(s)
    return {"gpus": gpus, "gpu_bytes": gpu_bytes, "rows": rows, "fits": fits, "fits_checkpointed": fits_ckpt,
            "workloads": [dataclasses.asdict(w) for w in workloads]}


def launch_command(strategy: str, gpus: int, recipe: str, config: str) -> str:
    from .recipes.launch import path

    return (f"accelerate launch --config_file {path(strategy)} --num_processes {gpus} "
            f"-m mmtune.cli train {recipe} --config {config} --output-dir RUN --data DATA")


def _run(args) -> None:
    recipe, config, workloads = load_any(args.config, args.recipe, args.overrides)
    strategies = [args.strategy] if args.strategy else STRATEGIES
    result = plan(workloads, args.gpus, args.gpu_memory, strategies)
    best = (result["fits"] or result["fits_checkpointed"] or [None])[0]
    result["launch"] = launch_command(best, args.gpus, recipe, config) if best else None
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{recipe}/{config} on {args.gpus} GPU(s) x {args.gpu_memory / 1e9:.0f} GB, GiB per GPU "
          f"(activations: micro-batch x sequence length; 'ckpt': with gradient checkpointing)")
    head = f"{'stage':<10}{'strategy':<15}{'weights':>9}{'grads':>8}{'optim':>8}{'activ':>8}{'ckpt':>8}{'total':>8}{'ckpt':>8}  fits"
    print(head)
    for r in result["rows"]:
        verdict = "yes" if r["fits"] else "with ckpt" if r["fits_checkpointed"] else "no"
        print(f"{r['stage']:<10}{r['strategy']:<15}" + "".join(
            f"{r[k] / GiB:>{8 if k != 'weights' else 9}.1f}" for k in
            ("weights", "gradients", "optimizer", "activations", "activations_checkpointed", "total", "total_checkpointed"))
            + f"  {verdict}")
    print(f"fits: {', '.join(result['fits']) or 'none'}; with gradient checkpointing: "
          f"{', '.join(result['fits_checkpointed']) or 'none'}")
    print(f"launch: {result['launch']}" if best else "nothing fits: more GPUs, a smaller micro-batch, or offload")


def add_plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="per-GPU memory of a config under DDP / FSDP / ZeRO, and what fits")
    p.add_argument("config", help="RECIPE/NAME of a packaged config (llava/llava-1.5-7b), or a YAML path with --recipe")
    p.add_argument("--recipe", help="recipe of a YAML config path")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu-memory", type=parse_size, default=parse_size("80GB"), help="e.g. 80GB, 141GB")
    p.add_argument("--strategy", choices=STRATEGIES)
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="key.path=value config overrides")
    p.set_defaults(fn=_run)
