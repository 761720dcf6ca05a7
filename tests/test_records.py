"""Reading JSONL records strictly, and what the collator does with bad or long samples."""
from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmtune.data.text.chat import TEMPLATES
from mmtune.batch import MediumSpec
from mmtune.data.collate import Dropped, Example, ExampleBuilder, SampleError, collate
from mmtune.data.formats.readers import from_mmtune
from mmtune.data.media.image import MediaError, load_image
from mmtune.data.formats.records import Record, RecordError, parse_record, read_records
from mmtune.data.text.tokenizer import build_word_tokenizer, synthetic_words
from mmtune.batch import IGNORE

K = 4  # placeholder ids per image


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(synthetic_words())


def png(path, colour=(255, 0, 0), size=(8, 8)):
    Image.new("RGB", size, colour).save(path)
    return path


def write_jsonl(path, *lines):
    """Each line a dict (dumped as JSON) or a raw string written as is."""
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


def qa(question="<image>\nwhat colour ?", answer="red", **extra):
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}], **extra}


GOOD = qa(id="g", images=["img/a.png"])


def read_error(path) -> str:
    with pytest.raises(RecordError) as e:
        read_records(path)
    return str(e.value)


# --- read_records: every problem names file:line ----------------------------------------


def test_read_records_good_file(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", GOOD, "", qa("what shape ?", "circle", id=7, meta={"s": 1}))
    records, skipped = read_records(path)
    assert skipped == []
    assert [r.id for r in records] == ["g", "7"]
    assert [r.source for r in records] == [f"{path}:1", f"{path}:3"]  # blank lines still count
    assert records[0].media == {"image": [str(tmp_path / "img" / "a.png")]}
    assert records[1].media == {} and records[1].meta == {"s": 1}
    assert records[0].messages == GOOD["messages"]


def test_record_id_defaults_to_its_location(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", qa("hi", "red"))
    (record,), _ = read_records(path)
    assert record.id == f"{path}:1"


@pytest.mark.parametrize("line, message", [
    ('{"messages": [', "malformed JSON"),
    ("[1, 2]", "a record must be a JSON object"),
    ({"id": "x"}, "field 'messages' must be a non-empty list"),
    ({"messages": []}, "field 'messages' must be a non-empty list"),
    ({"messages": "hi"}, "field 'messages' must be a non-empty list"),
    ({"messages": [{"role": "gpt", "content": "x"}]}, "messages[0] must be {'role': one of"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]},
     "messages[1] must be {'role': one of"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0] must be"),
    ({"messages": [{"role": "user"}]}, "messages[0] must be"),
    ({"messages": ["hi"]}, "messages[0] must be"),
    (qa(), "1 <image> placeholder(s) in the messages but 0 entries in 'images'"),
    (qa("what ?", images=["a.png"]), "0 <image> placeholder(s) in the messages but 1 entries in 'images'"),
    (qa("<image> <image>", images=["a.png"]), "2 <image> placeholder(s)"),
    (qa("<video> what ?"), "1 <video> placeholder(s) in the messages but 0 entries in 'videos'"),
    (qa(images="a.png"), "field 'images' must be a list of paths"),
    (qa(images=[1]), "field 'images' must be a list of paths"),
    (qa("hi", image="a.png"), "unknown field(s) ['image']"),
    (qa("hi", conversations=[], extra=1), "unknown field(s) ['conversations', 'extra']"),
])
def test_read_records_errors_name_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "d.jsonl", GOOD, "", line)
    msg = read_error(path)
    assert msg.startswith(f"{path}:3: "), msg
    assert message in msg


def test_malformed_json_says_where_in_the_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", '{"messages": [}')
    assert re.fullmatch(re.escape(f"{path}:1: malformed JSON (") + r".*, column \d+\)", read_error(path))


def test_read_records_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_records(tmp_path / "nope.jsonl")


def test_non_utf8_line_is_named_and_a_bom_is_not_data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n" +
                     json.dumps(qa(answer="@@", id="l1")).encode().replace(b"@@", b"caf\xe9") + b"\n")
    with pytest.raises(RecordError, match=re.escape(f"{path}:2: not UTF-8 text (byte 0xe9")):
        read_records(path)
    records, skipped = read_records(path, skip_bad=True)
    assert [r.id for r in records] == ["g"] and [s.kind for s in skipped] == ["not_utf8"]


def test_empty_or_directory_data_file_is_named(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"\n")
    for skip in (False, True):
        with pytest.raises(RecordError, match=re.escape(f"data file {tmp_path / 'empty.jsonl'} has no records")):
            read_records(tmp_path / "empty.jsonl", skip_bad=skip)
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_records(tmp_path / "dir.jsonl")


def test_skip_bad_skips_and_returns_reasons(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", GOOD, "{not json", {"id": "x"},
                       qa("hi", images=["a.png"]), qa("hi", "ok", id="g2"),
                       {"messages": [{"role": "robot", "content": "x"}]}, qa("hi", foo=1))
    records, skipped = read_records(path, skip_bad=True)
    assert [r.id for r in records] == ["g", "g2"]
    assert len(skipped) == 5
    assert [s.reason.split(": ", 1)[0] for s in skipped] == [f"{path}:{n}" for n in (2, 3, 4, 6, 7)]
    assert [s.kind for s in skipped] == ["malformed_json", "bad_record", "placeholder_mismatch",
                                         "bad_record", "bad_record"]
    assert [s.id for s in skipped] == ["", "x", "", "", ""]  # qa() gives no id
    assert "malformed JSON" in skipped[0].reason
    assert "'messages'" in skipped[1].reason
    assert "placeholder" in skipped[2].reason
    assert "role" in skipped[3].reason
    assert "unknown field" in skipped[4].reason


def test_relative_media_paths_resolve_against_the_jsonl_directory(tmp_path, monkeypatch):
    sub = tmp_path / "data" / "split"
    sub.mkdir(parents=True)
    absolute = str(tmp_path / "elsewhere" / "z.png")
    path = write_jsonl(sub / "d.jsonl", qa("<image> <image> <image>",
                                           images=["a.png", "imgs/b.png", absolute]))
    monkeypatch.chdir(tmp_path)  # not the JSONL's directory
    (record,), _ = read_records(path)
    assert record.media["image"] == [str(sub / "a.png"), str(sub / "imgs" / "b.png"), absolute]
    # A relative path to the JSONL file itself still resolves correctly.
    (record,), _ = read_records("data/split/d.jsonl")
    assert [str((tmp_path / p).resolve()) if not p.startswith("/") else p
            for p in record.media["image"]] == [str(sub / "a.png"), str(sub / "imgs" / "b.png"), absolute]


# --- formats.from_mmtune validates with parse_record ------------------------------------


@pytest.mark.parametrize("obj", [
    {"id": "x"},
    {"id": "x", "messages": [{"role": "bot", "content": "x"}]},
    {"id": "x", **qa()},
    {"id": "x", **qa("hi", image="a.png")},
    {"id": "x", **qa(images="a.png")},
])
def test_from_mmtune_rejects_what_read_records_rejects(obj):
    with pytest.raises(RecordError) as from_records:
        parse_record(obj, "m.jsonl:4", Path("."))
    with pytest.raises(ValueError) as from_formats:
        from_mmtune(obj, "m.jsonl:4")
    assert str(from_formats.value) == str(from_records.value)


def test_from_mmtune_keeps_paths_verbatim_and_is_stricter_about_ids():
    rec = {"id": "r", "messages": [{"role": "user", "content": "<image>"}],
           "images": ["./a/../b.png"], "videos": []}
    assert from_mmtune(rec, "m.jsonl:1") == {"id": "r", "messages": rec["messages"],
                                             "images": ["./a/../b.png"]}
    with pytest.raises(ValueError, match=re.escape("m.jsonl:2: missing field 'id'")):
        from_mmtune({"messages": [{"role": "user", "content": "x"}]}, "m.jsonl:2")
    with pytest.raises(ValueError, match=re.escape("m.jsonl:3: field 'meta' must be an object")):
        from_mmtune({"id": "r", "messages": [{"role": "user", "content": "x"}], "meta": [1]}, "m.jsonl:3")
    with pytest.raises(ValueError, match=re.escape("m.jsonl:4: field 'images'[0] must be a non-empty")):
        from_mmtune({"id": "r", "messages": [{"role": "user", "content": "<image>"}], "images": [""]},
                    "m.jsonl:4")


# --- ExampleBuilder: bad media, truncation, nothing to learn ----------------------------


def image_spec(tok) -> MediumSpec:
    return MediumSpec(placeholder_id=tok.convert_tokens_to_ids("<image>"), tokens=K, load=load_image,
                      blank=lambda: Image.new("RGB", (8, 8)),
                      preprocess=lambda images: torch.zeros(len(images), 3, 8, 8))


def encoder(tok, **kw) -> ExampleBuilder:
    kw.setdefault("media", {"image": image_spec(tok)})
    return ExampleBuilder(tokenizer=tok, template=TEMPLATES["user_assistant"], **kw)


def one_record(tmp_path, obj, name="d.jsonl") -> Record:
    (record,), _ = read_records(write_jsonl(tmp_path / name, obj))
    return record


def test_missing_image_names_record_and_path(tok, tmp_path):
    record = one_record(tmp_path, qa(images=["missing.png"]))
    with pytest.raises(MediaError) as e:
        encoder(tok).encode(record)
    msg = str(e.value)
    assert f"{tmp_path / 'd.jsonl'}:1" in msg
    assert str(tmp_path / "missing.png") in msg and "does not exist" in msg


def test_missing_image_with_skip_bad_is_dropped(tok, tmp_path):
    record = one_record(tmp_path, qa(id="m", images=["missing.png"]))
    out = encoder(tok, skip_bad=True).encode(record)
    assert isinstance(out, Dropped) and out.id == "m"
    assert str(tmp_path / "missing.png") in out.reason and f"{tmp_path / 'd.jsonl'}:1" in out.reason


def test_corrupt_png_is_a_clear_media_error(tok, tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "PNG")
    data = buf.getvalue()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("half.png", "text.png"):
        record = one_record(tmp_path, qa(images=[name]))
        with pytest.raises(MediaError, match=re.escape(f"{tmp_path / 'd.jsonl'}:1: image "
                                                        f"{tmp_path / name} cannot be decoded")):
            encoder(tok).encode(record)
        out = encoder(tok, skip_bad=True).encode(record)
        assert isinstance(out, Dropped) and "cannot be decoded" in out.reason


def test_blank_media_does_not_read_files(tok, tmp_path):
    record = one_record(tmp_path, qa(images=["missing.png"]))
    ex = encoder(tok, blank_media=True).encode(record)
    assert isinstance(ex, Example) and ex.media["image"].shape == (1, 3, 8, 8)


def test_image_count_mismatch_after_tokenisation_names_record(tok, tmp_path):
    # The record is valid, but the model is told a different placeholder id.
    png(tmp_path / "a.png")
    record = one_record(tmp_path, qa(images=["a.png"]))
    enc = encoder(tok, media={"image": dataclasses.replace(image_spec(tok),
                                                           placeholder_id=tok.convert_tokens_to_ids("<video>"))})
    with pytest.raises(SampleError, match=re.escape(f"{tmp_path / 'd.jsonl'}:1: 0 image placeholder")):
        enc.encode(record)


LONG = {"id": "long", "images": ["a.png"], "messages": [
    {"role": "user", "content": "<image>\nwhat colour is the shape ?"},
    {"role": "assistant", "content": "red"},
    {"role": "user", "content": "what shape is it ?"},
    {"role": "assistant", "content": "a red circle on the left"}]}


def _full(tok, tmp_path):
    png(tmp_path / "a.png")
    record = one_record(tmp_path, LONG)
    full = encoder(tok, max_length=10_000).encode(record)
    pid = tok.convert_tokens_to_ids("<image>")
    last_slot = max(i for i, t in enumerate(full.input_ids) if t == pid)
    return record, full, pid, last_slot


def test_truncation_keeps_every_image_token(tok, tmp_path):
    record, full, pid, last_slot = _full(tok, tmp_path)
    assert not full.truncated and full.input_ids.count(pid) == K
    first_answer = full.labels.index(tok.convert_tokens_to_ids("red"))
    assert last_slot < first_answer
    max_length = first_answer + 4  # keeps "red </s>" and a little of the next turn
    assert max_length < len(full.input_ids)
    ex = encoder(tok, max_length=max_length).encode(record)
    assert isinstance(ex, Example) and ex.truncated
    assert len(ex.input_ids) == len(ex.labels) == max_length
    assert ex.input_ids == full.input_ids[:max_length] and ex.labels == full.labels[:max_length]
    assert ex.input_ids.count(pid) == K
    assert ex.media["image"].shape[0] == 1


def test_truncation_exactly_after_the_last_image_token(tok, tmp_path):
    record, full, pid, last_slot = _full(tok, tmp_path)
    # Every image token survives, but no answer token does: nothing to learn from.
    with pytest.raises(SampleError, match=re.escape(f"{tmp_path / 'd.jsonl'}:1: no supervised tokens "
                                                    f"after truncation") + ".*record 'long'"):
        encoder(tok, max_length=last_slot + 1).encode(record)
    out = encoder(tok, max_length=last_slot + 1, skip_bad=True).encode(record)
    assert isinstance(out, Dropped) and "no supervised tokens after truncation" in out.reason
    assert out.kind == "too_long"


@pytest.mark.parametrize("cut", [1, K - 1, K])
def test_truncation_into_image_tokens_drops_the_sample(tok, tmp_path, cut):
    record, full, pid, last_slot = _full(tok, tmp_path)
    first_slot = last_slot - K + 1
    max_length = first_slot + cut - 1 if cut < K else first_slot
    with pytest.raises(SampleError, match="would cut media tokens"):
        encoder(tok, max_length=max_length).encode(record)
    out = encoder(tok, max_length=max_length, skip_bad=True).encode(record)
    assert isinstance(out, Dropped) and out.id == "long" and out.kind == "too_long"
    assert "media" in out.reason


def test_sequence_exactly_max_length_is_not_truncated(tok, tmp_path):
    record, full, pid, last_slot = _full(tok, tmp_path)
    ex = encoder(tok, max_length=len(full.input_ids)).encode(record)
    assert isinstance(ex, Example) and not ex.truncated and ex.input_ids == full.input_ids


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "<image>\nwhat colour ?"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "<image>"}],
])
def test_no_assistant_turn_is_an_error_or_a_counted_drop(tok, tmp_path, messages):
    png(tmp_path / "a.png")
    record = one_record(tmp_path, {"id": "q", "messages": messages, "images": ["a.png"]})
    with pytest.raises(SampleError, match=re.escape(f"{tmp_path / 'd.jsonl'}:1: no assistant turn")):
        encoder(tok).encode(record)
    out = encoder(tok, skip_bad=True).encode(record)
    assert out.id == "q" and out.kind == "no_assistant_turn"


def test_collate_counts_dropped_and_truncated(tok, tmp_path):
    record, full, pid, last_slot = _full(tok, tmp_path)
    short = one_record(tmp_path, qa("what shape ?", "circle", id="short"), "s.jsonl")
    no_answer = one_record(tmp_path, {"id": "q", "messages": [{"role": "user", "content": "hi"}]}, "q.jsonl")
    cut = len(full.input_ids) - 3
    enc = encoder(tok, max_length=cut, skip_bad=True)
    examples = [enc.encode(record), enc.encode(no_answer), enc.encode(short),
                encoder(tok, max_length=last_slot, skip_bad=True).encode(record)]
    pad = tok.pad_token_id
    batch = collate(examples, pad)
    assert batch.ids == ["long", "short"]
    assert batch.truncated == 1
    assert [d.kind for d in batch.dropped] == ["no_assistant_turn", "too_long"]
    assert [str(d).split(": ", 1)[0] for d in batch.dropped] == ["q", "long"]
    n_short = len(examples[2].input_ids)
    assert batch.input_ids.shape == (2, cut)
    assert batch.input_ids[1, n_short:].eq(pad).all()
    assert batch.labels[1, n_short:].eq(IGNORE).all()
    assert batch.attention_mask.sum(1).tolist() == [cut, n_short]
    assert batch.media["image"].shape == (1, 3, 8, 8) and batch.media_per_row == {"image": [1, 0]}
    assert int(batch.input_ids.eq(pid).sum()) == K


def test_collate_left_pad_and_all_dropped(tok, tmp_path):
    a = Example("a", [5, 6, 7], [IGNORE, 6, 7], {})
    b = Example("b", [8], [8], {}, truncated=True)
    batch = collate([a, b], pad_id=0, left_pad=True)
    assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch.labels.tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, 8]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.truncated == 1
    empty = collate([Dropped("x", "why")], pad_id=0)
    assert empty.input_ids.shape == (0, 0) and empty.dropped == [Dropped("x", "why")] and empty.truncated == 0


# --- bugs found by these tests, fixed ------------------------------------


def test_caption_task_keeps_placeholders_glued_to_text(tok, tmp_path):
    png(tmp_path / "a.png")
    record = one_record(tmp_path, qa("<image>what colour ?", "red", images=["a.png"]))
    ex = encoder(tok, caption_task=True).encode(record)
    assert isinstance(ex, Example) and ex.input_ids.count(tok.convert_tokens_to_ids("<image>")) == K


def test_placeholder_split_across_messages_is_not_counted(tmp_path):
    obj = {"messages": [{"role": "user", "content": "look <ima"}, {"role": "assistant", "content": "ge> ok"}],
           "images": ["a.png"]}
    with pytest.raises(RecordError, match="0 <image> placeholder"):
        read_records(write_jsonl(tmp_path / "d.jsonl", obj))
