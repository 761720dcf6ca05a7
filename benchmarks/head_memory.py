"""Peak memory of one training step: full logits vs the output head only at labels.

A Llama (hidden 256, 2 layers) with a 32k and a 150k vocabulary (Llama-2 / Qwen-sized
heads), batch 4 x 512 tokens of which the last 40% of each row carry labels (prompt and image
positions carry none). Each (vocabulary, variant) runs in its own process: peak RSS after
one forward + backward, minus the RSS before it, is the step's own memory.

    python benchmarks/head_memory.py --out benchmarks/results/head_memory.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

VOCABS = (32_000, 150_000)


def child(vocab: int, head_at_labels: bool, rows: int, length: int) -> dict:
    import psutil

    from mmtune.batch import IGNORE, Batch
    from mmtune.config import ModelConfig, from_dict
    from mmtune.model import MultimodalLM
    from mmtune.train.head import head_loss_sum
    from mmtune.train.loop import loss_sum

    torch.manual_seed(0)
    arch = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": vocab,
            "max_position_embeddings": 1024, "tie_word_embeddings": False}
    model = MultimodalLM.build(from_dict(ModelConfig, {"llm": {"arch": arch}, "tokenizer": {"type": "synthetic"}}))
    ids = torch.randint(10, 80, (rows, length))
    labels = ids.clone()
    labels[:, : int(length * 0.6)] = IGNORE
    batch = Batch(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    loss = head_loss_sum(model, batch) if head_at_labels else loss_sum(model(batch), batch.labels)
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"vocab": vocab, "head_at_labels": head_at_labels, "peak_rss_mib": round(peak / 2**20, 1),
            "step_memory_mib": round((peak - before) / 2**20, 1), "step_seconds": round(seconds, 3),
            "loss": round(loss.item() / batch.num_loss_tokens(), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/head_memory.json"))
    ap.add_argument("--child", nargs=2, metavar=("VOCAB", "HEAD_AT_LABELS"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1] == "1", args.rows, args.length)))
        return
    result = {"rows": args.rows, "length": args.length, "supervised_share": 0.4, "hidden": 256, "layers": 2,
              "threads": torch.get_num_threads(), "loadavg": list(os.getloadavg()), "runs": []}
    for vocab in VOCABS:
        pair = {}
        for head in (False, True):
            out = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--length", str(args.length),
                                  "--child", str(vocab), str(int(head))], check=True, capture_output=True, text=True)
            pair[head] = json.loads(out.stdout.strip().splitlines()[-1])
            result["runs"].append(pair[head])
        assert abs(pair[True]["loss"] - pair[False]["loss"]) < 1e-3, pair  # same loss, less memory
        result[f"step_memory_ratio_{vocab}"] = round(pair[True]["step_memory_mib"] / pair[False]["step_memory_mib"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
