"""`mmtune ...`: train, eval, chat, plot, serve, zoo, data synth|convert|inspect, demo, export, edit."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__
from .chat import add_chat_parser, answer
from .diffusion.cli import add_edit_parser
from .data.formats.commands import add_convert_parser
from .data_inspect import add_inspect_parser
from .export import add_export_parser, add_import_parser, export_hint
from .plan import add_plan_parser
from .plot import add_plot_parser, plot_run
from .quiet import quiet_libraries, recipes_epilog
from .serve import add_serve_parser


def _recipes():
    from . import recipes  # noqa: F401  (fills RECIPES)
    from .registry import RECIPES

    return RECIPES


def _train(args) -> None:
    recipe = _recipes().get(args.recipe)
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data_dir={args.data}")
    cfg = recipe.load_config(args.config, overrides)
    stages = [args.stage] if args.stage else None
    summary = recipe(cfg, args.output_dir, stages=stages, resume=not args.no_resume, fresh=args.fresh)
    if "eval" in summary:
        recipe.print_eval(summary["eval"])


def _eval(args) -> None:
    from .train.run import recipe_of

    name = recipe_of(args.run)
    if name is None:
        raise FileNotFoundError(f"{args.run} is not a run folder (no run.json): give the --output-dir of `mmtune train`")
    recipe = _recipes().get(name)
    recipe.print_eval(recipe.evaluate(Path(args.run), args.data))


def _zoo(args) -> None:
    from .zoo import zoo_table

    rows = zoo_table()
    recipes = _recipes()
    extra = [r for name in recipes for r in (recipes.get(name).zoo_rows or list)()]  # e.g. image editing
    if args.json:
        print(json.dumps(rows + extra, indent=2))
        return
    width = max(len(r["name"]) for r in rows + extra) + 2
    print(f"{'preset':<{width}}{'total':>16}{'llm':>16}{'encoders':>14}{'projectors':>14}")
    for r in rows:
        enc = sum(v for k, v in r.items() if k.startswith("encoder."))
        proj = sum(v for k, v in r.items() if k.startswith("projector."))
        print(f"{r['name']:<{width}}{r['total']:>16,}{r['llm']:>16,}{enc:>14,}{proj:>14,}")
    if extra:  # presets of other parts (a UNet, a VAE, ...): one column per part
        parts = [k for k in extra[0] if k not in ("name", "total")]
        print(f"\n{'preset':<{width}}{'total':>16}" + "".join(f"{k:>16}" for k in parts))
        for r in extra:
            print(f"{r['name']:<{width}}{r['total']:>16,}" + "".join(f"{r[k]:>16,}" for k in parts))


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
    from .recipes.common import load_recipe_config, load_run
    from .recipes.llava import main as llava
    from .train.evaluate import print_qa_eval

    out = Path(args.out)
    t0 = time.perf_counter()
    print(f"1/3 synthesising shapes data in {out / 'data'}")
    generate(out / "data", n_train=4000, n_test=600, seed=0)
    print("2/3 training tiny LLaVA: stage pretrain (projector on captions), stage finetune (projector + LLM)")
    cfg = load_recipe_config("llava", "tiny", [f"data_dir={out / 'data'}", *args.overrides])
    summary = llava(cfg, out / "run", resume=False)
    print(f"3/3 held-out questions on images the model has never seen ({time.perf_counter() - t0:.0f}s so far)")
    print_qa_eval(summary["eval"])
    cfg2, model = load_run(out / "run")
    print("\nsample chat (held-out images):")
    for ex in summary["eval"]["examples"][:4]:
        image = ex["media"]["image"][0]
        question = ex["question"].replace("<image>", "").strip()
        print(f"  mmtune chat {out / 'run'} --image {image} \"{question}\"\n    -> {answer(model, cfg2, image, question)}"
              f"   (truth: {ex['target']})")
    print(f"\nrun directory: {out / 'run'} (config.yaml, metrics.jsonl, checkpoints, model/, eval.json); "
          f"total {time.perf_counter() - t0:.0f}s")
    print(export_hint(model, out / "run"))
    print(f"eval table: {out / 'run' / 'eval.json'}")
    print(f"curves: {plot_run(out / 'run')}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmtune", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--version", action="version", version=f"mmtune {__version__}")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="keep the libraries' progress bars and warnings (quiet by default)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe", epilog=recipes_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("recipe", help="recipe name, e.g. llava")
    t.add_argument("--config", default="tiny", help="packaged config name or YAML path")
    t.add_argument("--output-dir", required=True)
    t.add_argument("--data", help="data directory (sets data_dir)")
    t.add_argument("--stage", help="run only this stage")
    t.add_argument("--no-resume", action="store_true",
                   help="train the stages again from their start: their checkpoints and the models they "
                        "led to in the output dir are removed (finished stages are otherwise skipped)")
    t.add_argument("--fresh", action="store_true",
                   help="with --stage: build the model from the config instead of the previous stage's, "
                        "and train that stage even if it finished")
    t.add_argument("overrides", nargs="*", help="key.path=value config overrides")
    t.set_defaults(fn=_train)

    e = sub.add_parser("eval", help="evaluate a run on held-out questions, with and without media")
    e.add_argument("run")
    e.add_argument("--data", help="JSONL of questions (default: the run's eval data)")
    e.set_defaults(fn=_eval)

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
    add_convert_parser(dsub)
    add_inspect_parser(dsub)

    m = sub.add_parser("demo", help="synthesise data, train tiny LLaVA, evaluate, chat (~5 min on CPU)")
    m.add_argument("--out", default="runs/demo")
    m.add_argument("overrides", nargs="*", help="key.path=value overrides of the tiny config")
    m.set_defaults(fn=_demo)
    add_chat_parser(sub)
    add_plot_parser(sub)
    add_serve_parser(sub)
    add_export_parser(sub)
    add_import_parser(sub)
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
    if not args.verbose:
        quiet_libraries()
    if args.debug:
        args.fn(args)
        return
    try:
        args.fn(args)
    except _user_errors() as e:
        # A user's mistake (config, data, run folder) or a stopped run: one line, not a traceback.
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"mmtune: error: {message}  (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def _user_errors() -> tuple[type[BaseException], ...]:
    from .train.checkpoint import CheckpointError
    from .train.stage import BadDataError, NonFiniteError

    # ConfigError, RecordError, MediaError, SampleError and PlaceholderMismatchError are ValueErrors;
    # KeyError: an unknown registry name (recipe, encoder, projector, preset).
    return (ValueError, KeyError, FileNotFoundError, NotADirectoryError, CheckpointError, NonFiniteError,
            BadDataError)


if __name__ == "__main__":
    main(sys.argv[1:])
