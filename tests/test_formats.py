import json
import re

import pytest

from mmtune.data.formats.readers import (
    FORMATS,
    convert,
    from_alpaca,
    from_llava,
    from_mmtune,
    from_sharegpt,
    read_json_or_jsonl,
    rebase_media,
    write_jsonl,
)


def test_from_llava_keeps_image_placeholder():
    sample = {"id": "004539375", "image": "00453/004539375.jpg", "conversations": [
        {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
        {"from": "gpt", "value": "select luxury furniture"}]}
    assert from_llava(sample, "x.json[0]") == {
        "id": "004539375",
        "messages": [
            {"role": "user", "content": "Render a clear and concise summary of the photo.\n<image>"},
            {"role": "assistant", "content": "select luxury furniture"}],
        "images": ["00453/004539375.jpg"],
    }


def test_from_llava_prepends_missing_placeholder_to_first_user_turn():
    sample = {"id": 7, "image": "a.jpg", "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "What is it?"},
        {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "Colour?"},
        {"from": "gpt", "value": "Black."}]}
    assert from_llava(sample, "x.json[0]") == {
        "id": "7",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "<image>\nWhat is it?"},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Colour?"},
            {"role": "assistant", "content": "Black."}],
        "images": ["a.jpg"],
    }


def test_from_llava_text_only_has_no_media_keys():
    sample = {"id": "i6IyJda_0", "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    assert from_llava(sample, "x.json[3]") == {
        "id": "i6IyJda_0",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    }


def test_from_llava_placeholder_without_image_is_an_error():
    sample = {"id": "1", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]}
    with pytest.raises(ValueError, match=re.escape("x.json[4]: 1 <image> placeholder(s) in the messages but 0 file(s) in 'images'")):
        from_llava(sample, "x.json[4]")


@pytest.mark.parametrize("sample, message", [
    ({"id": "1"}, "d.json[2]: missing field 'conversations'"),
    ({"id": "1", "conversations": []}, "d.json[2]: field 'conversations' is empty"),
    ({"id": "1", "conversations": [{"from": "bot", "value": "x"}]},
     "d.json[2]: conversations[0]: field 'from' is 'bot'"),
    ({"id": "1", "conversations": [{"from": "human", "value": 3}]},
     "d.json[2]: conversations[0]: field 'value' must be str, got int"),
    ({"id": "1", "image": ["a.jpg"], "conversations": [{"from": "human", "value": "x"}]},
     "d.json[2]: field 'image' must be str, got list"),
    ({"id": "1", "image": "a.jpg", "conversations": [{"from": "gpt", "value": "x"}]},
     "d.json[2]: field 'conversations' has no human turn to hold <image>"),
])
def test_from_llava_errors_name_where_and_field(sample, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        from_llava(sample, "d.json[2]")


def test_from_sharegpt_conversations_and_messages():
    conv = {"conversations": [
        {"from": "system", "value": "S"}, {"from": "user", "value": "Q"},
        {"from": "assistant", "value": "A"}, {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]}
    assert from_sharegpt(conv, "s.jsonl:5") == {
        "id": "s.jsonl:5",
        "messages": [
            {"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"}, {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A2"}],
    }
    msgs = {"id": "m1", "images": ["p.png"], "messages": [
        {"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}]}
    assert from_sharegpt(msgs, "s.jsonl:6") == {
        "id": "m1",
        "messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}],
        "images": ["p.png"],
    }


def test_from_sharegpt_bad_role():
    with pytest.raises(ValueError, match=re.escape("s.jsonl:1: messages[1]: field 'role' is 'gpt'")):
        from_sharegpt({"messages": [{"role": "user", "content": "a"}, {"role": "gpt", "content": "b"}]}, "s.jsonl:1")


def test_from_alpaca():
    assert from_alpaca({"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}, "a.json[0]") == {
        "id": "a.json[0]",
        "messages": [{"role": "user", "content": "Translate.\n\nBonjour"},
                     {"role": "assistant", "content": "Hello"}],
    }
    assert from_alpaca({"id": "z", "instruction": "Say hi.", "input": "", "output": "hi"}, "a.json[1]") == {
        "id": "z",
        "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}],
    }
    with pytest.raises(ValueError, match=re.escape("a.json[2]: missing field 'output'")):
        from_alpaca({"instruction": "x"}, "a.json[2]")


def test_from_mmtune_validates_and_drops_empty_media():
    rec = {"id": "r", "messages": [{"role": "user", "content": "<video><audio>hi"},
                                   {"role": "assistant", "content": "ok"}],
           "images": [], "videos": ["v.mp4"], "audios": ["a.wav"], "meta": {"src": "t"}}
    assert from_mmtune(rec, "m.jsonl:1") == {
        "id": "r",
        "messages": [{"role": "user", "content": "<video><audio>hi"}, {"role": "assistant", "content": "ok"}],
        "videos": ["v.mp4"], "audios": ["a.wav"], "meta": {"src": "t"},
    }
    with pytest.raises(ValueError, match=re.escape("m.jsonl:2: 0 <video> placeholder(s) in the messages but 1 entries in 'videos'")):
        from_mmtune({"id": "r", "messages": [{"role": "user", "content": "x"}], "videos": ["v.mp4"]}, "m.jsonl:2")
    with pytest.raises(ValueError, match=re.escape("m.jsonl:3: unknown field(s) ['image']")):
        from_mmtune({"id": "r", "messages": [{"role": "user", "content": "x"}], "image": "a.jpg"}, "m.jsonl:3")


def test_read_jsonl_reports_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b",\n')
    it = read_json_or_jsonl(path)
    assert next(it) == (f"{path}:1", {"id": "a"})
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: malformed JSON")):
        next(it)


def test_converter_input_not_utf8_names_the_line(tmp_path):
    import gzip

    lines = b'{"id": "a"}\n{"id": "caf\xe9"}\n'  # Latin-1, as old exports are
    for name, data in (("d.jsonl", lines), ("d.jsonl.gz", gzip.compress(lines))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name}:2: not UTF-8 text (byte 0xe9")):
            list(read_json_or_jsonl(tmp_path / name))
    (tmp_path / "d.json").write_bytes(b'[{"id": "caf\xe9"}]')
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'd.json'}: not UTF-8 text")):
        list(read_json_or_jsonl(tmp_path / "d.json"))


def test_read_jsonl_non_object_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('[1, 2]\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: expected a JSON object, got list")):
        list(read_json_or_jsonl(path))


def test_read_json_list_and_errors(tmp_path):
    good = tmp_path / "d.json"
    good.write_text(json.dumps([{"id": "a"}, {"id": "b"}]))
    assert list(read_json_or_jsonl(good)) == [(f"{good}[0]", {"id": "a"}), (f"{good}[1]", {"id": "b"})]
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"id": "a"},\n{"id": }\n]')
    with pytest.raises(ValueError, match=re.escape(f"{bad}:3: malformed JSON")):
        list(read_json_or_jsonl(bad))
    obj = tmp_path / "obj.json"
    obj.write_text('{"id": "a"}')
    with pytest.raises(ValueError, match=re.escape(f"{obj}: expected a JSON list of objects, got dict")):
        list(read_json_or_jsonl(obj))
    with pytest.raises(ValueError, match="expected .json or .jsonl"):
        list(read_json_or_jsonl(tmp_path / "d.csv"))


def test_convert_dispatch_and_unknown_format(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "I", "output": "O"}) + "\n")
    assert list(convert(path, "alpaca")) == [{
        "id": f"{path}:1",
        "messages": [{"role": "user", "content": "I"}, {"role": "assistant", "content": "O"}],
    }]
    assert sorted(FORMATS) == ["alpaca", "dolly", "llava", "mmtune", "sharegpt"]
    with pytest.raises(ValueError, match=re.escape("unknown data format 'csv'; known: alpaca, dolly, llava, mmtune, sharegpt")):
        list(convert(path, "csv"))


def test_convert_error_names_line(tmp_path):
    path = tmp_path / "l.jsonl"
    lines = [{"id": "1", "conversations": [{"from": "human", "value": "hi"}]},
             {"id": "2", "conversations": [{"from": "human", "value": "<image> hi"}]}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: 1 <image> placeholder(s)")):
        list(convert(path, "llava"))


def test_rebase_media(tmp_path):
    rec = {"id": "a", "messages": [], "images": ["sub/x.jpg", "/abs/y.jpg"]}
    out = rebase_media(rec, tmp_path / "imgs", tmp_path / "out")
    assert out["images"] == ["../imgs/sub/x.jpg", "/abs/y.jpg"]
    assert rec["images"] == ["sub/x.jpg", "/abs/y.jpg"]  # input untouched
    out = rebase_media(rec, tmp_path / "imgs", tmp_path / "out", absolute=True)
    assert out["images"] == [str(tmp_path / "imgs" / "sub" / "x.jpg"), "/abs/y.jpg"]


def test_write_jsonl_roundtrip(tmp_path):
    recs = [{"id": "é", "messages": [{"role": "user", "content": "ünï"}]}]
    path = tmp_path / "sub" / "o.jsonl"
    assert write_jsonl(recs, path) == 1
    assert path.read_text(encoding="utf-8") == '{"id": "é", "messages": [{"role": "user", "content": "ünï"}]}\n'
    assert [from_mmtune(o, w) for w, o in read_json_or_jsonl(path)] == recs
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp file left behind


def test_write_jsonl_failure_leaves_no_partial_file(tmp_path):
    path = tmp_path / "o.jsonl"

    def records():
        yield {"id": "a", "messages": []}
        raise ValueError("bad item")

    with pytest.raises(ValueError, match="bad item"):
        write_jsonl(records(), path)
    assert list(tmp_path.iterdir()) == []
