"""The datasets/*/convert.py scripts, run as a user would, on fixtures laid out like the
published LLaVA files."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"

PRETRAIN_RECORDS = [
    {"id": "004539375",
     "messages": [{"role": "user", "content": "Render a clear and concise summary of the photo.\n<image>"},
                  {"role": "assistant", "content": "select luxury furniture 3 - inch gel memory foam mattress topper"}],
     "images": ["00453/004539375.jpg"]},
    {"id": "004538986",
     "messages": [{"role": "user", "content": "<image>\nWrite a terse but informative summary of the picture."},
                  {"role": "assistant", "content": "a red kite flying over a green field"}],
     "images": ["00453/004538986.jpg"]},
    {"id": "002239345",
     "messages": [{"role": "user", "content": "Give a brief description of the image.\n<image>"},
                  {"role": "assistant", "content": "the old lighthouse at sunset"}],
     "images": ["00223/002239345.jpg"]},
]

INSTRUCT_RECORDS = [
    {"id": "000000033471",
     "messages": [{"role": "user", "content": "<image>\nWhat are the colors of the bus in the image?"},
                  {"role": "assistant", "content": "The bus in the image is white and red."},
                  {"role": "user", "content": "What feature can be seen on the back of the bus?"},
                  {"role": "assistant", "content": "The back of the bus features an advertisement."}],
     "images": ["coco/train2017/000000033471.jpg"]},
    {"id": "000000052846",
     "messages": [{"role": "user", "content": "Where is the cat positioned in the image?\n<image>"},
                  {"role": "assistant", "content": "The cat is sitting on top of a laptop keyboard."}],
     "images": ["coco/train2017/000000052846.jpg"]},
    {"id": "2354786",
     "messages": [{"role": "user", "content": "<image>\nIs the sky dark?\nAnswer the question using a single word or phrase."},
                  {"role": "assistant", "content": "Yes"}],
     "images": ["gqa/images/2354786.jpg"]},
    {"id": "i6IyJda_0",
     "messages": [{"role": "user", "content": "How to tell if a customer segment is well segmented? In 3 bullet points."},
                  {"role": "assistant", "content": "1. Homogeneity\n2. Distinctiveness\n3. Stability"}]},
]


def run(script: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(REPO / "datasets" / script / "convert.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def with_images(records: list[dict], root: Path, out_dir: Path) -> list[dict]:
    """Expected records with image paths rewritten relative to out_dir."""
    return [{**r, "images": [os.path.relpath(root / p, out_dir) for p in r["images"]]}
            if "images" in r else r for r in records]


def assert_images_resolve(records: list[dict], out_dir: Path) -> None:
    for r in records:
        for p in r.get("images", []):
            assert (out_dir / p).is_file(), p


def test_pretrain_convert(tmp_path):
    root = FIXTURES / "llava_pretrain"
    out = tmp_path / "out" / "pretrain.jsonl"
    res = run("llava_pretrain", "--json", root / "blip_laion_cc_sbu_558k.json", "--image-root", root,
              "--out", out, "--check-images")
    assert res.returncode == 0, res.stderr
    got = read(out)
    assert got == with_images(PRETRAIN_RECORDS, root, out.parent)
    assert got[0]["images"][0].endswith("tests/fixtures/llava_pretrain/00453/004539375.jpg")
    assert not Path(got[0]["images"][0]).is_absolute()
    assert_images_resolve(got, out.parent)
    assert "read 3 items" in res.stdout and "wrote 3 records" in res.stdout
    assert "missing images: 0" in res.stdout


def test_pretrain_output_next_to_images_and_limit(tmp_path):
    root = tmp_path / "LLaVA-Pretrain"
    shutil.copytree(FIXTURES / "llava_pretrain", root)
    out = root / "pretrain.jsonl"
    res = run("llava_pretrain", "--json", root / "blip_laion_cc_sbu_558k.json", "--image-root", root,
              "--out", out, "--limit", 2)
    assert res.returncode == 0, res.stderr
    assert read(out) == PRETRAIN_RECORDS[:2]
    assert "images not checked" in res.stdout


def test_pretrain_absolute(tmp_path):
    root = FIXTURES / "llava_pretrain"
    out = tmp_path / "pretrain.jsonl"
    res = run("llava_pretrain", "--json", root / "blip_laion_cc_sbu_558k.json", "--image-root", root,
              "--out", out, "--absolute")
    assert res.returncode == 0, res.stderr
    got = read(out)
    assert [r["images"] for r in got] == [[str(root / r["images"][0])] for r in PRETRAIN_RECORDS]


def test_pretrain_check_images_reports_missing(tmp_path):
    root = tmp_path / "LLaVA-Pretrain"
    shutil.copytree(FIXTURES / "llava_pretrain", root)
    (root / "00453" / "004538986.jpg").unlink()
    out = tmp_path / "pretrain.jsonl"
    res = run("llava_pretrain", "--json", root / "blip_laion_cc_sbu_558k.json", "--image-root", root,
              "--out", out, "--check-images")
    assert res.returncode == 0, res.stderr
    assert f"missing image: {root / '00453' / '004538986.jpg'} ({root / 'blip_laion_cc_sbu_558k.json'}[1])" in res.stderr
    assert "missing images: 1 (items left out)" in res.stdout
    assert "wrote 2 records" in res.stdout
    assert read(out) == with_images([PRETRAIN_RECORDS[0], PRETRAIN_RECORDS[2]], root, out.parent)


def test_pretrain_malformed_item_names_source(tmp_path):
    bad = tmp_path / "blip_laion_cc_sbu_558k.json"
    bad.write_text(json.dumps([{"id": "1", "conversations": [{"from": "human", "value": "<image>"}]}]))
    out = tmp_path / "out.jsonl"
    res = run("llava_pretrain", "--json", bad, "--image-root", tmp_path, "--out", out)
    assert res.returncode == 1
    assert f"error: {bad}[0]: 1 <image> placeholder(s)" in res.stderr
    assert not out.exists()


def test_instruct_convert_mix665k(tmp_path):
    root = FIXTURES / "llava_instruct"
    out = tmp_path / "out" / "mix665k.jsonl"
    res = run("llava_instruct", "--json", root / "llava_v1_5_mix665k.json", "--image-root", root,
              "--out", out, "--check-images")
    assert res.returncode == 0, res.stderr
    got = read(out)
    assert got == with_images(INSTRUCT_RECORDS, root, out.parent)
    assert "images" not in got[3]
    assert_images_resolve(got, out.parent)
    assert "  coco: 2, 0 missing images\n  gqa: 1, 0 missing images\n  text-only: 1\n" in res.stdout
    assert "wrote 4 records" in res.stdout


def test_instruct_check_images_reports_missing(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(FIXTURES / "llava_instruct", root)
    (root / "gqa" / "images" / "2354786.jpg").unlink()
    out = root / "mix.jsonl"
    res = run("llava_instruct", "--json", root / "llava_v1_5_mix665k.json", "--image-root", root,
              "--out", out, "--check-images")
    assert res.returncode == 0, res.stderr
    assert f"missing image: {root / 'gqa/images/2354786.jpg'}" in res.stderr
    assert "gqa: 1, 1 missing images" in res.stdout
    assert "missing images: 1 (items left out)" in res.stdout
    assert read(out) == [INSTRUCT_RECORDS[i] for i in (0, 1, 3)]


def test_instruct_150k_bare_names_and_limit(tmp_path):
    """LLaVA-Instruct-150K gives bare COCO file names relative to train2017/."""
    coco = FIXTURES / "llava_instruct" / "coco" / "train2017"
    items = json.loads((FIXTURES / "llava_instruct" / "llava_v1_5_mix665k.json").read_text())[:2]
    for it in items:
        it["image"] = Path(it["image"]).name
    src = tmp_path / "llava_instruct_150k.json"
    src.write_text(json.dumps(items))
    out = tmp_path / "o.jsonl"
    res = run("llava_instruct", "--json", src, "--image-root", coco, "--out", out, "--limit", 1, "--check-images")
    assert res.returncode == 0, res.stderr
    got = read(out)
    assert got == [{**INSTRUCT_RECORDS[0], "images": [os.path.relpath(coco / "000000033471.jpg", tmp_path)]}]
    assert_images_resolve(got, out.parent)
    assert "(image root): 1, 0 missing images" in res.stdout


def test_bad_image_root_is_a_usage_error(tmp_path):
    res = run("llava_instruct", "--json", tmp_path / "x.json", "--image-root", tmp_path / "nope", "--out", tmp_path / "o.jsonl")
    assert res.returncode == 2
    assert "is not a directory" in res.stderr
