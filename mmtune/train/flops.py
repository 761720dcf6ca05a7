"""Model FLOPs of a training step and the device's peak, for MFU (DESIGN.md section 7).

Per token a weight costs 6N when trained (forward, input gradient, weight gradient), 4N when
frozen but gradients pass through it to something trainable upstream (forward + input
gradient), 2N when frozen with nothing trainable upstream (forward only), 0 when its output
comes from the feature cache. Counted per part of a MultimodalLM, from `requires_grad`:

    encoder   N_enc  x encoder tokens per medium   (misses only, with a feature cache)
    projector N_proj x tokens it hands the LLM
    LLM body  N_body x real tokens (image tokens count; the input embedding is a lookup: 0)
    LLM head  N_head x supervised positions (the only ones whose logits the loss needs)
    attention 2 d T^2 per layer for each causal sequence of T real tokens, forward; x3 with
              gradients flowing (no weights, so no weight gradient)

Padding is not counted: it is computed, but it is not model work. `padding_efficiency`
(real / computed tokens) sits beside MFU to say where the gap goes.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from ..attention import segment_starts
from ..batch import IGNORE, Batch

# bf16 dense tensor-core peaks from the vendors' spec sheets (FLOP/s, no sparsity).
GPU_BF16_PEAK = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 NVL": 835e12,
    "H100 PCIe": 756e12, "H100": 756e12, "GH200": 989e12, "B200": 2250e12, "B100": 1750e12,
    "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12,
    "A10G": 70e12, "A10": 125e12, "A6000": 155e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
    "MI300X": 1307e12, "MI250X": 383e12,
}


def _params(module: torch.nn.Module | None, trained: bool) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad == trained)


def _trainable(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class FlopCounter:
    """Training FLOPs of one batch through a MultimodalLM, by the rules above."""

    def __init__(self, model) -> None:
        self.model = model
        llm = model.llm
        cfg = llm.config.get_text_config()
        head = llm.get_output_embeddings()
        embed = llm.get_input_embeddings()
        upstream = False  # is anything before the current part trainable?
        self.medium = {}  # modality -> FLOPs per medium (encoder, projector)
        self.encoder_per_medium = {}  # modality -> frozen encoder weights' FLOPs per medium
        for m, enc in model.encoders.items():
            n_tok = enc.num_tokens()
            k = model.tokens_per_medium(m)
            enc_trained, proj = _trainable(enc), model.projectors[m]
            frozen_enc = 2 * _params(enc, False) * n_tok  # nothing is upstream of an encoder
            self.encoder_per_medium[m] = frozen_enc
            proj_frozen_mult = 4 if enc_trained else 2
            self.medium[m] = (6 * _params(enc, True) * n_tok + 6 * _params(proj, True) * k
                              + proj_frozen_mult * _params(proj, False) * k)
            upstream = upstream or enc_trained or _trainable(proj)
        grads = upstream or _trainable(llm)
        head_ids = {id(p) for p in head.parameters()} | {id(p) for p in embed.parameters()}
        body_trained = sum(p.numel() for p in llm.parameters() if p.requires_grad and id(p) not in head_ids)
        body_frozen = sum(p.numel() for p in llm.parameters() if not p.requires_grad and id(p) not in head_ids)
        self.per_token = 6 * body_trained + (4 if grads else 2) * body_frozen
        self.per_label = 6 * _params(head, True) + (4 if grads else 2) * _params(head, False)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.attn_coeff = 2 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * (3 if grads else 1)
        self._misses = self._cache_misses()

    def _cache_misses(self) -> dict[str, int]:
        return {m: c.misses for m, c in self.model.feature_caches.items()}

    def sequence_lengths(self, batch: Batch) -> list[int]:
        """Real tokens of each causal sequence: each row, or each packed example."""
        if batch.position_ids is None:
            return batch.attention_mask.sum(dim=1).tolist()
        starts = segment_starts(batch.position_ids).tolist()
        real = batch.attention_mask.reshape(-1)
        return [e - s for s, e in zip(starts[:-1], starts[1:]) if int(real[s])]

    def batch_flops(self, batch: Batch) -> float:
        tokens = int(batch.attention_mask.sum())
        labels = int((batch.labels[:, 1:] != IGNORE).sum())
        attention = sum(self.attn_coeff * t * t for t in self.sequence_lengths(batch))
        media = 0.0
        for m, per_row in batch.media_per_row.items():
            n = sum(per_row)
            media += n * self.medium[m]
            if not self._cached(m):  # cached: counted from the cache's misses instead
                media += n * self.encoder_per_medium[m]
        return tokens * self.per_token + labels * self.per_label + attention + media

    def _cached(self, modality: str) -> bool:
        # encode_media reads the cache only for an encoder with nothing trainable
        return modality in self.model.feature_caches and not _trainable(self.model.encoders[modality])

    def take_cache_flops(self) -> float:
        """Frozen-encoder FLOPs the feature caches spent since the last call (their misses)."""
        now = self._cache_misses()
        spent = sum((now[m] - self._misses.get(m, 0)) * self.encoder_per_medium[m] for m in now)
        self._misses = now
        return spent


def _cache_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "mmtune" / "peak_flops.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_cpu_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 10) -> float:
    """Best of `repeats` n x n matmuls at the current thread count (FLOP/s), timed in CPU
    seconds per thread: on a shared machine wall time also counts waiting for a core, and a
    peak measured that way would be too low (MFU above 1)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up: first call picks kernels
    threads = torch.get_num_threads()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        a @ b
        best = min(best, (time.process_time() - t0) / threads)
    return 2 * n ** 3 / max(best, 1e-9)


def device_peak(device: torch.device, mixed_precision: str) -> float:
    """FLOP/s the device can do at most: the spec sheet's bf16 dense peak on a GPU; on CPU a
    matmul in the run's compute dtype, measured once per machine and thread count and
    cached in ~/.cache/mmtune/peak_flops.json."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key in sorted(GPU_BF16_PEAK, key=len, reverse=True):  # most specific name first
            if key in name:
                return GPU_BF16_PEAK[key]
        raise ValueError(f"no bf16 peak known for GPU {name!r}: add it to mmtune.train.flops.GPU_BF16_PEAK")
    dtype = torch.bfloat16 if mixed_precision in ("bf16", "fp16") else torch.float32
    key = f"v3|{_cpu_name()}|threads={torch.get_num_threads()}|{dtype}|torch={torch.__version__}"
    path = _cache_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = measure_cpu_peak(dtype)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent runs never read half a file
            tmp.write_text(json.dumps(known, indent=1))
            os.replace(tmp, path)
        except OSError:  # a read-only home still gets its MFU, measured per run
            pass
    return known[key]


class MFUMeter:
    """What the loop calls: `add(micro_batches)` after each step, `take()` at each logged
    step (MFU since the previous take), `summary()` at the end of a stage."""

    def __init__(self, model, mixed_precision: str, device: torch.device) -> None:
        self.counter = FlopCounter(model)
        self.peak = device_peak(torch.device(device), mixed_precision)
        self.t_start = self.t_last = time.perf_counter()
        self.flops = self.flops_total = 0.0

    def add(self, batches: list[Batch]) -> None:
        f = sum(self.counter.batch_flops(b) for b in batches) + self.counter.take_cache_flops()
        self.flops += f
        self.flops_total += f

    def take(self) -> dict:
        """`mfu` since the previous take, and this process's CPU seconds so far (on a shared
        machine, wall time includes waiting for a core; CPU time says how much ran)."""
        now = time.perf_counter()
        mfu = self.flops / max(now - self.t_last, 1e-9) / self.peak
        self.flops, self.t_last = 0.0, now
        return {"mfu": round(mfu, 5), "process_cpu_s": round(time.process_time(), 3)}

    def summary(self) -> dict:
        seconds = max(time.perf_counter() - self.t_start, 1e-9)
        return {"mfu": round(self.flops_total / seconds / self.peak, 5), "model_flops": self.flops_total, "peak_flops_per_s": self.peak}
