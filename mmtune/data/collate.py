"""Records -> token ids, labels and media tensors -> padded batches.

The collator owns placeholder expansion: each `<image>` becomes as many placeholder ids as
the model says the image takes, and those ids never carry loss. Truncation never cuts a
medium's tokens: it shortens trailing text, or drops the sample, and says which it did.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image

from ..model import IGNORE, Batch
from .chat import Rendered, render, render_prompt, tokenize_with_labels
from .media import MediaError, load_image
from .records import MEDIA_TOKENS, Record, RecordError


@dataclass
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]
    media: dict[str, torch.Tensor]  # modality -> [n, ...]
    truncated: bool = False


@dataclass
class Dropped:
    """A sample that produced nothing to train on, with the reason (counted, reported)."""

    id: str
    reason: str


class SampleError(ValueError):
    pass


_PLACEHOLDER = re.compile("|".join(re.escape(t) for t in MEDIA_TOKENS.values()))


def caption_messages(messages: list[dict]) -> list[dict]:
    """LLaVA's feature-alignment format: user turns keep only their media placeholders."""
    out = []
    for m in messages:
        if m["role"] == "user":
            out.append({"role": "user", "content": "".join(_PLACEHOLDER.findall(m["content"]))})
        elif m["role"] == "assistant":
            out.append(m)
    return out


@dataclass
class ExampleEncoder:
    """Turns one record into an `Example` (or a `Dropped`). Runs in DataLoader workers."""

    tokenizer: object
    template: str
    tokens_per_medium: dict[str, int]  # modality -> placeholder ids per medium
    placeholder_ids: dict[str, int]
    preprocess: dict[str, Callable[[list[Image.Image]], torch.Tensor]]
    max_length: int = 512
    skip_bad: bool = False
    caption_task: bool = False  # LLaVA pretraining: drop the instruction text
    blank_media: Callable[[str], Image.Image] | None = None  # modality -> blank stand-in

    def load_media(self, record: Record) -> dict[str, torch.Tensor]:
        out = {}
        for modality, paths in record.media.items():
            if modality not in self.preprocess:
                raise SampleError(f"{record.source}: record has {modality} but the model has no "
                                  f"{modality} encoder")
            if self.blank_media is not None:
                images = [self.blank_media(modality) for _ in paths]
            else:
                images = [load_image(p, record.source) for p in paths]
            out[modality] = self.preprocess[modality](images)
        return out

    def expand(self, ids: list[int], supervised: list[bool], record: Record) -> tuple[list[int], list[int]]:
        """Each placeholder id -> K copies (no loss); other tokens keep their label."""
        by_id = {tid: m for m, tid in self.placeholder_ids.items()}
        out_ids: list[int] = []
        labels: list[int] = []
        seen = {m: 0 for m in self.placeholder_ids}
        for tid, sup in zip(ids, supervised):
            modality = by_id.get(tid)
            if modality is None:
                out_ids.append(tid)
                labels.append(tid if sup else IGNORE)
                continue
            seen[modality] += 1
            out_ids += [tid] * self.tokens_per_medium[modality]
            labels += [IGNORE] * self.tokens_per_medium[modality]
        for modality, n in seen.items():
            if n != len(record.media.get(modality, [])):
                raise SampleError(f"{record.source}: {n} {modality} placeholder token(s) after "
                                  f"tokenisation but {len(record.media.get(modality, []))} {modality}(s)")
        return out_ids, labels

    def encode(self, record: Record) -> Example | Dropped:
        """A training example: the whole conversation, loss on assistant turns only."""
        try:
            messages = caption_messages(record.messages) if self.caption_task else record.messages
            rendered: Rendered = render(self.tokenizer, messages, self.template)
            ids, supervised = tokenize_with_labels(self.tokenizer, rendered)
            ids, labels = self.expand(ids, supervised, record)
            truncated = False
            if len(ids) > self.max_length:
                slots = [i for i, t in enumerate(ids) if t in self.placeholder_ids.values()]
                if slots and slots[-1] >= self.max_length:
                    return Dropped(record.id, "too long: truncation would cut media tokens")
                ids, labels, truncated = ids[: self.max_length], labels[: self.max_length], True
            if all(lab == IGNORE for lab in labels[1:]):
                return Dropped(record.id, "no supervised tokens" + (" after truncation" if truncated else ""))
            return Example(record.id, ids, labels, self.load_media(record), truncated)
        except (SampleError, MediaError, RecordError) as e:
            if self.skip_bad:
                return Dropped(record.id, str(e))
            raise

    def encode_prompt(self, record: Record) -> Example:
        """A generation prompt: messages up to the last user turn, then the assistant header."""
        users = [i for i, m in enumerate(record.messages) if m["role"] == "user"]
        if not users:
            raise SampleError(f"{record.source}: no user turn to answer")
        last_user = users[-1]
        text = render_prompt(self.tokenizer, record.messages[: last_user + 1], self.template)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids, labels = self.expand(ids, [False] * len(ids), record)
        return Example(record.id, ids, labels, self.load_media(record))


def collate(examples: list[Example | Dropped], pad_id: int, left_pad: bool = False) -> Batch:
    """Pad to the longest row (right for training, left for generation) and stack media."""
    kept = [e for e in examples if isinstance(e, Example)]
    dropped = [f"{e.id}: {e.reason}" for e in examples if isinstance(e, Dropped)]
    width = max((len(e.input_ids) for e in kept), default=0)
    ids = torch.full((len(kept), width), pad_id, dtype=torch.long)
    labels = torch.full((len(kept), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(kept), width), dtype=torch.long)
    for row, e in enumerate(kept):
        n = len(e.input_ids)
        cols = slice(width - n, width) if left_pad else slice(0, n)
        ids[row, cols] = torch.tensor(e.input_ids)
        labels[row, cols] = torch.tensor(e.labels)
        mask[row, cols] = 1
    modalities = sorted({m for e in kept for m in e.media})
    media = {m: torch.cat([e.media[m] for e in kept if m in e.media]) for m in modalities}
    per_row = {m: [len(e.media[m]) if m in e.media else 0 for e in kept] for m in modalities}
    return Batch(input_ids=ids, attention_mask=mask, labels=labels, media=media,
                 media_per_row=per_row, ids=[e.id for e in kept], dropped=dropped,
                 truncated=sum(e.truncated for e in kept))


@dataclass
class RecordDataset(torch.utils.data.Dataset):
    records: list[Record]
    encoder: ExampleEncoder
    prompts: bool = False  # True: generation prompts instead of training examples

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Example | Dropped:
        r = self.records[i]
        return self.encoder.encode_prompt(r) if self.prompts else self.encoder.encode(r)


@dataclass
class DataStats:
    """What the data pipeline did that a person should know about."""

    examples: int = 0
    truncated: int = 0
    dropped: list[str] = field(default_factory=list)

    def update(self, batch: Batch) -> None:
        self.examples += batch.input_ids.shape[0]
        self.truncated += batch.truncated
        self.dropped += batch.dropped

    def as_dict(self) -> dict:
        return {"examples": self.examples, "truncated": self.truncated,
                "dropped": len(self.dropped), "dropped_first": self.dropped[:5]}
