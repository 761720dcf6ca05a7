"""`mmtune ...`: train, eval, chat, zoo, data synth, demo."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .diffusion.cli import add_edit_parser
from .export import add_export_parser
from .plan import add_plan_parser


def _train(args) -> None:
    from . import recipes  # noqa: F401  (fills RECIPES)
    from .recipes.common import load_recipe_config
    from .registry import RECIPE_CONFIGS, RECIPES

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data_dir={args.data}")
    if args.recipe in RECIPE_CONFIGS:  # a recipe with its own config type (instruct_pix2pix)
        cfg = RECIPE_CONFIGS.get(args.recipe)(args.config, overrides)
    else:
        cfg = load_recipe_config(args.recipe, args.config, overrides)
    stages = [args.stage] if args.stage else None
    summary = RECIPES.get(args.recipe)(cfg, args.output_dir, stages=stages, resume=not args.no_resume)
    if "eval" in summary:
        _print_eval(summary["eval"])


def _load_run(run: str):
    from .config import RecipeConfig, from_dict, load_yaml
    from .model import MultimodalLM

    run_dir = Path(run)
    if not (run_dir / "model" / "mmtune_config.json").exists():
        raise SystemExit(f"{run_dir} holds no trained model (expected {run_dir}/model/mmtune_config.json)")
    cfg = from_dict(RecipeConfig, load_yaml(run_dir / "config.yaml"), f"{run_dir / 'config.yaml'}: ")
    return cfg, MultimodalLM.from_pretrained(run_dir / "model")


def _eval(args) -> None:
    from .diffusion.cli import eval_edit_run, is_edit_run
    from .recipes.common import evaluate_run, write_json

    if is_edit_run(args.run):  # a diffusers pipeline: edit success, not QA accuracy
        eval_edit_run(args.run, args.data)
        return
    cfg, model = _load_run(args.run)
    data = Path(args.data) if args.data else Path(cfg.data_dir or ".") / cfg.eval.data
    result = evaluate_run(model, cfg, data)
    write_json(Path(args.run) / "eval.json", result)
    _print_eval(result)


def _print_eval(result: dict) -> None:
    if "edit_success" in result:  # instruct_pix2pix's eval.json
        from .diffusion.evaluate import print_edit_eval

        print_edit_eval(result)
        return

    def num(x) -> str:
        return "-" if x is None else f"{x:.3f}"

    print(f"{'question type':<16}{'n':>5}{'with media':>12}{'blank media':>13}{'chance':>8}")
    for qtype, r in result["by_type"].items():
        print(f"{qtype:<16}{r['n']:>5}{num(r['accuracy']):>12}{num(r['blank_media_accuracy']):>13}"
              f"{num(r['chance']):>8}")
    sep = ", ".join(result.get("reported_separately", [])) or "none"
    print(f"{'overall':<16}{result['n']:>5}{num(result['accuracy']):>12}"
          f"{num(result['blank_media_accuracy']):>13}{num(result['chance']):>8}   "
          f"(splits reported separately: {sep})")
    for probe in result.get("probes", []):  # e.g. shuffled_frames: media altered, same questions
        print(f"{probe.replace('_', ' ')}: {num(result[f'{probe}_accuracy'])}")


def answer(model, cfg, image: str, question: str, max_new_tokens: int = 32) -> str:
    from .data.collate import collate
    from .data.formats.records import parse_record
    from .recipes.common import example_encoder

    record = parse_record({"id": "chat", "messages": [{"role": "user", "content": f"<image>\n{question}"}],
                           "images": [str(Path(image).resolve())]}, "chat", Path("."))
    enc = example_encoder(model, cfg, None)
    batch = collate([enc.encode_prompt(record)], model.tokenizer.pad_token_id, left_pad=True)
    new = model.generate(batch, max_new_tokens=max_new_tokens)
    return model.tokenizer.decode(new[0], skip_special_tokens=True).strip()


def _chat(args) -> None:
    cfg, model = _load_run(args.run)
    print(answer(model, cfg, args.image, args.question))


def _zoo(args) -> None:
    from .diffusion.cli import edit_zoo_rows, print_edit_zoo
    from .zoo import zoo_table

    rows = zoo_table()
    edit_rows = edit_zoo_rows()  # diffusers image-editing presets: other parts, own table
    if args.json:
        print(json.dumps(rows + edit_rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows) + 2
    print(f"{'preset':<{width}}{'total':>16}{'llm':>16}{'encoders':>14}{'projectors':>14}")
    for r in rows:
        enc = sum(v for k, v in r.items() if k.startswith("encoder."))
        proj = sum(v for k, v in r.items() if k.startswith("projector."))
        print(f"{r['name']:<{width}}{r['total']:>16,}{r['llm']:>16,}{enc:>14,}{proj:>14,}")
    print_edit_zoo(edit_rows)


def _synth(args) -> None:
    from .synth import av, edits, motion, shapes, text, tones

    tasks = {"shapes": shapes.generate, "text": text.generate, "motion": motion.generate,
             "tones": tones.generate, "av": av.generate, "edits": edits.generate}
    kwargs = {"skills": tuple(args.skills.split(","))} if args.skills else {}
    if kwargs and args.task != "text":
        raise SystemExit("--skills applies to `data synth text` only")
    meta = tasks[args.task](args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed, **kwargs)
    print(json.dumps(meta["counts"], indent=1))
    print(f"wrote {args.out}")


def _demo(args) -> None:
    from .synth.shapes import generate
    from .recipes.common import load_recipe_config
    from .recipes.llava import main as llava

    out = Path(args.out)
    t0 = time.perf_counter()
    print(f"1/3 synthesising shapes data in {out / 'data'}")
    generate(out / "data", n_train=4000, n_test=600, seed=0)
    print("2/3 training tiny LLaVA: stage pretrain (projector on captions), stage finetune (projector + LLM)")
    cfg = load_recipe_config("llava", "tiny", [f"data_dir={out / 'data'}", *args.overrides])
    summary = llava(cfg, out / "run", resume=False)
    print(f"3/3 held-out questions on images the model has never seen ({time.perf_counter() - t0:.0f}s so far)")
    _print_eval(summary["eval"])
    cfg2, model = _load_run(str(out / "run"))
    print("\nsample chat (held-out images):")
    for ex in summary["eval"]["examples"][:4]:
        image = ex["media"]["image"][0]
        question = ex["question"].replace("<image>", "").strip()
        print(f"  mmtune chat {out / 'run'} --image {image} \"{question}\"\n    -> {answer(model, cfg2, image, question)}"
              f"   (truth: {ex['target']})")
    print(f"\nrun directory: {out / 'run'} (config.yaml, metrics.jsonl, checkpoints, model/, eval.json); "
          f"total {time.perf_counter() - t0:.0f}s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmtune", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe")
    t.add_argument("recipe", help="recipe name, e.g. llava")
    t.add_argument("--config", default="tiny", help="packaged config name or YAML path")
    t.add_argument("--output-dir", required=True)
    t.add_argument("--data", help="data directory (sets data_dir)")
    t.add_argument("--stage", help="run only this stage")
    t.add_argument("--no-resume", action="store_true", help="ignore checkpoints in the output dir")
    t.add_argument("overrides", nargs="*", help="key.path=value config overrides")
    t.set_defaults(fn=_train)

    e = sub.add_parser("eval", help="evaluate a run on held-out questions, with and without media")
    e.add_argument("run")
    e.add_argument("--data", help="JSONL of questions (default: the run's eval data)")
    e.set_defaults(fn=_eval)

    c = sub.add_parser("chat", help="ask a trained run about an image")
    c.add_argument("run")
    c.add_argument("--image", required=True)
    c.add_argument("question")
    c.set_defaults(fn=_chat)

    z = sub.add_parser("zoo", help="list presets with parameter counts (meta device)")
    z.add_argument("--json", action="store_true")
    z.set_defaults(fn=_zoo)

    d = sub.add_parser("data", help="data tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write a synthetic task")
    s.add_argument("task", choices=["shapes", "text", "motion", "tones", "av", "edits"])
    s.add_argument("--skills", help="text only: comma-separated, from reverse,copy,recall (default reverse)")
    s.add_argument("--out", required=True)
    s.add_argument("--n-train", type=int, default=4000)
    s.add_argument("--n-test", type=int, default=600)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_synth)

    m = sub.add_parser("demo", help="synthesise data, train tiny LLaVA, evaluate, chat (~5 min on CPU)")
    m.add_argument("--out", default="runs/demo")
    m.add_argument("overrides", nargs="*", help="key.path=value overrides of the tiny config")
    m.set_defaults(fn=_demo)
    add_export_parser(sub)
    add_edit_parser(sub)
    add_plan_parser(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    # key=value overrides may stand anywhere after the command, also between options.
    args, rest = parser.parse_known_args(argv)
    extra = [a for a in rest if "=" in a and not a.startswith("-")]
    if len(extra) != len(rest) or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    args.fn(args)


if __name__ == "__main__":
    main(sys.argv[1:])
