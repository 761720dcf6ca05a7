"""Chat templates for transformers processors, which pass message content as a list of parts
(`[{"type": "image"}, {"type": "text", "text": ...}]`) where mmtune's records hold one string.

The exported template renders either form, and both to the same text: an image part becomes
`<image>\\n`, exactly what `mmtune chat` puts before a question, so a prompt built by
`processor.apply_chat_template` tokenises as mmtune's own does.
"""
from __future__ import annotations

CONTENT_MACRO = ("{% macro mm_text(c) %}{% if c is string %}{{ c }}{% else %}{% for p in c %}"
                 "{% if p.type == 'image' %}{{ '<image>\\n' }}{% elif p.type == 'text' %}{{ p.text }}"
                 "{% endif %}{% endfor %}{% endif %}{% endmacro %}")
# Where mmtune's templates (mmtune.data.text.chat.TEMPLATES) read a message's content.
CONTENT_READS = ("m.content", "messages[0].content")


def parts_template(template: str) -> str:
    """`template` with every content read going through the macro above. A template that reads
    content some other way is returned unchanged (it then takes string content only)."""
    if CONTENT_MACRO in template or not any(r in template for r in CONTENT_READS):
        return template
    for read in CONTENT_READS:
        template = template.replace(read, f"mm_text({read})")
    return CONTENT_MACRO + template


def check_string_content(tokenizer, folder) -> None:
    """mmtune's records hold string content. A released processor template written for content
    parts only (llava-hf's iterate `message['content'] | selectattr('type', ...)`) renders a
    string as nothing: training on it would silently drop every prompt and answer."""
    if not tokenizer.chat_template:
        return  # resolve_template asks for one by name when training starts
    probe = "mmtune-probe-text"
    text = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False)
    if probe not in text:
        raise ValueError(f"{folder}: its chat template renders no plain-text message content (it expects "
                         "content parts); set model.tokenizer.chat_template to one of mmtune's "
                         "(user_assistant is llava-1.5-hf's 'USER: ... ASSISTANT: ...', llava_v1 adds LLaVA's "
                         "system prompt)")
