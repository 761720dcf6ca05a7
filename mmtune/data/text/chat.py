"""Chat templates and the labels that go with them.

A conversation is rendered with a Jinja chat template (the tokenizer's own, or a named one
below). Which characters belong to each assistant turn is found by rendering the prefix up
to that turn with the generation prompt and the prefix including the turn: the difference
is the answer plus its end-of-turn token. Tokens overlapping those character spans carry
loss; nothing else does. This works for any prefix-stable template without per-template
code, and is checked, not assumed.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the human's questions.")


def _user_assistant(default_system: str | None) -> str:
    """Vicuna v1 / LLaVA v1 layout: `SYS USER: q ASSISTANT: a</s>USER: ...`."""
    system = (f"{{% if messages[0].role == 'system' %}}{{{{ messages[0].content }}}} "
              f"{{% else %}}{default_system} {{% endif %}}" if default_system else
              "{% if messages[0].role == 'system' %}{{ messages[0].content }} {% endif %}")
    return ("{{ bos_token }}" + system +
            "{% for m in messages %}{% if m.role == 'user' %}USER: {{ m.content }} "
            "{% elif m.role == 'assistant' %}ASSISTANT: {{ m.content }}{{ eos_token }}{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")

# Llama-2-chat: `<s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nq [/INST] a </s><s>[INST] q2 [/INST]`.
_LLAMA2 = ("{% if messages[0].role == 'system' %}{% set sys = messages[0].content %}"
           "{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
           "{% for m in msgs %}{% if m.role == 'user' %}{{ bos_token }}[INST] "
           "{% if loop.first and sys %}<<SYS>>\n{{ sys }}\n<</SYS>>\n\n{% endif %}{{ m.content }} [/INST]"
           "{% elif m.role == 'assistant' %} {{ m.content }} {{ eos_token }}{% endif %}{% endfor %}")

TEMPLATES: dict[str, str] = {
    # LLaVA-1.5 / Vicuna-1.1 conversation template (LLaVA's `conv_vicuna_v1`).
    "llava_v1": _user_assistant(LLAVA_SYSTEM),
    # Vicuna v1.1 itself (FastChat's `vicuna_v1.1`).
    "vicuna": _user_assistant(VICUNA_SYSTEM),
    "llama-2": _LLAMA2,
    # The same layout without a default system prompt (mmtune's tiny tokenizer uses it).
    "user_assistant": _user_assistant(None),
    # LLaVA's feature-alignment stage: media then caption, no instruction, no roles.
    "plain": ("{% for m in messages %}{% if m.role == 'assistant' %}{{ m.content }}{{ eos_token }}"
              "{% elif m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}"),
    "chatml": ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
}


class TemplateError(ValueError):
    pass


def resolve_template(tokenizer: PreTrainedTokenizerBase, name: str | None) -> str:
    if name is not None:
        if name not in TEMPLATES:
            raise TemplateError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)}")
        return TEMPLATES[name]
    if not tokenizer.chat_template:
        raise TemplateError("the tokenizer has no chat template; set model.tokenizer.chat_template "
                            f"to one of {', '.join(TEMPLATES)}")
    return tokenizer.chat_template


def _render(tokenizer, messages: list[dict], template: str, gen: bool) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=gen)


@dataclass
class Rendered:
    text: str
    assistant_spans: list[tuple[int, int]]  # character ranges that carry loss


def render(tokenizer, messages: list[dict], template: str) -> Rendered:
    """Full conversation text and the character spans of every assistant turn."""
    text = _render(tokenizer, messages, template, gen=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if not any(p["role"] == "user" for p in messages[:i]):
            raise TemplateError("an assistant turn comes before any user turn: there is no prompt "
                                "it answers, so it cannot be supervised")
        prompt = _render(tokenizer, messages[:i], template, gen=True)
        upto = _render(tokenizer, messages[: i + 1], template, gen=False)
        if not upto.startswith(prompt) or not text.startswith(upto):
            raise TemplateError("chat template is not prefix-stable: a turn renders differently "
                                "depending on what follows it, so labels cannot be placed")
        spans.append((len(prompt), len(upto)))
    return Rendered(text, spans)


def render_prompt(tokenizer, messages: list[dict], template: str) -> str:
    """Text up to and including the generation prompt, for answering `messages`' last user turn."""
    return _render(tokenizer, messages, template, gen=True)


def tokenize_with_labels(tokenizer, rendered: Rendered) -> tuple[list[int], list[bool]]:
    """Token ids, and for each token whether it starts inside an assistant span (carries loss).

    "Starts inside" rather than "overlaps": a tokenizer that merges across spaces can emit a
    token like ':▁' that begins in the role header and ends in the answer; it belongs to the
    prompt, which the model is given, not to the answer it must produce."""
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    supervised = []
    for start, end in enc["offset_mapping"]:
        supervised.append(end > start and any(s <= start < e for s, e in rendered.assistant_spans))
    return enc["input_ids"], supervised


def unknown_answer_words(tokenizer, rendered: Rendered, ids: list[int], supervised: list[bool]) -> list[str]:
    """The answer text that `ids` (from `tokenize_with_labels`) can only spell as the unknown
    token: the model would be trained to say `<unk>` there. Empty (and free) when there is none;
    byte-level tokenizers never produce it."""
    unk = tokenizer.unk_token_id
    if unk is None or not any(s and t == unk for t, s in zip(ids, supervised)):
        return []
    offsets = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [rendered.text[a:b] for t, s, (a, b) in zip(ids, supervised, offsets) if s and t == unk]
