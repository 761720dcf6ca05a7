"""The tiny LLaVA that exports (`--config tiny-hf`: no token merge, no position code) passes the
same learning gate as `tiny`, and its transformers export answers as mmtune does."""
from __future__ import annotations

import json

import pytest
from conftest import assert_reads_the_medium

from mmtune.cli import main as cli


@pytest.mark.slow
@pytest.mark.long  # ~15-45 CPU-minutes: beyond CI's suite budget; run with `pytest -m long`
def test_tiny_hf_llava_learns_shapes_and_exports(tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmtune.cli import answer
    from mmtune.recipes.common import load_run

    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "hf"
    cli(["data", "synth", "shapes", "--out", str(data), "--seed", "11"])
    cli(["train", "llava", "--config", "tiny-hf", "--output-dir", str(run), "--data", str(data)])
    assert_reads_the_medium(json.loads((run / "eval.json").read_text()), ("colour", "shape", "position", "count"))

    cli(["export", str(run), "--format", "hf", "--out", str(out)])
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    cfg, ours = load_run(run)
    test = [json.loads(x) for x in (data / "test.jsonl").read_text().splitlines()][:8]
    for record in test:
        question = record["messages"][0]["content"].replace("<image>", "").strip()
        image = str(data / record["images"][0])
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        inputs = processor(images=Image.open(image), text=processor.apply_chat_template(
            messages, add_generation_prompt=True), return_tensors="pt")
        with torch.no_grad():
            new = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        assert processor.decode(new, skip_special_tokens=True).strip() == answer(ours, cfg, image, question, 4)
