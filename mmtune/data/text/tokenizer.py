"""Tokenizers: a real one from disk, or a small word-level one for tiny synthetic models.

Media placeholders (`<image>`, ...) are added as special tokens so each is exactly one id
that the collator can expand. They are never looked up in the LLM's embedding table (the
model fills their positions with projected features), so the LLM's vocabulary is not resized.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ...batch import MEDIA_TOKENS
from ...config import TokenizerConfig
from .chat import TEMPLATES

VOCAB_FILE = Path(__file__).with_name("synthetic_vocab.json")
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
TEMPLATE_WORDS = ["USER", "ASSISTANT", ":"]


def synthetic_words() -> list[str]:
    """Every word the synthetic tasks use, in a fixed order (ids must not depend on data). It
    ships as a preset asset, so tiny models need not import the tasks that generate data."""
    return json.loads(VOCAB_FILE.read_text())["words"]


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: whitespace/punctuation split, one id per word, `<unk>` otherwise."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(MEDIA_TOKENS.values()) + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>", eos_token="</s>",
                                  additional_special_tokens=list(MEDIA_TOKENS.values()))
    tok.chat_template = TEMPLATES["user_assistant"]
    return tok


def load_tokenizer(cfg: TokenizerConfig, llm_path: str | None,
                   media: tuple[str, ...] = tuple(MEDIA_TOKENS)) -> PreTrainedTokenizerBase:
    """`media`: the modalities whose placeholder token the tokenizer must have -- only those the
    model has encoders for, so a tokenizer saved with a model holds no id past its embedding
    table it has no use for (an image model gets no `<video>`/`<audio>`). `media=()` for a
    projector's instruction tokenizer: its vocabulary must stay the size of the Q-Former's word
    embeddings (instructions never hold placeholders)."""
    if cfg.type == "synthetic":
        tok = build_word_tokenizer(synthetic_words())
    elif cfg.type == "auto":
        path = cfg.path or llm_path
        if path is None:
            raise ValueError("model.tokenizer.path (or model.llm.path) is needed for type 'auto'")
        tok = AutoTokenizer.from_pretrained(path)
    else:
        raise ValueError(f"model.tokenizer.type: {cfg.type!r} is not one of 'auto', 'synthetic'")
    missing = [MEDIA_TOKENS[m] for m in media if MEDIA_TOKENS[m] not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    if tok.pad_token is None:  # Llama/Vicuna ship none; padding is masked out anyway
        tok.pad_token = tok.unk_token or tok.eos_token
    if cfg.chat_template is not None:
        tok.chat_template = TEMPLATES[cfg.chat_template] if cfg.chat_template in TEMPLATES else cfg.chat_template
    return tok
