"""`mmtune export RUN --merge --out DIR`: a trained model as a plain, full-precision HF model;
`mmtune export RUN --format hf --out DIR`: one transformers vision-language folder (see mmtune.interop).

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
    """A directory that reads as `src` but whose config loads the LLM unquantised in fp32."""
    from .interop.parts import config_view

    def edit(cfg: dict) -> None:
        llm = cfg.setdefault("llm", {})
        llm["quantize"] = None  # never merge into 4-bit weights: the base is loaded in full precision
        llm["quantize_embeddings"] = False  # embeddings / lm_head too: the saved base's own, not NF4's
        llm["dtype"] = "float32"  # merge in fp32 whatever the training dtype; cast when writing
        base = llm.get("path")
        if base is not None and Path(base).is_absolute() and not Path(base).exists():
            raise FileNotFoundError(f"{src / CONFIG}: the base LLM {base} it was trained on is gone; "
                                    "the adapter can only be merged into the weights it was trained on")

    return config_view(src, into, edit)


def _check_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: export into a new directory")


def merged_model(src: Path, tmp: Path):
    """`src`'s MultimodalLM with its LoRA adapter (if any) merged into the full-precision (fp32)
    base: never into 4-bit weights."""
    from .llm import is_4bit
    from .model import MultimodalLM

    model = MultimodalLM.from_pretrained(_full_precision_view(src, tmp))
    llm = model.llm
    base = llm.get_base_model() if hasattr(llm, "peft_config") else llm
    if is_4bit(base):
        raise ValueError(f"{src}: the saved LLM holds 4-bit weights only (its config.json has a "
                         "quantization_config); there are no full-precision weights to export")
    model.llm = llm.merge_and_unload() if hasattr(llm, "peft_config") else llm
    return model


def export_merged(run_or_model_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Merge a saved MultimodalLM's LoRA adapter (if any) into its full-precision base LLM and
    write the result to `out_dir` (see the module docstring for the layout). Returns out_dir."""
    from .llm import torch_dtype

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    src = resolve_model_dir(run_or_model_dir)
    out = Path(out_dir)
    _check_out(out)
    has_adapter = (src / "llm_adapter").exists()

    with tempfile.TemporaryDirectory(prefix="mmtune-export-") as tmp:
        model = merged_model(src, Path(tmp))
        model.llm.to(torch_dtype(dtype))
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


def export_hf(run_or_model_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """A saved MultimodalLM, LoRA merged, as a transformers folder (LlavaForConditionalGeneration /
    InstructBlip / Blip2ForConditionalGeneration + processor) that loads without mmtune. A model no
    transformers class expresses is refused before `out_dir` is created; the folder is written
    beside it and renamed into place only when complete."""
    from .interop import check_exportable, export_hf as write_hf
    from .llm import torch_dtype

    src = resolve_model_dir(run_or_model_dir)
    out = Path(out_dir)
    _check_out(out)
    with tempfile.TemporaryDirectory(prefix="mmtune-export-") as tmp:
        model = merged_model(src, Path(tmp))
        check_exportable(model)
        model.to(torch_dtype(dtype))  # every part: one dtype in the HF folder
        partial = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent if out.parent.exists() else None))
        try:
            write_hf(model, partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    if out.exists():
        out.rmdir()  # empty (checked above)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(partial), str(out))
    return out


def _export(args) -> None:
    if args.format == "mmtune" and not args.merge:
        raise SystemExit("mmtune export: --merge is required with --format mmtune (the LoRA adapter merged "
                         "into the full-precision base, written as a plain HF model); --format hf writes "
                         "a transformers vision-language model")
    try:
        if args.format == "hf":
            out = export_hf(args.run, args.out, dtype=args.dtype)
        else:
            out = export_merged(args.run, args.out, dtype=args.dtype)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise SystemExit(f"mmtune export: {e}") from None
    if args.format == "hf":
        print(f"wrote {out}: loads without mmtune with transformers.AutoModelForImageTextToText"
              f".from_pretrained({str(out)!r}) and AutoProcessor.from_pretrained({str(out)!r})")
        return
    print(f"wrote {out}: loads with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}) "
          f"and mmtune.model.MultimodalLM.from_pretrained({str(out)!r})")


def add_export_parser(subparsers):
    x = subparsers.add_parser("export", help="write a run's model as plain transformers model(s), LoRA merged")
    x.add_argument("run", help="run directory (uses its model/) or a saved model directory")
    x.add_argument("--format", default="mmtune", choices=("mmtune", "hf"),
                   help="mmtune: the merged LLM as a causal-LM folder + mmtune's parts (default); hf: one "
                        "transformers vision-language folder (LlavaForConditionalGeneration, InstructBLIP, "
                        "BLIP-2) with its processor")
    x.add_argument("--merge", action="store_true",
                   help="merge the LoRA adapter into the full-precision base weights (required for "
                        "--format mmtune; --format hf always merges)")
    x.add_argument("--out", required=True, help="new output directory")
    x.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the written weights")
    x.set_defaults(fn=_export)
    return x


def _import(args) -> None:
    from .model import MultimodalLM

    out = Path(args.out)
    try:
        _check_out(out)
        model = MultimodalLM.from_hf(args.folder)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise SystemExit(f"mmtune import: {e}") from None
    model.save_pretrained(out)
    print(f"wrote {out}: a saved mmtune model (MultimodalLM.from_pretrained, or model.init_from={out})")


def add_import_parser(subparsers):
    x = subparsers.add_parser("import", help="convert a released checkpoint folder (llava-hf, InstructBLIP, "
                                             "BLIP-2, original LLaVA) into a saved mmtune model")
    x.add_argument("folder", help="the released checkpoint folder")
    x.add_argument("--out", required=True, help="new output directory")
    x.set_defaults(fn=_import)
    return x


def export_hint(model, run_dir: str | Path) -> str:
    """The export command for a trained run, as the demo prints it: to transformers when a
    transformers class expresses the model, else the merged mmtune format and why."""
    from .interop import ExportRefused, check_exportable

    run = Path(run_dir)
    try:
        check_exportable(model)
    except ExportRefused as e:
        return (f"export: mmtune export {run} --merge --out {run}-merged   (not to transformers: {e}; "
                "`--config tiny-hf` trains a tiny LLaVA that exports)")
    return f"export to transformers: mmtune export {run} --format hf --out {run}-hf"
