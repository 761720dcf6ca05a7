"""Bad input, by kind: every error a reader or decoder raises names the file and line, and
carries a short `reason` so a run that skips bad records can count them per reason.

A leaf of `data/`: the formats, media and collate rooms all raise these, and the training
loop counts `Dropped.kind` (see `mmtune.batch.Dropped`) under the same names.
"""
from __future__ import annotations

# The reasons, for readers of train_summary.json ("dropped_by_reason").
REASONS: dict[str, str] = {
    "malformed_json": "a line that is not valid JSON",
    "not_utf8": "a line that is not UTF-8 text",
    "bad_record": "a JSON value that is not a valid record (fields, roles, types)",
    "placeholder_mismatch": "media placeholders in the text and media files differ in number",
    "missing_file": "a media file that does not exist",
    "is_directory": "a directory where a media file should be",
    "empty_file": "a media file of 0 bytes",
    "undecodable": "a media file no decoder can read",
    "truncated": "a media file cut short",
    "too_large": "an image above the decompression-bomb limit",
    "no_content": "a media file with no frames or samples",
    "non_finite": "media with NaN or infinite samples",
    "unsupported_values": "pixel values outside the range their image mode allows",
    "size_mismatch": "an InstructPix2Pix pair whose two images differ in size",
    "no_encoder": "a medium the model has no encoder for",
    "no_assistant_turn": "a conversation with nothing to learn (no assistant turn)",
    "no_supervised_tokens": "a conversation whose answers render to no token that carries loss",
    "too_long": "a sample that does not fit max_length without losing media or all answers",
    "oov_answer": "answer words the tokenizer can only write as its unknown token",
}


class DataError(ValueError):
    """A bad record or medium; `str(e)` is one line that names the file and line."""

    default_reason = "bad_record"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(_worker_original(message))
        self.reason = reason or self.default_reason
        if self.reason not in REASONS:
            raise ValueError(f"unknown bad-data reason {self.reason!r}")

    def __reduce__(self):  # keep the reason across processes (DataLoader workers)
        return type(self), (str(self), self.reason)

    def for_record(self, record_id: str) -> "DataError":
        """The same error with the record's id appended (the loop's message names all three)."""
        return type(self)(f"{self} (record {record_id!r})", self.reason)


class RecordError(DataError):
    default_reason = "bad_record"


class MediaError(DataError):
    default_reason = "undecodable"


class SampleError(DataError):
    default_reason = "bad_record"


def _worker_original(message: str) -> str:
    """A DataLoader worker's error reaches the main process as `type(e)(text)`, the text being
    "Caught X in DataLoader worker process k.\nOriginal Traceback ...\npkg.X: <message>":
    keep the one-line message it ends with (the reason does not travel; the type does)."""
    if not (message.startswith("Caught ") and "\nOriginal Traceback" in message):
        return message
    last = message.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last
