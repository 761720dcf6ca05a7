"""Tokens/s of training steps with and without packing, on variable-length conversations.

Same model, same examples, same number of optimizer steps; one variant pads each batch to
its longest example, the other packs examples into rows of `--max-length` tokens (position
ids restart per example; block-diagonal attention). Writes what it measured as JSON:
real tokens/s, padding efficiency (real / computed tokens), seconds per step.

    python benchmarks/packing_throughput.py --steps 20 --out benchmarks/results/packing.json
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch

from mmtune.config import ModelConfig, from_dict
from mmtune.data.collate import ExampleBuilder, collate, pack
from mmtune.data.formats.records import Record
from mmtune.synth.text import WORDS
from mmtune.model import MultimodalLM
from mmtune.train.loop import loss_sum
from mmtune.zoo import resolve_model


def examples(model, n: int, seed: int, lo: int, hi: int):
    """Conversations whose answers are lo..hi words long (a long-tailed mix, like chat data)."""
    rng = random.Random(seed)
    enc = ExampleBuilder(tokenizer=model.tokenizer, template=model.tokenizer.chat_template, media={},
                         max_length=4096)
    out = []
    for i in range(n):
        length = min(hi, lo + int(rng.expovariate(1 / ((hi - lo) / 4))))
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        answer = " ".join(rng.choice(WORDS) for _ in range(length))
        record = Record(id=str(i), messages=[{"role": "user", "content": question},
                                             {"role": "assistant", "content": answer}],
                        media={}, source=f"bench:{i}")
        out.append(enc.encode(record))
    return out


def run(model, batches, steps: int) -> dict:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    real = computed = 0
    t0 = None
    for i, batch in enumerate(batches[: steps + 2]):
        if i == 2:  # two warm-up steps
            t0, real, computed = time.perf_counter(), 0, 0
        loss = loss_sum(model(batch), batch.labels) / max(batch.num_loss_tokens(), 1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        real += int(batch.attention_mask.sum())
        computed += batch.input_ids.numel()
    seconds = time.perf_counter() - t0
    return {"steps": steps, "seconds_per_step": round(seconds / steps, 4),
            "real_tokens_per_s": round(real / seconds, 1),
            "padding_efficiency": round(real / computed, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/packing.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = resolve_model({"preset": "tiny-lm"})
    data["llm"]["arch"].update(hidden_size=256, intermediate_size=688, max_position_embeddings=1024)
    model = MultimodalLM.build(from_dict(ModelConfig, data))
    n = args.batch_size * (args.steps + 2)
    ex = examples(model, n, seed=0, lo=16, hi=190)
    pad = model.tokenizer.pad_token_id
    chunks = [ex[i:i + args.batch_size] for i in range(0, n, args.batch_size)]
    result = {
        "model": {"hidden_size": 256, "layers": 4, "params": sum(p.numel() for p in model.parameters())},
        "data": {"examples_per_step": args.batch_size, "answer_words": [16, 190],
                 "mean_tokens": round(sum(len(e.input_ids) for e in ex) / len(ex), 1)},
        "padded": run(model, [collate(c, pad) for c in chunks], args.steps),
        "packed": run(model, [pack(c, pad, args.max_length) for c in chunks], args.steps),
        "max_length": args.max_length, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(),
    }
    result["packed_over_padded_tokens_per_s"] = round(
        result["packed"]["real_tokens_per_s"] / result["padded"]["real_tokens_per_s"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
