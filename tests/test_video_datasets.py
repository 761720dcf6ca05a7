"""datasets/webvid and datasets/videochat converters, run as a user would, on fixtures laid out
like the published files (CSV / JSON + tiny mp4 clips)."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from test_datasets import FIXTURES, read, run

from mmtune.data.formats.video import from_llava_video, from_videochat, from_webvid
from mmtune.data.formats.records import read_records
from mmtune.data.media.video import load_video

WEBVID = FIXTURES / "webvid"
VIDEOCHAT = FIXTURES / "videochat"


def assert_videos_decode(out) -> None:
    records, bad = read_records(out)
    assert not bad
    for r in records:
        for path in r.media["video"]:
            assert load_video(path, r.source, num_frames=4).shape[0] == 4


def test_webvid_convert(tmp_path):
    out = tmp_path / "out" / "webvid.jsonl"
    res = run("webvid", "--input", WEBVID / "results_2M_train.csv", "--video-root", WEBVID / "videos",
              "--out", out, "--check-videos")
    assert res.returncode == 0, res.stderr
    got = read(out)
    assert [r["id"] for r in got] == ["1066687636", "31353427", "1024138217"]
    assert got[0]["messages"][1] == {"role": "assistant", "content": "Red kite flying over a green field, slow motion"}
    assert got[0]["messages"][0]["content"].startswith("<video>\n")
    assert got[2]["videos"] == [os.path.relpath(WEBVID / "videos/012101_012150/1024138217.mp4", out.parent)]
    assert got[1]["meta"]["duration"] == "PT00H00M22S" and got[1]["meta"]["contentUrl"].startswith("https://")
    assert "read 3 items" in res.stdout and "wrote 3 records" in res.stdout and "missing videos: 0" in res.stdout
    assert_videos_decode(out)


def test_webvid_missing_videos_are_left_out_and_listed(tmp_path):
    root = tmp_path / "webvid"
    shutil.copytree(WEBVID, root)
    gone = root / "videos" / "006001_006050" / "31353427.mp4"
    gone.unlink()
    out = tmp_path / "w.jsonl"
    res = run("webvid", "--input", root / "results_2M_train.csv", "--video-root", root / "videos", "--out", out,
              "--check-videos", "--absolute")
    assert res.returncode == 0, res.stderr
    assert f"missing video: {gone} ({root / 'results_2M_train.csv'}:3)" in res.stderr
    assert "missing videos: 1 (items left out)" in res.stdout
    got = read(out)
    assert [r["id"] for r in got] == ["1066687636", "1024138217"] and os.path.isabs(got[0]["videos"][0])


def test_webvid_bad_csv_names_the_file(tmp_path):
    bad = tmp_path / "results.csv"
    bad.write_text("videoid,contentUrl\n1,http://x\n")
    res = run("webvid", "--input", bad, "--video-root", tmp_path, "--out", tmp_path / "o.jsonl")
    assert res.returncode == 1 and f"error: {bad}:1: missing column(s) ['page_dir', 'name']" in res.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_videochat_convert(tmp_path):
    out = tmp_path / "vc.jsonl"
    res = run("videochat", "--input", VIDEOCHAT / "videochat_instruct_11k.json", "--video-root", VIDEOCHAT,
              "--out", out, "--check-videos", "--limit", "5")
    assert res.returncode == 0, res.stderr
    got = read(out)
    assert got[1]["id"] == "1024138217"
    assert [m["content"] for m in got[1]["messages"]] == [
        "<video>\nWatch the video carefully and answer the question.\nWhat is the woman cooking?",
        "She is cooking pasta.", "Where is she?", "In a modern kitchen."]
    assert got[0]["messages"][0]["content"] == "<video>\nDescribe the following video in detail."  # empty "i" dropped
    assert_videos_decode(out)


def test_llava_style_video_convert(tmp_path):
    out = tmp_path / "ll.jsonl"
    res = run("videochat", "--format", "llava", "--input", VIDEOCHAT / "video_llava_style.json",
              "--video-root", VIDEOCHAT, "--out", out, "--limit", "1")
    assert res.returncode == 0, res.stderr
    got = read(out)
    assert len(got) == 1 and got[0]["id"] == "v_k_n9wFl2vZA"
    assert got[0]["messages"][0]["content"] == "<video>\nWhat is shown at the end of the clip?"


def test_readers_prepend_a_placeholder_and_name_bad_items():
    item = json.loads((VIDEOCHAT / "video_llava_style.json").read_text())[1]
    assert from_llava_video(item, "f[1]")["messages"][0]["content"] == "<video>\nWhat flies in the video?"
    with pytest.raises(ValueError, match=r"f\[0\]: QA\[0\]: empty question"):
        from_videochat({"video": "a.mp4", "QA": [{"i": "", "q": " ", "a": "x"}]}, "f[0]")
    with pytest.raises(ValueError, match=r"f\[2\]: 2 <video> placeholder"):
        from_llava_video({"video": "a.mp4", "conversations": [{"from": "human", "value": "<video><video>"},
                                                              {"from": "gpt", "value": "x"}]}, "f[2]")
    with pytest.raises(ValueError, match="f.csv:4: empty"):
        from_webvid({"videoid": "1", "page_dir": "", "name": "cap"}, "f.csv:4")
