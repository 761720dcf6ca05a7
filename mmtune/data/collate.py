"""Records -> token ids, labels and media tensors -> padded batches.

The collator owns placeholder expansion: each `<image>` becomes as many placeholder ids as
the model says the image takes, and those ids never carry loss. Truncation never cuts a
medium's tokens: it shortens trailing text, or drops the sample, and says which it did.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..batch import IGNORE, Batch, Instruction
from .text.chat import Rendered, render, render_prompt, tokenize_with_labels
from .text.instructions import medium_instructions
from .media.image import MediaError, load_image
from .formats.records import PLACEHOLDER_RE, Record, RecordError

# A decoded medium before preprocessing: a PIL image, uint8 video frames [T, H, W, 3], or a
# float32 waveform [S]; each encoder's `load` / `blank` / `preprocess` agree on its form.
RawMedium = Any
# (raw medium, key) -> raw medium; `key` ("<record id>:<modality>:<index>") seeds anything random,
# so a transformed evaluation is the same on every run and in every worker.
MediaTransform = Callable[[RawMedium, str], RawMedium]


@dataclass
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]
    media: dict[str, torch.Tensor]  # modality -> [n, ...]
    truncated: bool = False
    instructions: dict[str, list[list[int]]] = field(default_factory=dict)  # modality -> ids per medium


@dataclass
class Dropped:
    """A sample that produced nothing to train on, with the reason (counted, reported)."""

    id: str
    reason: str


class SampleError(ValueError):
    pass


def caption_messages(messages: list[dict]) -> list[dict]:
    """LLaVA's feature-alignment format: user turns keep only their media placeholders."""
    out = []
    for m in messages:
        if m["role"] == "user":
            out.append({"role": "user", "content": "".join(PLACEHOLDER_RE.findall(m["content"]))})
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
    preprocess: dict[str, Callable[[list[RawMedium]], torch.Tensor]]  # modality -> batch of raw -> tensor
    max_length: int = 512
    skip_bad: bool = False
    caption_task: bool = False  # LLaVA pretraining: drop the instruction text
    blank_media: Callable[[str], RawMedium] | None = None  # modality -> blank stand-in
    # modality -> (path, where) -> raw medium, raising MediaError; images default to load_image
    load: dict[str, Callable[[str, str], RawMedium]] = field(default_factory=dict)
    # modality -> applied to each raw medium before preprocessing (e.g. frames shuffled in time)
    media_transform: dict[str, MediaTransform] = field(default_factory=dict)
    # modality -> the projector's own tokenizer, for instruction-aware projectors only
    instruction_tokenizers: dict[str, object] = field(default_factory=dict)
    max_instruction_length: dict[str, int] = field(default_factory=dict)  # modality -> tokens

    def instructions(self, messages: list[dict]) -> dict[str, list[list[int]]]:
        out = {}
        for modality, tok in self.instruction_tokenizers.items():
            texts = medium_instructions(messages, modality)
            if texts:
                out[modality] = tok(texts, truncation=True, max_length=self.max_instruction_length[modality])["input_ids"]
        return out

    def load_media(self, record: Record) -> dict[str, torch.Tensor]:
        out = {}
        for modality, paths in record.media.items():
            if modality not in self.preprocess:
                raise SampleError(f"{record.source}: record has {modality} but the model has no "
                                  f"{modality} encoder")
            if self.blank_media is not None:
                raw = [self.blank_media(modality) for _ in paths]
            else:
                load = self.load.get(modality, load_image)
                raw = [load(p, record.source) for p in paths]
            transform = self.media_transform.get(modality)
            if transform is not None:
                raw = [transform(m, f"{record.id}:{modality}:{i}") for i, m in enumerate(raw)]
            out[modality] = self.preprocess[modality](raw)
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
            return Example(record.id, ids, labels, self.load_media(record), truncated,
                           self.instructions(messages))
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
        return Example(record.id, ids, labels, self.load_media(record),
                       instructions=self.instructions(record.messages[: last_user + 1]))


def collate(examples: list[Example | Dropped], pad_id: int, left_pad: bool = False) -> Batch:
    """One example per row, padded to the longest (right for training, left for generation)."""
    kept = [e for e in examples if isinstance(e, Example)]
    return _batch([[e] for e in kept], examples, pad_id, left_pad, packed=False)


def pack(examples: list[Example | Dropped], pad_id: int, max_length: int = 0) -> Batch:
    """Several examples per row (first-fit by decreasing length, up to `max_length` tokens;
    0: all in one row, so nothing is padded).

    Position ids restart at 0 for every example, and the model then builds a block-diagonal
    causal mask from them (transformers does so when no 2-D attention mask is passed), so no
    token attends across examples. An example's first token never carries loss (it is prompt),
    so the loss of a packed row equals the losses of its examples computed apart.
    """
    kept = sorted((e for e in examples if isinstance(e, Example)), key=lambda e: -len(e.input_ids))
    max_length = max_length or sum(len(e.input_ids) for e in kept)
    rows: list[list[Example]] = []
    room: list[int] = []
    for e in kept:
        n = len(e.input_ids)
        slot = next((i for i, r in enumerate(room) if r >= n), None)
        if slot is None:
            rows.append([e])
            room.append(max_length - n)
        else:
            rows[slot].append(e)
            room[slot] -= n
    return _batch(rows, examples, pad_id, left_pad=False, packed=True)


def _batch(rows: list[list[Example]], examples: list, pad_id: int, left_pad: bool, packed: bool) -> Batch:
    dropped = [f"{e.id}: {e.reason}" for e in examples if isinstance(e, Dropped)]
    lengths = [sum(len(e.input_ids) for e in row) for row in rows]
    width = max(lengths, default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (row, n) in enumerate(zip(rows, lengths)):
        start = width - n if left_pad else 0
        for e in row:
            k = len(e.input_ids)
            ids[r, start:start + k] = torch.tensor(e.input_ids)
            labels[r, start:start + k] = torch.tensor(e.labels)
            mask[r, start:start + k] = 1
            positions[r, start:start + k] = torch.arange(k)
            start += k
        if packed and n < width:  # the padding tail is a segment of its own
            positions[r, n:] = torch.arange(width - n)
    flat = [e for row in rows for e in row]  # media in placeholder order: row by row
    modalities = sorted({m for e in flat for m in e.media})
    media = {m: torch.cat([e.media[m] for e in flat if m in e.media]) for m in modalities}
    per_row = {m: [sum(len(e.media[m]) for e in row if m in e.media) for row in rows] for m in modalities}
    return Batch(input_ids=ids, attention_mask=mask, labels=labels, media=media,
                 media_per_row=per_row, ids=[e.id for e in flat], dropped=dropped,
                 truncated=sum(e.truncated for e in flat), position_ids=positions if packed else None,
                 instructions=_instructions(flat))


def _instructions(flat: list[Example]) -> dict[str, Instruction]:
    """Each modality's instructions, in media order, right-padded into one [n, L] block
    (pad id 0, masked out: the projector's tokenizer is not the LLM's)."""
    out = {}
    for m in sorted({m for e in flat for m in e.instructions}):
        seqs = [s for e in flat for s in e.instructions.get(m, [])]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        out[m] = Instruction(ids, mask)
    return out


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
        self.examples += len(batch.ids)  # examples, not rows: a packed row holds several
        self.truncated += batch.truncated
        self.dropped += batch.dropped

    def as_dict(self) -> dict:
        return {"examples": self.examples, "truncated": self.truncated,
                "dropped": len(self.dropped), "dropped_first": self.dropped[:5]}
