"""The whole path: a released llava-hf folder -> `mmtune train ... model.init_from=DIR` with LoRA
-> `mmtune export --format hf` -> a fresh Python process with transformers alone generates the
same tokens as mmtune."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import SMALL
from released import llava_hf

from mmtune.cli import main as cli

# Runs with mmtune made unimportable: the folder must stand on transformers alone.
FRESH = r"""
import json, sys
sys.modules["mmtune"] = None  # any `import mmtune` now fails
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
out, image, question = sys.argv[1:4]
model = AutoModelForImageTextToText.from_pretrained(out).eval()
processor = AutoProcessor.from_pretrained(out)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=Image.open(image), text=prompt, return_tensors="pt")
with torch.no_grad():
    ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
new = ids[0, inputs["input_ids"].shape[1]:].tolist()
print(json.dumps({"class": type(model).__name__, "tokens": new,
                  "text": processor.decode(new, skip_special_tokens=True).strip()}))
"""


def fresh_process_answers(out, image: str, question: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", FRESH, str(out), image, question], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def mmtune_tokens(run, image: str, question: str) -> list[int]:
    """`mmtune chat`'s own path (cli.answer), keeping the token ids."""
    from mmtune.recipes.common import load_run
    from mmtune.data.collate import collate
    from mmtune.data.formats.records import parse_record
    from mmtune.recipes.common import example_builder

    cfg, model = load_run(run)
    record = parse_record({"id": "q", "messages": [{"role": "user", "content": f"<image>\n{question}"}],
                           "images": [image]}, "q", run)
    batch = collate([example_builder(model, cfg, None).encode_prompt(record)], model.tokenizer.pad_token_id,
                    left_pad=True)
    return model.eval().generate(batch, max_new_tokens=6)[0].tolist()


def test_released_llava_finetunes_with_lora_and_exports_to_transformers(tmp_path, capsys):
    llava_hf(tmp_path / "released", "clip")
    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "out"
    cli(["data", "synth", "shapes", "--out", str(data), "--n-train", "40", "--n-test", "8"])
    cli(["train", "llava", "--config", "tiny-hf", "--output-dir", str(run), "--data", str(data),
         "--stage", "finetune", f"model.init_from={tmp_path / 'released'}", "model.llm.lora.r=8",
         "stages.finetune.max_steps=20", "stages.finetune.batch_size=4", "stages.finetune.warmup_steps=2",
         "train.mixed_precision=no", "eval.limit=4"])
    assert (run / "model" / "llm_adapter").exists()  # trained with LoRA
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(m["step"] for m in metrics if "step" in m) == 20

    cli(["export", str(run), "--format", "hf", "--out", str(out)])
    assert "AutoModelForImageTextToText" in capsys.readouterr().out
    test = [json.loads(x) for x in (data / "test.jsonl").read_text().splitlines()]
    assert_same_answers(run, out, data, test[:2])


def assert_same_answers(run, out, data, records) -> None:
    for record in records:
        image = str(data / record["images"][0])
        question = record["messages"][0]["content"].replace("<image>", "").strip()
        hf = fresh_process_answers(out, image, question)
        assert hf["class"] == "LlavaForConditionalGeneration"
        ours = mmtune_tokens(run, image, question)
        assert hf["tokens"] == ours[:len(hf["tokens"])] and len(hf["tokens"]) > 0
        assert ours[len(hf["tokens"]):] in ([], [0] * (len(ours) - len(hf["tokens"])))  # only padding after EOS


def test_tiny_hf_config_trained_from_scratch_exports(tmp_path):
    """The demo's path with the exportable tiny config: synthetic tokenizer, mmtune's own CLIP
    image processor (64 px, pad to square), 64 image tokens."""
    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "out"
    cli(["data", "synth", "shapes", "--out", str(data), "--n-train", "16", "--n-test", "4"])
    cli(["train", "llava", "--config", "tiny-hf", "--output-dir", str(run), "--data", str(data),
         *[o for o in SMALL if ".image_size=" not in o], "stages.pretrain.max_steps=2",
         "stages.finetune.max_steps=3", "stages.pretrain.batch_size=4", "stages.finetune.batch_size=4",
         "eval.limit=2"])
    cli(["export", str(run), "--format", "hf", "--out", str(out)])
    test = [json.loads(x) for x in (data / "test.jsonl").read_text().splitlines()]
    assert_same_answers(run, out, data, test[:1])


@pytest.mark.parametrize("options", ["token_merge: 2", "pos_embed: true"])
def test_a_model_no_transformers_class_expresses_is_refused_before_writing(tmp_path, tiny_model, options):
    key, value = options.split(": ")
    model = tiny_model(projectors={"image": {"options": {key: int(value) if value.isdigit() else True}}})
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(SystemExit, match="token merge 2x2|position code"):
        cli(["export", str(tmp_path / "m"), "--format", "hf", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["m"]


def test_qlora_on_a_released_llava_through_mmtune_import(tmp_path, capsys):
    """QLoRA quantises while an LLM checkpoint loads: `mmtune import` gives the LLM one, then
    `model.init_from` + `quantize: nf4` trains adapters on it, and the export merges them into
    the full-precision base."""
    from transformers import AutoModelForImageTextToText

    llava_hf(tmp_path / "released", "clip")
    data, run, converted = tmp_path / "data", tmp_path / "run", tmp_path / "converted"
    cli(["data", "synth", "shapes", "--out", str(data), "--n-train", "16", "--n-test", "4"])
    with pytest.raises(ValueError, match="mmtune import"):  # straight from the released folder: refused
        cli(["--debug", "train", "llava", "--config", "tiny-hf", "--output-dir", str(tmp_path / "no"), "--data",
             str(data), "--stage", "finetune", f"model.init_from={tmp_path / 'released'}", "model.llm.quantize=nf4"])
    cli(["import", str(tmp_path / "released"), "--out", str(converted)])
    cli(["train", "llava", "--config", "tiny-hf", "--output-dir", str(run), "--data", str(data), "--stage", "finetune",
         f"model.init_from={converted}", "model.llm.quantize=nf4", "model.llm.lora.r=8",
         "stages.finetune.max_steps=3", "stages.finetune.batch_size=4", "train.mixed_precision=no", "eval.limit=2"])
    saved = json.loads((run / "model" / "mmtune_config.json").read_text())["llm"]
    assert saved["quantize"] == "nf4" and saved["path"] == str((converted / "llm").resolve())
    cli(["export", str(run), "--format", "hf", "--out", str(tmp_path / "out")])
    hf = AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    assert getattr(hf.config, "quantization_config", None) is None
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in hf.parameters())


def test_refusals_name_the_part_for_blip_style_models(tiny_model):
    from mmtune.interop import ExportRefused, check_exportable

    qformer = {"type": "qformer", "options": {"num_queries": 4, "hidden_size": 32, "num_layers": 1,
                                              "num_heads": 2, "intermediate_size": 64, "instruction_aware": False}}
    with pytest.raises(ExportRefused, match="image encoder 'hf_clip': InstructBLIP / BLIP-2 hold a BLIP vision"):
        check_exportable(tiny_model(projectors={"image": qformer}))
    blip_tower = {"type": "hf_blip_vision", "select_layer": -1, "drop_cls": False}
    with pytest.raises(ExportRefused, match="feature_pos_embed"):
        check_exportable(tiny_model(encoders={"image": blip_tower}, projectors={"image": {
            **qformer, "options": {**qformer["options"], "feature_pos_embed": True}}}))
    with pytest.raises(ExportRefused, match="projectors"):
        check_exportable(tiny_model(projectors={"image": {"type": "linear"}}))


def test_instructblip_recipe_starts_from_a_released_instructblip(tmp_path):
    """`model.init_from` serves any recipe: the Q-Former reads instructions through the
    released folder's own Q-Former tokenizer."""
    from released import blip

    blip(tmp_path / "released", instruction_aware=True)
    data, run = tmp_path / "data", tmp_path / "run"
    cli(["data", "synth", "shapes", "--out", str(data), "--n-train", "16", "--n-test", "4"])
    cli(["train", "instructblip", "--config", "tiny", "--output-dir", str(run), "--data", str(data),
         f"model.init_from={tmp_path / 'released'}", "stages.instruct.max_steps=3", "stages.instruct.batch_size=4",
         "train.mixed_precision=no", "eval.limit=2"])
    saved = json.loads((run / "model" / "mmtune_config.json").read_text())
    assert saved["projectors"]["image"]["options"]["instruction_aware"] is True
    assert (run / "model" / "instruction_tokenizers" / "image").exists() and (run / "model" / "llm_adapter").exists()
    cli(["export", str(run), "--format", "hf", "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "instructblip"
