"""The data <-> model contract: what a collator hands a model. A leaf: imports nothing of ours.

`data/` builds `Batch`es, `model.py` and the projectors read them; neither reaches into the
other, so a new projector or a new collator only has to keep this file's promises.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

IGNORE = -100  # label of a position that carries no loss (prompt, media, padding)

# One placeholder token per modality in record text; the collator expands each into as many
# ids as the model says that medium takes.
MEDIA_TOKENS: dict[str, str] = {"image": "<image>", "video": "<video>", "audio": "<audio>"}


# A decoded medium before preprocessing: a PIL image, uint8 video frames [T, H, W, 3], or a
# float32 waveform [S]; each encoder's `load` / `blank` / `preprocess` agree on its form.
RawMedium = Any


@dataclass(frozen=True)
class MediumSpec:
    """What the data side needs to know about one of the model's modalities; the model hands
    one per modality (`MultimodalLM.media_specs`), so the collator never reaches into it."""

    placeholder_id: int  # the one token id that `<image>` etc. becomes before expansion
    tokens: int  # placeholder ids per medium (what the projector returns for one medium)
    load: Callable[[str, str], RawMedium]  # (path, where) -> raw medium, raising MediaError
    blank: Callable[[], RawMedium]  # a content-free stand-in (flat image, flat frames, silence)
    preprocess: Callable[[list[RawMedium]], torch.Tensor]  # raw media -> [n, ...]
    # An instruction-aware projector's own tokenizer (InstructBLIP's Q-Former); None: no text.
    instruction_tokenizer: Any = None
    max_instruction_length: int = 128


@dataclass
class Instruction:
    """Each medium's instruction in a projector's own tokenizer (InstructBLIP's Q-Former reads
    it beside its queries). Projector-agnostic: any instruction-aware projector takes it."""

    input_ids: torch.Tensor  # [n, L]
    attention_mask: torch.Tensor | None = None  # [n, L], 1 = real token


@dataclass
class Dropped:
    """A sample left out of training: `reason` is one line naming its file and line, `kind`
    the short name it is counted under (`mmtune.data.errors.REASONS`)."""

    id: str
    reason: str
    kind: str = "bad_record"

    def __str__(self) -> str:
        return f"{self.id}: {self.reason}" if self.id else self.reason


@dataclass
class Batch:
    """What the collator hands the model. Typed, so nothing travels as a loose dict key."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], IGNORE where no loss
    media: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> [n, ...]
    media_per_row: dict[str, list[int]] = field(default_factory=dict)  # modality -> count per row
    ids: list[str] = field(default_factory=list)  # record ids, for error messages
    position_ids: torch.Tensor | None = None  # [B, T], set when packing
    dropped: list[Dropped] = field(default_factory=list)  # samples left out, with why
    truncated: int = 0  # rows whose trailing text was cut to fit max_length
    # modality -> each medium's instruction in the projector's tokenizer (InstructBLIP)
    instructions: dict[str, Instruction] = field(default_factory=dict)

    def to(self, device, non_blocking: bool = False) -> "Batch":
        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return dataclasses.replace(self, input_ids=move(self.input_ids),
                                   attention_mask=move(self.attention_mask), labels=move(self.labels),
                                   media={k: move(v) for k, v in self.media.items()},
                                   position_ids=move(self.position_ids),
                                   instructions={k: Instruction(move(v.input_ids), move(v.attention_mask))
                                                 for k, v in self.instructions.items()})

    def __len__(self) -> int:
        return len(self.ids)  # examples (a packed row holds several); 0 when all were dropped

    def num_loss_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())
