"""Chat templates and labels: exactly which tokens carry loss, for every named template.

Golden tests run with (a) mmtune's word-level tokenizer, where every word is one token, and
(b) small subword BPE tokenizers trained here (GPT-2-style ByteLevel and Llama-style
Metaspace), where a word's leading space is merged into its first token, so a token can sit
on the boundary between a role header and an answer.
"""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mmtune.data.text.chat import (
    LLAVA_SYSTEM,
    TEMPLATES,
    TemplateError,
    render,
    render_prompt,
    resolve_template,
    tokenize_with_labels,
)
from mmtune.batch import MediumSpec
from mmtune.data.collate import Dropped, Example, ExampleBuilder, SampleError
from mmtune.data.formats.records import Record
from mmtune.data.media.image import load_image
from mmtune.data.text.tokenizer import build_word_tokenizer, synthetic_words
from mmtune.batch import IGNORE

CHATML = ["<|im_start|>", "<|im_end|>"]
# The text each template puts after an assistant answer; it carries loss with the answer.
# (chatml's per-turn suffix is "<|im_end|>\n": the newline is part of the turn, as in Qwen's
# own fine-tuning code, so it is supervised too.)
END_OF_TURN = {"llava_v1": "</s>", "vicuna": "</s>", "llama-2": " </s>", "user_assistant": "</s>",
               "plain": "</s>", "chatml": "<|im_end|>\n"}


def _words(text: str) -> list[str]:
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return [w for w, _ in pre.pre_tokenize_str(text)]


@pytest.fixture(scope="module")
def word_tok():
    extra = _words(LLAVA_SYSTEM) + ["system", "user", "assistant", "be", "brief", "Be"]
    words = synthetic_words()
    tok = build_word_tokenizer(words + [w for w in dict.fromkeys(extra) if w not in words])
    tok.add_tokens(CHATML, special_tokens=True)
    return tok


# --- conversations ----------------------------------------------------------------------

SINGLE = [{"role": "user", "content": "<image>\nwhat colour is the shape ?"},
          {"role": "assistant", "content": "red"}]
MULTI = [{"role": "system", "content": "Be brief ."},
         {"role": "user", "content": "<image>\nwhat colour is the shape ?"},
         {"role": "assistant", "content": "red"},
         {"role": "user", "content": "what shape is it ?"},
         {"role": "assistant", "content": "a red circle ."}]
# Answers that reuse the prompt's words: labels follow positions, not text.
ECHO = [{"role": "user", "content": "red or blue ?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "red ?"},
        {"role": "assistant", "content": "red red"}]


def supervised_tokens(tok, messages, template_name):
    ids, sup = tokenize_with_labels(tok, render(tok, messages, TEMPLATES[template_name]))
    return [t for t, s in zip(tok.convert_ids_to_tokens(ids), sup) if s]


def marked(tok, messages, template_name) -> str:
    """All tokens, space-separated, with the supervised ones in [brackets]."""
    ids, sup = tokenize_with_labels(tok, render(tok, messages, TEMPLATES[template_name]))
    return " ".join(f"[{t}]" if s else t for t, s in zip(tok.convert_ids_to_tokens(ids), sup))


# --- (a) word-level tokenizer: golden token lists --------------------------------------


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_word_single_turn(word_tok, name):
    eot = "<|im_end|>" if name == "chatml" else "</s>"
    assert supervised_tokens(word_tok, SINGLE, name) == ["red", eot]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_word_multi_turn_with_system(word_tok, name):
    eot = "<|im_end|>" if name == "chatml" else "</s>"
    assert supervised_tokens(word_tok, MULTI, name) == ["red", eot, "a", "red", "circle", ".", eot]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_word_answers_repeating_prompt_words(word_tok, name):
    eot = "<|im_end|>" if name == "chatml" else "</s>"
    assert supervised_tokens(word_tok, ECHO, name) == ["red", eot, "red", "red", eot]


def test_word_full_golden_user_assistant(word_tok):
    assert marked(word_tok, MULTI, "user_assistant") == (
        "<s> Be brief . USER : <image> what colour is the shape ? ASSISTANT : [red] [</s>] "
        "USER : what shape is it ? ASSISTANT : [a] [red] [circle] [.] [</s>]")
    # No system message: no system text at all.
    assert marked(word_tok, SINGLE, "user_assistant") == (
        "<s> USER : <image> what colour is the shape ? ASSISTANT : [red] [</s>]")


def test_word_full_golden_llava_v1(word_tok):
    system = " ".join(_words(LLAVA_SYSTEM))
    # Without a system message LLaVA's default system prompt is used; it carries no loss.
    assert marked(word_tok, SINGLE, "llava_v1") == (
        f"<s> {system} USER : <image> what colour is the shape ? ASSISTANT : [red] [</s>]")
    # A system message replaces it.
    assert marked(word_tok, MULTI, "llava_v1") == (
        "<s> Be brief . USER : <image> what colour is the shape ? ASSISTANT : [red] [</s>] "
        "USER : what shape is it ? ASSISTANT : [a] [red] [circle] [.] [</s>]")


def test_word_full_golden_plain(word_tok):
    # "plain" (LLaVA stage 1): no roles, no system prompt; the user turn is usually just media.
    msgs = [{"role": "system", "content": "Be brief ."},
            {"role": "user", "content": "<image>"}, {"role": "assistant", "content": "a red circle"},
            {"role": "user", "content": "<image>"}, {"role": "assistant", "content": "blue"}]
    assert marked(word_tok, msgs, "plain") == (
        "<image> [a] [red] [circle] [</s>] <image> [blue] [</s>]")


def test_word_full_golden_chatml(word_tok):
    assert marked(word_tok, MULTI, "chatml") == (
        "<|im_start|> system Be brief . <|im_end|> "
        "<|im_start|> user <image> what colour is the shape ? <|im_end|> "
        "<|im_start|> assistant [red] [<|im_end|>] "
        "<|im_start|> user what shape is it ? <|im_end|> "
        "<|im_start|> assistant [a] [red] [circle] [.] [<|im_end|>]")


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_no_assistant_turn_supervises_nothing(word_tok, name):
    msgs = [{"role": "system", "content": "Be brief ."}, {"role": "user", "content": "what shape ?"}]
    assert supervised_tokens(word_tok, msgs, name) == []


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_assistant_turn_before_any_user_turn_is_refused(word_tok, name):
    """No prompt precedes it, so nothing could say which of its tokens are the answer."""
    with pytest.raises(TemplateError, match="before any user turn"):
        render(word_tok, [{"role": "assistant", "content": "red"}], TEMPLATES[name])


@pytest.mark.parametrize("name", ["llava_v1", "user_assistant", "chatml"])
def test_render_prompt_is_the_training_prefix(word_tok, name):
    """What generation sees is exactly the text before the first answer's span."""
    template = TEMPLATES[name]
    rendered = render(word_tok, SINGLE, template)
    prompt = render_prompt(word_tok, SINGLE[:1], template)
    assert rendered.assistant_spans[0][0] == len(prompt)
    assert rendered.text.startswith(prompt)


# --- (b) subword BPE tokenizers ---------------------------------------------------------

BPE_SPECIALS = ["<s>", "</s>", "<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "<image>"]
CORPUS = [
    "What colour is the shape? It is red.",
    "What shape is it? A red circle.",
    "The red circle is left of the blue square,\na green triangle.",
    "USER: ASSISTANT: system user assistant",
    "Be brief and answer in one word.",
    "reddish circles squared, shapes and colours",
] * 10


def _train_bpe(kind: str, vocab_size: int = 300, split: bool = True) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    if kind == "bytelevel":  # GPT-2 / Llama-3 style: "Ġred" = " red"
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BPE_SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:  # Llama-2 / SentencePiece style: "▁red" = " red"
        core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                      split=split)
        core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=split)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BPE_SPECIALS)
    core.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>", "<image>"])


@pytest.fixture(scope="module", params=["bytelevel", "metaspace"])
def bpe_tok(request):
    return _train_bpe(request.param)


BPE_SINGLE = [{"role": "user", "content": "<image>\nWhat colour is the shape?"},
              {"role": "assistant", "content": "It is red."}]
BPE_MULTI = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "<image>\nWhat colour is the shape?"},
             {"role": "assistant", "content": "red"},
             {"role": "user", "content": "What shape is it?"},
             {"role": "assistant", "content": "A red circle."},
             {"role": "user", "content": "And left of it?"},
             {"role": "assistant", "content": "The blue square,\na green triangle."}]


def _groups(ids, sup):
    """Runs of consecutive supervised token ids."""
    out, cur = [], []
    for i, s in zip(ids, sup):
        if s:
            cur.append(i)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def test_bpe_tokenizer_merges_leading_spaces(bpe_tok):
    """The property these tests rely on: a word's leading space is inside its first token."""
    toks = bpe_tok.convert_ids_to_tokens(bpe_tok("ASSISTANT: red circle", add_special_tokens=False)["input_ids"])
    assert any(t in ("Ġred", "▁red") for t in toks), toks


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("messages", [BPE_SINGLE, BPE_MULTI], ids=["single", "multi"])
def test_bpe_supervised_tokens_decode_to_answers(bpe_tok, name, messages):
    rendered = render(bpe_tok, messages, TEMPLATES[name])
    ids, sup = tokenize_with_labels(bpe_tok, rendered)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    groups = _groups(ids, sup)
    assert len(groups) == len(answers)
    for group, answer in zip(groups, answers):
        decoded = bpe_tok.decode(group)
        assert decoded in (answer + END_OF_TURN[name], " " + answer + END_OF_TURN[name]), decoded
    # Character-exact: the supervised tokens cover exactly the answer spans, and nothing
    # outside them (a leading space belongs to the span where the template puts one there).
    offsets = bpe_tok(rendered.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    covered = "".join(rendered.text[s:e] for (s, e), on in zip(offsets, sup) if on)
    assert covered == "".join(rendered.text[s:e] for s, e in rendered.assistant_spans)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_bpe_no_role_header_or_user_text_is_supervised(bpe_tok, name):
    rendered = render(bpe_tok, BPE_MULTI, TEMPLATES[name])
    ids, sup = tokenize_with_labels(bpe_tok, rendered)
    unsupervised = bpe_tok.decode([i for i, s in zip(ids, sup) if not s])
    for m in BPE_MULTI:
        if m["role"] != "assistant" and m["content"] in rendered.text:  # plain drops system
            assert m["content"].replace("<image>", "") in unsupervised.replace("<image>", "")
    # Every end-of-turn token after an answer is supervised; the others (user, system) are not.
    if name == "chatml":
        shown = sum(m["role"] != "assistant" for m in BPE_MULTI)
        assert unsupervised.count("<|im_end|>") == shown
    else:
        assert "</s>" not in unsupervised


def test_bpe_cross_space_merges_do_not_leak_header_into_labels():
    tok = _train_bpe("metaspace", split=False)  # merges may cross spaces ("is▁the▁shape")
    rendered = render(tok, BPE_MULTI, TEMPLATES["llava_v1"])
    enc = tok(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    _, sup = tokenize_with_labels(tok, rendered)
    straddling = [(s, e) for s, e in enc["offset_mapping"]
                  if any(s < a < e for a, _ in rendered.assistant_spans)]
    if not straddling:
        pytest.fail("precondition: expected a token straddling a header/answer boundary")
    in_span = [any(a <= i < b for a, b in rendered.assistant_spans) for i in range(len(rendered.text))]
    for (s, e), on in zip(enc["offset_mapping"], sup):
        if on:
            outside = "".join(rendered.text[i] for i in range(s, e) if not in_span[i])
            assert outside.strip() == "", f"supervised token {rendered.text[s:e]!r} includes {outside!r}"


# --- template resolution and checks -----------------------------------------------------


def test_resolve_template_named_and_tokenizer_own(word_tok):
    assert resolve_template(word_tok, "chatml") == TEMPLATES["chatml"]
    assert resolve_template(word_tok, None) == word_tok.chat_template == TEMPLATES["user_assistant"]


def test_resolve_template_unknown_name(word_tok):
    with pytest.raises(TemplateError, match=r"unknown chat template 'alpaca'.*llava_v1"):
        resolve_template(word_tok, "alpaca")


def test_resolve_template_tokenizer_without_template():
    tok = _train_bpe("bytelevel", vocab_size=120)
    assert not tok.chat_template
    with pytest.raises(TemplateError, match="no chat template.*chat_template"):
        resolve_template(tok, None)
    assert resolve_template(tok, "plain") == TEMPLATES["plain"]


def test_non_prefix_stable_template_raises(word_tok):
    # The number of messages is rendered up front: each prefix renders a different start.
    counting = ("{{ messages | length }} {% for m in messages %}{{ m.role }} : {{ m.content }} "
                "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}")
    with pytest.raises(TemplateError, match="prefix-stable"):
        render(word_tok, SINGLE, counting)
    # A template that marks the final turn differently from the others.
    last_marked = ("{% for m in messages %}{{ m.content }}{% if loop.last %} .{% endif %} "
                   "{% endfor %}")
    with pytest.raises(TemplateError, match="prefix-stable"):
        render(word_tok, MULTI, last_marked)


# --- ExampleBuilder: placeholder expansion and label masking ----------------------------

K = 5  # placeholder ids per image


def _png(path, colour=(255, 0, 0)):
    Image.new("RGB", (8, 8), colour).save(path)
    return str(path)


def _encoder(tok, template="user_assistant", **kw):
    spec = MediumSpec(placeholder_id=tok.convert_tokens_to_ids("<image>"), tokens=K, load=load_image,
                      blank=lambda: Image.new("RGB", (8, 8)),
                      preprocess=lambda images: torch.zeros(len(images), 3, 8, 8))
    return ExampleBuilder(tokenizer=tok, template=TEMPLATES[template], media={"image": spec}, **kw)


def _two_image_record(tmp_path) -> Record:
    paths = [_png(tmp_path / "a.png"), _png(tmp_path / "b.png", (0, 0, 255))]
    msgs = [{"role": "user", "content": "<image>\nwhat colour ?"}, {"role": "assistant", "content": "red"},
            {"role": "user", "content": "<image>\nand this ?"}, {"role": "assistant", "content": "blue"}]
    return Record(id="r1", messages=msgs, media={"image": paths}, source="d.jsonl:1")


@pytest.mark.parametrize("template", ["user_assistant", "llava_v1", "chatml"])
def test_encode_expands_placeholders_without_loss(word_tok, tmp_path, template):
    enc = _encoder(word_tok, template)
    pid = enc.media["image"].placeholder_id
    ex = enc.encode(_two_image_record(tmp_path))
    assert isinstance(ex, Example) and not ex.truncated
    assert len(ex.input_ids) == len(ex.labels)
    positions = [i for i, t in enumerate(ex.input_ids) if t == pid]
    assert len(positions) == 2 * K
    assert all(ex.labels[i] == IGNORE for i in positions)
    # Two runs of K consecutive placeholders.
    assert positions == list(range(positions[0], positions[0] + K)) + \
        list(range(positions[K], positions[K] + K))
    # Supervised labels are the token ids themselves, and only the answers.
    sup = [i for i, lab in enumerate(ex.labels) if lab != IGNORE]
    assert all(ex.labels[i] == ex.input_ids[i] for i in sup)
    eot = "<|im_end|>" if template == "chatml" else "</s>"
    assert word_tok.convert_ids_to_tokens([ex.input_ids[i] for i in sup]) == ["red", eot, "blue", eot]
    assert ex.media["image"].shape == (2, 3, 8, 8)


def test_expand_masks_placeholders_even_inside_answers(word_tok):
    enc = _encoder(word_tok)
    pid = enc.media["image"].placeholder_id
    ids = [10, pid, 11, pid, 12]
    record = Record(id="x", messages=[], media={"image": ["a", "b"]}, source="d.jsonl:7")
    out_ids, labels = enc.expand(ids, [True] * 5, record)
    assert out_ids == [10] + [pid] * K + [11] + [pid] * K + [12]
    assert labels == [10] + [IGNORE] * K + [11] + [IGNORE] * K + [12]
    out_ids, labels = enc.expand(ids, [False] * 5, record)
    assert labels == [IGNORE] * len(out_ids)


def test_expand_count_mismatch_names_record(word_tok):
    enc = _encoder(word_tok)
    pid = enc.media["image"].placeholder_id
    record = Record(id="x", messages=[], media={"image": ["a", "b"]}, source="d.jsonl:7")
    with pytest.raises(SampleError, match=r"d\.jsonl:7: 1 image placeholder.*but 2 image"):
        enc.expand([10, pid, 11], [False] * 3, record)


def test_encode_with_bpe_tokenizer(tmp_path):
    tok = _train_bpe("bytelevel")
    enc = _encoder(tok, "llava_v1")
    ex = enc.encode(_two_image_record(tmp_path))
    pid = enc.media["image"].placeholder_id
    assert ex.input_ids.count(pid) == 2 * K
    assert all(lab == IGNORE for t, lab in zip(ex.input_ids, ex.labels) if t == pid)
    sup = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE]
    assert tok.decode(sup) == " red</s> blue</s>"
