"""`mmtune export RUN --merge --out DIR`: a trained model as a plain, full-precision HF model.

The LoRA adapter is merged into the base weights loaded in FULL precision -- also after QLoRA
training, where the base was 4-bit: merging into 4-bit weights would round the update away
(and bitsandbytes' merge re-quantises). The output directory is at once

  * a transformers causal-LM directory: config.json, model.safetensors and the tokenizer at
    the top level, so `AutoModelForCausalLM.from_pretrained(DIR)` and
    `AutoTokenizer.from_pretrained(DIR)` load it without mmtune or peft;
  * a saved MultimodalLM (mmtune_config.json, encoders/, projectors.safetensors pointing at
    the LLM in "."), so `MultimodalLM.from_pretrained(DIR)` loads the merged model, no adapter.

Heavy imports stay inside functions: `mmtune.cli` imports this module for its parser.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")
CONFIG = "mmtune_config.json"


def resolve_model_dir(run_or_model_dir: str | Path) -> Path:
    """A saved model directory, or a run directory holding one in `model/`."""
    p = Path(run_or_model_dir)
    for candidate in (p, p / "model"):
        if (candidate / CONFIG).exists():
            return candidate
    raise FileNotFoundError(f"{p} holds no saved model (expected {p / CONFIG} or {p / 'model' / CONFIG})")


def _full_precision_view(src: Path, into: Path) -> Path:
    """A directory that reads as `src` but whose config loads the LLM unquantised in fp32:
    links to every entry of `src` plus a rewritten mmtune_config.json."""
    view = into / "model"
    view.mkdir()
    for entry in src.iterdir():
        if entry.name != CONFIG:
            (view / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    cfg = json.loads((src / CONFIG).read_text())
    llm = cfg.setdefault("llm", {})
    llm["quantize"] = None  # never merge into 4-bit weights: the base is loaded in full precision
    llm["quantize_embeddings"] = False  # embeddings / lm_head too: the saved base's own, not NF4's
    llm["dtype"] = "float32"  # merge in fp32 whatever the training dtype; cast when writing
    base = llm.get("path")
    if base is not None and Path(base).is_absolute() and not Path(base).exists():
        raise FileNotFoundError(f"{src / CONFIG}: the base LLM {base} it was trained on is gone; "
                                "the adapter can only be merged into the weights it was trained on")
    (view / CONFIG).write_text(json.dumps(cfg, indent=2))
    return view


def export_merged(run_or_model_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Merge a saved MultimodalLM's LoRA adapter (if any) into its full-precision base LLM and
    write the result to `out_dir` (see the module docstring for the layout). Returns out_dir."""
    from .llm import is_4bit, torch_dtype
    from .model import MultimodalLM

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    src = resolve_model_dir(run_or_model_dir)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: export into a new directory")
    has_adapter = (src / "llm_adapter").exists()

    with tempfile.TemporaryDirectory(prefix="mmtune-export-") as tmp:
        model = MultimodalLM.from_pretrained(_full_precision_view(src, Path(tmp)))
        llm = model.llm
        base = llm.get_base_model() if hasattr(llm, "peft_config") else llm
        if is_4bit(base):
            raise ValueError(f"{src}: the saved LLM holds 4-bit weights only (its config.json has a "
                             "quantization_config); there are no full-precision weights to export")
        merged = llm.merge_and_unload() if hasattr(llm, "peft_config") else llm
        merged.to(torch_dtype(dtype))
        model.llm = merged
        model.config = dataclasses.replace(model.config, llm=dataclasses.replace(
            model.config.llm, dtype=dtype, quantize=None, quantize_embeddings=False))
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)  # llm/ (merged), tokenizer/, encoders/, projectors, config

    # Flatten: the LLM and tokenizer at the top level make `out` a plain HF model directory.
    for sub in ("llm", "tokenizer"):
        for entry in (out / sub).iterdir():
            if (out / entry.name).exists():
                raise FileExistsError(f"{out}: {sub}/{entry.name} would overwrite {entry.name}")
            shutil.move(str(entry), str(out / entry.name))
        (out / sub).rmdir()
    cfg = json.loads((out / CONFIG).read_text())
    cfg["llm"]["path"] = "."
    cfg["tokenizer"]["path"] = "."
    (out / CONFIG).write_text(json.dumps(cfg, indent=2))
    (out / "mmtune_export.json").write_text(json.dumps({
        "source": str(src.resolve()), "merged_adapter": has_adapter, "dtype": dtype,
        "lora": cfg["llm"].get("lora"),
    }, indent=2))
    return out


def _export(args) -> None:
    if not args.merge:
        raise SystemExit("mmtune export: --merge is required (the only export so far: the LoRA adapter "
                         "merged into the full-precision base, written as a plain HF model)")
    try:
        out = export_merged(args.run, args.out, dtype=args.dtype)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise SystemExit(f"mmtune export: {e}") from None
    print(f"wrote {out}: loads with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}) "
          f"and mmtune.model.MultimodalLM.from_pretrained({str(out)!r})")


def add_export_parser(subparsers):
    x = subparsers.add_parser("export", help="write a run's model as a plain HF model, LoRA merged")
    x.add_argument("run", help="run directory (uses its model/) or a saved model directory")
    x.add_argument("--merge", action="store_true",
                   help="merge the LoRA adapter into the full-precision base weights (required)")
    x.add_argument("--out", required=True, help="new output directory")
    x.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the written LLM weights")
    x.set_defaults(fn=_export)
    return x
