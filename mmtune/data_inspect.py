"""`mmtune data inspect DATA`: check a dataset and its chat template before paying for a run.

For each stage of a recipe config (or a trained run's config), on that stage's data file:
how many records parse, which are bad (file:line and why), how many media each modality has
and how many of those files are missing; then a few training examples rendered exactly as
the stage tokenizes them, with the tokens that carry loss highlighted ([brackets], green on
a terminal) and each medium's run of placeholder tokens shown as `<image>x16`.
"""
from __future__ import annotations

import dataclasses

import argparse
import sys
from collections import Counter
from pathlib import Path

GREEN, RESET = "\033[32m", "\033[0m"


def render_example(tokenizer, input_ids: list[int], labels: list[int], placeholder_ids: dict[str, int],
                   colour: bool = False) -> str:
    """The example's text in runs: supervised runs marked, placeholder runs collapsed."""
    from .batch import IGNORE

    names = {i: f"<{m}>" for m, i in placeholder_ids.items()}
    runs: list[tuple[str, list[int]]] = []  # (kind, ids): kind "loss", "text" or a placeholder name
    for tok, lab in zip(input_ids, labels):
        kind = names.get(tok) or ("loss" if lab != IGNORE else "text")
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(tok)
        else:
            runs.append((kind, [tok]))
    # Each run's text is the difference of decoded prefixes, so the spaces a tokenizer puts
    # between tokens (or inside them) survive the split into runs.
    parts, end, before = [], 0, ""
    for kind, ids in runs:
        end += len(ids)
        upto = tokenizer.decode(input_ids[:end])
        text, before = upto[len(before):], upto
        if kind == "loss":
            parts.append(f"{GREEN}{text}{RESET}" if colour else f"[{text}]")
        elif kind == "text":
            parts.append(text)
        else:
            parts.append(f"{' ' if text.startswith(' ') else ''}{kind}x{len(ids)}")
    return "".join(parts)


def media_counts(records) -> tuple[Counter, Counter]:
    """Media per modality, and how many of those files do not exist."""
    total, missing = Counter(), Counter()
    for r in records:
        for modality, paths in r.media.items():
            total[modality] += len(paths)
            missing[modality] += sum(not Path(p).is_file() for p in paths)
    return total, missing


def inspect_data(data: str | Path, cfg, model, n: int = 3, out=None, colour: bool = False) -> dict:
    """Print the report for every stage whose data file exists; return the counts per file."""
    out = out or sys.stdout
    from .batch import IGNORE
    from .data.collate import Dropped
    from .data.formats.records import read_records
    from .data.text.instructions import split_turns
    from .recipes.common import example_builder, stage_data

    report = {}
    for name, stage in cfg.stages.items():
        path = stage_data(dataclasses.replace(cfg, data_dir=str(data)), stage)
        if not path.is_file():
            print(f"[{name}] {path}: no such file (stage data: {stage.data})", file=out)
            continue
        records, bad = read_records(path, skip_bad=True)
        total, missing = media_counts(records)
        media = ", ".join(f"{m} {total[m]} ({missing[m]} missing)" for m in sorted(total)) or "none"
        print(f"[{name}] {path}: {len(records)} records, {len(bad)} bad; media: {media}", file=out)
        for problem in bad[:5]:
            print(f"  bad: {problem}", file=out)
        if stage.task == "single_turn":
            records = [turn for r in records for turn in split_turns(r)]
        enc = example_builder(model, cfg, stage.chat_template, caption_task=stage.task == "caption")
        shown, dropped = 0, []
        for record in records:
            if shown >= n:
                break
            if any(not Path(p).is_file() for paths in record.media.values() for p in paths):
                continue  # counted above; encoding it would stop at the missing file
            example = enc.encode(record)
            if isinstance(example, Dropped):
                dropped.append(f"{example.id}: {example.reason}")
                continue
            shown += 1
            supervised = sum(lab != IGNORE for lab in example.labels)
            print(f"  --- {record.source} ({len(example.input_ids)} tokens, {supervised} with loss"
                  f"{', truncated' if example.truncated else ''}; template {stage.chat_template or 'the tokenizer'}'s)",
                  file=out)
            print("  " + render_example(model.tokenizer, example.input_ids, example.labels,
                                        model.placeholder_ids, colour).replace("\n", "\n  "), file=out)
        for reason in dropped[:5]:
            print(f"  dropped (nothing to train on): {reason}", file=out)
        report[name] = {"file": str(path), "records": len(records), "bad": len(bad),
                        "media": dict(total), "missing_media": dict(missing), "dropped_of_shown": len(dropped)}
    return report


def _inspect(args) -> None:
    from .recipes.common import load_run
    from .model import MultimodalLM
    from .recipes.common import load_recipe_config

    if args.run:
        cfg, model = load_run(args.run)
    else:
        cfg = load_recipe_config(args.recipe, args.config, list(args.overrides))
        model = MultimodalLM.build(cfg.model)
    cfg.train.on_bad_sample = "skip"  # count bad samples here instead of stopping at the first
    inspect_data(args.data, cfg, model, args.n, colour=sys.stdout.isatty())


def add_inspect_parser(dsub) -> None:
    p = dsub.add_parser("inspect", help="counts, bad records and rendered examples with the loss tokens marked",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="data folder (each stage's file in it) or one JSONL file")
    p.add_argument("--recipe", default="llava", help="recipe whose config renders the data (default llava)")
    p.add_argument("--config", default="tiny", help="packaged config name or YAML path (default tiny)")
    p.add_argument("--run", help="render with a trained run's tokenizer and config instead")
    p.add_argument("-n", type=int, default=2, help="examples shown per stage (default 2)")
    p.add_argument("overrides", nargs="*", help="key.path=value config overrides")
    p.set_defaults(fn=_inspect)
