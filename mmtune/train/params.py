"""Which parameters a stage trains, and the table that shows it at the start of a stage."""
from __future__ import annotations

from torch import nn

from ..llm import adapter_parameters

PARTS = ("encoder", "projector", "llm")


def set_trainable(model, parts: list[str], where: str = "stage.train") -> None:
    """Freeze everything, then unfreeze the named parts. With LoRA configured, "llm" means
    the LoRA adapters (peft freezes the base weights)."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"{where}: unknown part(s) {unknown}; choose from {list(PARTS)}")
    model.requires_grad_(False)
    if "encoder" in parts:
        model.encoders.requires_grad_(True)
    if "projector" in parts:
        model.projectors.requires_grad_(True)
    if "llm" in parts:
        if model.config.llm.quantize and model.config.llm.lora.r <= 0:
            raise ValueError(f"{where}: the LLM is loaded in 4-bit ({model.config.llm.quantize}); its "
                             "weights cannot be trained: set model.llm.lora.r > 0 (QLoRA)")
        if model.config.llm.lora.r > 0:
            model.enable_lora()
            model.llm.requires_grad_(False)
            for p in adapter_parameters(model.llm):
                p.requires_grad_(True)
        else:
            model.llm.requires_grad_(True)


def parameter_rows(model) -> list[dict]:
    """One row per part: total and trainable parameter counts."""
    groups: dict[str, nn.Module] = {f"encoder.{m}": e for m, e in model.encoders.items()}
    groups.update({f"projector.{m}": p for m, p in model.projectors.items()})
    groups["llm"] = model.llm
    rows = []
    for name, module in groups.items():
        params = list(module.parameters())
        rows.append({"part": name, "params": sum(p.numel() for p in params),
                     "trainable": sum(p.numel() for p in params if p.requires_grad)})
    return rows


def parameter_table(model) -> str:
    rows = parameter_rows(model)
    total = sum(r["params"] for r in rows)
    trainable = sum(r["trainable"] for r in rows)
    lines = [f"{'part':<20}{'params':>14}{'trainable':>14}"]
    lines += [f"{r['part']:<20}{r['params']:>14,}{r['trainable']:>14,}" for r in rows]
    lines.append(f"{'total':<20}{total:>14,}{trainable:>14,}  ({100 * trainable / max(total, 1):.2f}% trainable)")
    return "\n".join(lines)
