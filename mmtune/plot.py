"""`mmtune plot RUN`: RUN/curves.png from metrics.jsonl (and eval.json when the run has one).

One panel per metric (loss, learning rate, throughput, gradient norm), one line per stage
over that stage's steps; with eval.json, held-out accuracy per question type with the medium
and with it blanked, against chance.
"""
from __future__ import annotations

import json
from pathlib import Path

# (metrics.jsonl key, panel title); runs log tokens/s (language) or samples/s (image editing)
PANELS = (("loss", "training loss"), ("lr", "learning rate"), ("tokens_per_s", "tokens / s"),
          ("samples_per_s", "samples / s"), ("grad_norm", "gradient norm"))


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"{run_dir} has no metrics.jsonl (is it a run directory?)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}:{n}: not JSON ({e.msg})") from None
    return rows


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    stages = list(dict.fromkeys(r.get("stage", "train") for r in rows))
    panels = [(key, title) for key, title in PANELS if any(key in r for r in rows)]
    eval_file = run_dir / "eval.json"
    result = json.loads(eval_file.read_text()) if eval_file.exists() else None
    n = len(panels) + (result is not None and "by_type" in result)
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(5 * cols, 3.6 * ((n + cols - 1) // cols)),
                             squeeze=False)
    flat = axes.ravel()
    for ax, (key, title) in zip(flat, panels):
        for stage in stages:
            pts = [(r["step"], r[key]) for r in rows if r.get("stage", "train") == stage and key in r]
            if pts:
                ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=stage)
        ax.set_title(title)
        ax.set_xlabel("step")
        if key == "loss":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if result is not None and "by_type" in result:
        _accuracy_panel(flat[len(panels)], result)
    for ax in flat[n:]:
        ax.axis("off")
    fig.suptitle(f"{run_dir}")
    fig.tight_layout()
    path = Path(out) if out else run_dir / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _accuracy_panel(ax, result: dict) -> None:
    types = list(result["by_type"])
    x = range(len(types))
    width = 0.27
    for i, (key, label) in enumerate((("accuracy", "with media"), ("blank_media_accuracy", "media blanked"),
                                      ("chance", "chance"))):
        ax.bar([j + (i - 1) * width for j in x], [result["by_type"][t].get(key) or 0 for t in types],
               width, label=label)
    ax.set_xticks(list(x), types, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(f"held-out accuracy (overall {result['accuracy']:.3f})")
    ax.legend(fontsize=8)


def _plot(args) -> None:
    print(f"wrote {plot_run(args.run, args.out)}")


def add_plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="draw a run's training curves (and eval accuracy) to RUN/curves.png")
    p.add_argument("run")
    p.add_argument("--out", help="output PNG (default RUN/curves.png)")
    p.set_defaults(fn=_plot)
