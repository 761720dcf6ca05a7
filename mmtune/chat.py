"""`mmtune chat RUN`: one question, or an interactive multi-turn session with streamed answers.

A session keeps the conversation (messages and the media attached so far) and renders it with
the run's chat template each turn, exactly as training rendered multi-turn records; media
attached with /image, /video or /audio go with the next message.
"""
from __future__ import annotations

import argparse
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

MODALITIES = ("image", "video", "audio")  # as mmtune.batch.MEDIA_TOKENS (not imported: it loads torch)
COMMANDS = ("/image PATH, /video PATH, /audio PATH attach a file to your next message; "
            "/reset starts a new conversation; /quit ends")


class ChatError(ValueError):
    """A user mistake in a chat session (a missing file, a medium the model cannot read)."""


@dataclass
class Generation:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy (repeatable)
    top_p: float = 1.0


class ChatSession:
    """The conversation so far; `stream(text)` yields the answer's text as it is generated."""

    def __init__(self, model, cfg, generation: Generation | None = None) -> None:
        from .recipes.common import example_builder

        self.model = model.eval()
        self.generation = generation or Generation()
        self.encoder = example_builder(model, cfg, None)
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = []
        self.media: dict[str, list[str]] = {m: [] for m in MODALITIES}
        self.pending: list[tuple[str, str]] = []  # (modality, path) for the next message

    def attach(self, modality: str, path: str | Path) -> Path:
        if modality not in self.model.encoders:
            reads = ", ".join(self.model.encoders) or "text only"
            raise ChatError(f"this model has no {modality} encoder (it reads: {reads})")
        file = Path(path).expanduser()
        if not file.is_file():
            raise ChatError(f"{path}: no such file")
        self.pending.append((modality, str(file.resolve())))
        return file

    def _prompt(self, text: str):
        from .batch import MEDIA_TOKENS
        from .data.collate import collate
        from .data.formats.records import MEDIA_KEYS, parse_record

        placeholders = "".join(f"{MEDIA_TOKENS[m]}\n" for m, _ in self.pending)
        messages = [*self.messages, {"role": "user", "content": placeholders + text}]
        media = {m: list(paths) for m, paths in self.media.items()}
        for modality, path in self.pending:
            media[modality].append(path)
        record = parse_record({"id": "chat", "messages": messages,
                               **{MEDIA_KEYS[m]: p for m, p in media.items() if p}}, "chat", Path("."))
        batch = collate([self.encoder.encode_prompt(record)], self.model.tokenizer.pad_token_id, left_pad=True)
        return batch, messages, media

    def _commit(self, messages: list[dict], media: dict[str, list[str]], reply: str) -> None:
        self.messages = [*messages, {"role": "assistant", "content": reply}]
        self.media, self.pending = media, []

    def _generate(self, batch, streamer=None):
        import torch

        g = self.generation
        with torch.inference_mode():  # grad mode is per thread: set it where generation runs
            return self.model.generate(batch, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                                       top_p=g.top_p, streamer=streamer)

    def ask(self, text: str) -> str:
        """The whole answer at once."""
        batch, messages, media = self._prompt(text)
        reply = self.model.tokenizer.decode(self._generate(batch)[0], skip_special_tokens=True).strip()
        self._commit(messages, media, reply)
        return reply

    def stream(self, text: str) -> Iterator[str]:
        """The answer in pieces, as the model generates it (generation runs in a thread)."""
        from transformers import TextIteratorStreamer

        batch, messages, media = self._prompt(text)
        streamer = TextIteratorStreamer(self.model.tokenizer, skip_special_tokens=True)
        failed: list[BaseException] = []

        def run() -> None:
            try:
                self._generate(batch, streamer)
            except BaseException as e:  # re-raised below; the streamer must still end
                failed.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            yield piece
        thread.join()
        if failed:
            raise failed[0]
        self._commit(messages, media, "".join(pieces).strip())


def answer(model, cfg, image: str | None, question: str, max_new_tokens: int = 32) -> str:
    """One greedy answer about one image (or none): what the demo and the tests ask."""
    session = ChatSession(model, cfg, Generation(max_new_tokens))
    if image:
        session.attach("image", image)
    return session.ask(question)


def interactive(session: ChatSession, read: Callable[[str], str] = input, out=sys.stdout) -> None:
    """Read lines until /quit or end of input; commands start with '/'."""
    reads = ", ".join(session.model.encoders) or "text only"
    print(f"mmtune chat ({reads}). {COMMANDS}.", file=out, flush=True)
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return
        if not line:
            continue
        command, _, arg = line.partition(" ")
        if command in ("/quit", "/exit"):
            return
        if command == "/reset":
            session.reset()
            print("(new conversation)", file=out, flush=True)
            continue
        if command.startswith("/"):
            modality = command[1:]
            if modality not in MODALITIES or not arg.strip():
                print(f"unknown command {line!r}: {COMMANDS}", file=out, flush=True)
                continue
            try:
                session.attach(modality, arg.strip())
                print(f"(attached {arg.strip()}: it goes with your next message)", file=out, flush=True)
            except ChatError as e:
                print(f"error: {e}", file=out, flush=True)
            continue
        print("bot> ", end="", file=out, flush=True)
        try:
            for piece in session.stream(line):
                print(piece, end="", file=out, flush=True)
        except ValueError as e:  # the data errors (a file that does not decode, a stray <image>)
            session.pending = []
            print(f"error: {e}", end="", file=out)
        print(file=out, flush=True)


def _chat(args) -> None:
    from .recipes.common import load_run

    cfg, model = load_run(args.run)
    session = ChatSession(model, cfg, Generation(args.max_new_tokens, args.temperature, args.top_p))
    try:
        for modality in MODALITIES:
            for path in getattr(args, modality) or []:
                session.attach(modality, path)
    except ChatError as e:
        raise SystemExit(f"error: {e}") from None
    if args.question is None:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        interactive(session)
        return
    for piece in session.stream(args.question):
        print(piece, end="", flush=True)
    print()


class _IntermixedParser(argparse.ArgumentParser):
    """Lets the optional question follow options (`chat RUN --image X "question"`): plain
    argparse (before Python 3.13) gives an optional positional its empty match at the first
    positional chunk and then rejects the question as unrecognized."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def add_chat_parser(sub) -> None:
    c = sub.add_parser("chat", help="talk to a trained run: one question, or an interactive session",
                       description="With a question: answer it and exit. Without: an interactive "
                                   f"multi-turn session ({COMMANDS}).")
    c.add_argument("run")
    c.add_argument("question", nargs="?", help="ask this and exit (default: interactive session)")
    c.add_argument("--image", action="append", help="image file (repeatable)")
    c.add_argument("--video", action="append", help="video file, for Video-LLaMA runs")
    c.add_argument("--audio", action="append", help="audio file, for Video-LLaMA runs")
    c.add_argument("--max-new-tokens", type=int, default=32)
    c.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    c.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with temperature > 0)")
    c.set_defaults(fn=_chat)
    c.__class__ = _IntermixedParser  # sub.add_parser builds the parent's class; only chat needs this
