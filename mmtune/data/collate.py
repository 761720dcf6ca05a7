"""Records -> token ids, labels and media tensors -> padded batches.

The collator owns placeholder expansion: each `<image>` becomes as many placeholder ids as
the model says the image takes, and those ids never carry loss. Truncation never cuts a
medium's tokens: it shortens trailing text (counted), or refuses the sample. A sample that
cannot train (bad medium, no answer, answer words outside the vocabulary, too long) is an
error naming file, line and record id, or with `skip_bad` a `Dropped` counted per reason.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from ..batch import IGNORE, Batch, Dropped, Instruction, MediumSpec, RawMedium
from .errors import DataError, SampleError
from .text.chat import Rendered, render, render_prompt, tokenize_with_labels, unknown_answer_words
from .text.instructions import medium_instructions
from .formats.records import PLACEHOLDER_RE, Record

__all__ = ["Dropped", "SampleError"]  # their homes are batch.py and errors.py; imported from here too

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
class ExampleBuilder:
    """Turns one record into an `Example` (token ids, labels, media tensors) or a `Dropped`.
    Runs in DataLoader workers."""

    tokenizer: object
    template: str
    media: dict[str, MediumSpec]  # modality -> what the model says about it
    max_length: int = 512
    skip_bad: bool = False
    caption_task: bool = False  # LLaVA pretraining: drop the instruction text
    blank_media: bool = False  # every medium replaced by its blank stand-in (the "no image" probe)
    # modality -> applied to each raw medium before preprocessing (e.g. frames shuffled in time)
    media_transform: dict[str, MediaTransform] = field(default_factory=dict)

    def instructions(self, messages: list[dict]) -> dict[str, list[list[int]]]:
        out = {}
        for modality, spec in self.media.items():
            if spec.instruction_tokenizer is None:
                continue
            texts = medium_instructions(messages, modality)
            if texts:
                out[modality] = spec.instruction_tokenizer(texts, truncation=True,
                                                           max_length=spec.max_instruction_length)["input_ids"]
        return out

    def load_media(self, record: Record) -> dict[str, torch.Tensor]:
        out = {}
        for modality, paths in record.media.items():
            spec = self.media.get(modality)
            if spec is None:
                raise SampleError(f"{record.source}: record has {modality} but the model has no "
                                  f"{modality} encoder", "no_encoder")
            raw = [spec.blank() if self.blank_media else spec.load(p, record.source) for p in paths]
            transform = self.media_transform.get(modality)
            if transform is not None:
                raw = [transform(m, f"{record.id}:{modality}:{i}") for i, m in enumerate(raw)]
            out[modality] = spec.preprocess(raw)
        return out

    def expand(self, ids: list[int], supervised: list[bool], record: Record) -> tuple[list[int], list[int]]:
        """Each placeholder id -> K copies (no loss); other tokens keep their label."""
        by_id = {spec.placeholder_id: m for m, spec in self.media.items()}
        out_ids: list[int] = []
        labels: list[int] = []
        seen = {m: 0 for m in self.media}
        for tid, sup in zip(ids, supervised):
            modality = by_id.get(tid)
            if modality is None:
                out_ids.append(tid)
                labels.append(tid if sup else IGNORE)
                continue
            seen[modality] += 1
            out_ids += [tid] * self.media[modality].tokens
            labels += [IGNORE] * self.media[modality].tokens
        for modality, n in seen.items():
            if n != len(record.media.get(modality, [])):
                raise SampleError(f"{record.source}: {n} {modality} placeholder token(s) after "
                                  f"tokenisation but {len(record.media.get(modality, []))} {modality}(s)",
                                  "placeholder_mismatch")
        return out_ids, labels

    def encode(self, record: Record) -> Example | Dropped:
        """A training example: the whole conversation, loss on assistant turns only. A record
        that cannot train raises a DataError naming its file, line and id; with `skip_bad` it
        comes back as a `Dropped` counted under the error's reason instead."""
        try:
            return self._encode(record)
        except DataError as e:
            if self.skip_bad:
                return Dropped(record.id, str(e), e.reason)
            raise e.for_record(record.id) from None

    def _encode(self, record: Record) -> Example:
        if not any(m["role"] == "assistant" for m in record.messages):
            raise SampleError(f"{record.source}: no assistant turn, so nothing to learn", "no_assistant_turn")
        messages = caption_messages(record.messages) if self.caption_task else record.messages
        rendered: Rendered = render(self.tokenizer, messages, self.template)
        ids, supervised = tokenize_with_labels(self.tokenizer, rendered)
        unknown = unknown_answer_words(self.tokenizer, rendered, ids, supervised)
        if unknown:
            raise SampleError(f"{record.source}: answer word(s) {unknown[:5]} are not in the tokenizer's "
                              f"vocabulary and would train as {self.tokenizer.unk_token}", "oov_answer")
        ids, labels = self.expand(ids, supervised, record)
        truncated = False
        if len(ids) > self.max_length:
            slot_ids = {spec.placeholder_id for spec in self.media.values()}
            slots = [i for i, t in enumerate(ids) if t in slot_ids]
            if slots and slots[-1] >= self.max_length:
                raise SampleError(f"{record.source}: too long: {len(ids)} tokens, and cutting them to "
                                  f"max_length {self.max_length} would cut media tokens", "too_long")
            ids, labels, truncated = ids[: self.max_length], labels[: self.max_length], True
        if all(lab == IGNORE for lab in labels[1:]):
            if truncated:
                raise SampleError(f"{record.source}: no supervised tokens after truncation to max_length "
                                  f"{self.max_length}", "too_long")
            raise SampleError(f"{record.source}: no supervised tokens", "no_supervised_tokens")
        return Example(record.id, ids, labels, self.load_media(record), truncated,
                       self.instructions(messages))

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
    dropped = [e for e in examples if isinstance(e, Dropped)]
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
    builder: ExampleBuilder
    prompts: bool = False  # True: generation prompts instead of training examples

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Example | Dropped:
        r = self.records[i]
        return self.builder.encode_prompt(r) if self.prompts else self.builder.encode(r)


@dataclass
class DataStats:
    """What the data pipeline did that a person should know about."""

    examples: int = 0
    truncated: int = 0
    dropped: list[str] = field(default_factory=list)  # "id: reason naming file and line"
    by_reason: Counter = field(default_factory=Counter)  # Dropped.kind -> count

    def update(self, batch: Batch) -> None:
        self.examples += len(batch)
        self.truncated += batch.truncated
        self.add_dropped(batch.dropped)

    def add_dropped(self, dropped: Iterable[Dropped]) -> None:
        """Count samples left out: a batch's, or the lines a reader skipped (`read_records`)."""
        for d in dropped:
            self.dropped.append(str(d))
            self.by_reason[d.kind] += 1

    def as_dict(self) -> dict:
        return {"examples": self.examples, "truncated": self.truncated,
                "dropped": len(self.dropped), "dropped_by_reason": dict(sorted(self.by_reason.items())),
                "dropped_first": self.dropped[:5]}
