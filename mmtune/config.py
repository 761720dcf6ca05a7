"""Typed configuration: dataclass defaults -> YAML file -> `key.path=value` overrides.

Every config is a tree of dataclasses. Loading is strict: an unknown key or a value of the
wrong type is an error that names the key path and the file it came from, so a typo never
silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class RawValue(str):
    """A command-line override's text, typed only once the target field's type is known."""


def _key(where: str, key: str) -> str:
    return f"{where}{key}" if where.endswith(": ") else f"{where}.{key}"


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check / convert a YAML value to the annotated type `tp`."""
    if isinstance(value, RawValue):
        try:
            return _convert(tp, yaml.safe_load(value) if value else "", where)
        except ConfigError:  # e.g. `mixed_precision=no`, which YAML reads as a bool
            return _convert(tp, str(value), where)
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: null is not allowed here")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        _, val_tp = typing.get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(val_tp, v, _key(where, str(k))) for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                _fail(where, tp, value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(where, tp, value)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, tp, value)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _fail(where, tp, value)
        return value
    if tp is str:
        if not isinstance(value, str):
            _fail(where, tp, value)
        return value
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    return value


def _fail(where: str, tp: Any, value: Any):
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict, where: str = "config: ") -> T:
    """Build dataclass `cls` from a mapping; unknown keys are errors naming their path."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"{where.removesuffix(': ')}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(fields)}"
        )
    kwargs = {k: _convert(hints[k], v, _key(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a range check in __post_init__: "key: must be ..."
        raise ConfigError(_key(where, str(e))) from None


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: list[str]) -> dict:
    """`["train.lr=1e-3", "stages.pretrain.max_steps=10"]` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} was already set to a value")
        node[parts[-1]] = RawValue(raw)
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
         base: dict | None = None) -> T:
    """Defaults of `cls` <- optional `base` dict <- YAML at `path` <- `overrides`."""
    data = dict(base or {})
    where = "config: "
    if path is not None:
        data = merge(data, load_yaml(path))
        where = f"{path}: "
    if overrides:
        data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data, where)


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def check_range(cfg: Any, low: float, *names: str, strict: bool = False, high: float | None = None) -> None:
    """Range checks that configs run in __post_init__; the error names the key (from_dict adds
    the path and file)."""
    for name in names:
        value = getattr(cfg, name)
        if value is None:
            continue
        if value < low or (strict and value == low) or (high is not None and value > high):
            bound = f"> {low}" if strict else f">= {low}"
            bound += "" if high is None else f" and <= {high}"
            raise ConfigError(f"{name}: must be {bound}, got {value!r}")


# Enum-like values, each defined once.
MixedPrecision = Literal["no", "bf16", "fp16"]  # as accelerate names them
OnBadSample = Literal["error", "skip"]
Task = Literal["conversation", "caption", "single_turn"]
Schedule = Literal["cosine", "linear", "constant"]
Dtype = Literal["float32", "bfloat16", "float16"]


# ---------------------------------------------------------------------------------------
# The configs themselves. Defaults live here and only here.
# ---------------------------------------------------------------------------------------
from dataclasses import dataclass, field  # noqa: E402


@dataclass
class EncoderConfig:
    """A media encoder. `type` is a name in `mmtune.registry.ENCODERS`."""

    type: str = "hf_clip"
    path: str | None = None  # local checkpoint dir (HF), or open_clip pretrained tag / file
    arch: dict[str, Any] = field(default_factory=dict)  # HF config kwargs or open_clip model name
    select_layer: int = -2  # LLaVA uses the penultimate layer's hidden states
    drop_cls: bool = True  # LLaVA's "patch" feature selection drops the CLS token
    trainable: bool = False
    image_pad: bool = True  # LLaVA-1.5 pads to a square with the mean colour before resizing


@dataclass
class ProjectorConfig:
    """Maps encoder features to the LLM width. `type` is a name in `PROJECTORS`."""

    type: str = "mlp2x_gelu"
    options: dict[str, Any] = field(default_factory=dict)
    # An instruction-aware projector (InstructBLIP's Q-Former) reads the user's instruction
    # through its own tokenizer (BERT's in InstructBLIP); None: the projector sees no text.
    instruction_tokenizer: TokenizerConfig | None = None
    max_instruction_length: int = 128


@dataclass
class LoraConfig:
    r: int = 0  # 0 disables LoRA
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass
class LLMConfig:
    path: str | None = None  # HF model dir; None builds from `arch` at random init
    arch: dict[str, Any] = field(default_factory=dict)  # HF config kwargs incl. model_type
    dtype: Dtype = "float32"
    quantize: Literal["nf4"] | None = None  # "nf4" loads 4-bit weights through bitsandbytes
    # With quantize: nf4, the input embedding and lm_head in NF4 too (one storage when tied).
    # Off by default, as in QLoRA; worth it where the vocabulary is a large share of the model.
    quantize_embeddings: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class TokenizerConfig:
    # "auto": AutoTokenizer from `path` (or the LLM's path);
    # "synthetic": mmtune's word-level tokenizer over its synthetic tasks' vocabulary.
    type: Literal["auto", "synthetic"] = "auto"
    path: str | None = None
    chat_template: str | None = None  # a name in mmtune.data.text.chat.TEMPLATES; None = tokenizer's own


@dataclass
class ModelConfig:
    preset: str | None = None  # zoo name whose fields sit under the ones given here
    llm: LLMConfig = field(default_factory=LLMConfig)
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)  # modality -> encoder
    projectors: dict[str, ProjectorConfig] = field(default_factory=dict)  # modality -> projector
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # A checkpoint to start from (mmtune.interop): a llava-hf, InstructBLIP, BLIP-2 or
    # original-LLaVA folder, or a saved mmtune model (`mmtune import` output), whose architecture
    # and weights replace llm / encoders / projectors / tokenizer above (of those only llm.lora,
    # llm.dtype, encoders.<m>.trainable, tokenizer.chat_template and, for a saved mmtune model,
    # llm.quantize still apply); or a stage-1 projector file (mm_projector.bin / .safetensors)
    # loaded into the model built from the fields above.
    init_from: str | None = None


@dataclass
class StageConfig:
    """One training stage: what it trains, on what, how fast."""

    data: str = "train.jsonl"  # relative to the run's data dir
    train: list[str] = field(default_factory=lambda: ["projector"])  # projector|llm|encoder
    lr: float = 1e-3
    max_steps: int = 100
    epochs: float | None = None  # when set, the stage runs this many passes over its data instead
    lr_schedule: Schedule = "cosine"  # after linear warmup: cosine to lr * min_lr_ratio, linear to 0, constant
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    batch_size: int = 8
    grad_accum: int = 1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0  # 0: no clipping (the norm is still checked for NaN/inf)
    # conversation | caption (LLaVA alignment: instruction text dropped) | single_turn (one
    # example per exchange, InstructBLIP)
    task: Task = "conversation"
    chat_template: str | None = None  # a name in mmtune.data.text.chat.TEMPLATES; None = tokenizer's

    def __post_init__(self) -> None:
        check_range(self, 1, "max_steps", "batch_size", "grad_accum")
        check_range(self, 0, "lr", "epochs", strict=True)
        check_range(self, 0, "warmup_steps", "weight_decay", "max_grad_norm")
        check_range(self, 0, "min_lr_ratio", high=1)


@dataclass
class TrainConfig:
    seed: int = 0
    mixed_precision: MixedPrecision = "no"
    max_length: int = 512
    packing: bool = True  # several examples per row, no attention across them (exact: see train.attention)
    log_every: int = 10
    log_record_ids: bool = False  # metrics.jsonl names the records each logged step trained on (main process)
    save_every: int = 0  # 0: no checkpoints (a killed stage starts over); the saved model marks a stage done
    keep_last: int = 0  # keep only the newest N checkpoints of a stage (0: all)
    on_bad_sample: OnBadSample = "error"  # skip: bad records are dropped and counted
    max_bad_fraction: float = 0.1  # with skip: more bad records than this share stops the run
    on_nonfinite: OnBadSample = "error"  # a NaN/inf loss or gradient: stop, or skip the update
    max_nonfinite_steps: int = 10  # with skip: more skipped updates than this stops the run
    num_workers: int = 0
    threads: int = 0  # torch threads on CPU; 0 keeps torch's default
    gradient_checkpointing: bool = False  # recompute activations in backward (LLM, trainable HF encoders)
    # Speed switches (issue 12), each measured on/off by benchmarks/peer_llava.py.
    pack_length: int = 0  # tokens per packed row; 0: each micro-batch is one row (no padding)
    # auto: varlen when packing (flash_attention_2 on CUDA if installed), else sdpa
    attention: Literal["auto", "varlen", "sdpa", "eager", "flash_attention_2"] = "auto"
    head_at_labels: bool = True  # output head and cross-entropy only where a label is
    feature_cache: bool = True  # a frozen encoder decodes and encodes each distinct medium once per run
    feature_cache_mb: int = 4096  # memory the cache may hold (features + decoded media); beyond it, nothing new is kept
    compile: bool = False  # torch.compile the LLM (dynamic shapes)
    fused_optimizer: bool = True  # torch's fused AdamW (CPU, CUDA): its step ~4x cheaper on CPU (0.02 vs 0.09 CPU-s, 25M params)
    report_to: list[str] = field(default_factory=list)  # tensorboard | wandb | mlflow (accelerate trackers)

    def __post_init__(self) -> None:
        check_range(self, 1, "max_length", "log_every")
        check_range(self, 0, "pack_length", "feature_cache_mb", "save_every", "keep_last", "max_nonfinite_steps", "num_workers", "threads")
        check_range(self, 0, "max_bad_fraction", high=1)


@dataclass
class EvalConfig:
    data: str = "test.jsonl"
    max_new_tokens: int = 8
    batch_size: int = 64
    limit: int = 0  # 0: all questions
    separate_splits: list[str] = field(default_factory=list)  # scored, but outside `accuracy`

    def __post_init__(self) -> None:
        check_range(self, 1, "max_new_tokens", "batch_size")
        check_range(self, 0, "limit")


@dataclass
class RecipeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data_dir: str | None = None  # a folder of JSONL files (stages name theirs), or one JSONL file
    stages: dict[str, StageConfig] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Shorthands that set every stage's value (`mmtune train ... max_steps=5`).
    max_steps: int | None = None
    epochs: float | None = None

    def __post_init__(self) -> None:
        apply_shorthands(self)


def apply_shorthands(cfg) -> None:
    """A recipe config's top-level `max_steps` / `epochs` set every stage's."""
    check_range(cfg, 1, "max_steps")
    check_range(cfg, 0, "epochs", strict=True)
    for stage in cfg.stages.values():
        if cfg.max_steps is not None:
            stage.max_steps, stage.epochs = cfg.max_steps, None
        if cfg.epochs is not None:
            stage.epochs = cfg.epochs
