"""InstructBLIP and BLIP-2 folders import with the same logits and export back unchanged."""
from __future__ import annotations

import pytest
import torch
from released import blip, image
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmtune.batch import Batch, Instruction
from mmtune.interop import export_hf
from mmtune.model import MultimodalLM


@pytest.mark.parametrize("aware", [True, False], ids=["instructblip", "blip2"])
def test_blip_imports_with_the_same_logits_and_exports_the_same_tensors(tmp_path, aware):
    hf = blip(tmp_path / "hf", instruction_aware=aware)
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    images = [image(0), image(1)]
    inputs = processor(images=images, text=["what colour is the shape ?", "which shape is it ?"],
                       padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = hf(**inputs).logits

    model = MultimodalLM.from_hf(tmp_path / "hf").eval()
    assert set(model.instruction_tokenizers) == ({"image"} if aware else set())
    pixels = model.encoders["image"].preprocess(images)
    assert torch.equal(pixels, inputs["pixel_values"])
    instructions = ({"image": Instruction(inputs["qformer_input_ids"], inputs["qformer_attention_mask"])}
                    if aware else {})
    batch = Batch(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["input_ids"],
                  media={"image": pixels}, media_per_row={"image": [1, 1]}, instructions=instructions)
    with torch.no_grad():
        got = model(batch)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    export_hf(model, tmp_path / "out")
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    assert type(again) is type(hf)
    want, have = hf.state_dict(), again.state_dict()
    assert sorted(want) == sorted(have)
    for k in want:
        assert torch.equal(want[k], have[k]), k
    # Greedy generation from the exported folder = mmtune's own, on the same inputs.
    with torch.no_grad():
        ours = model.generate(batch, max_new_tokens=5)
        theirs = again.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert theirs[:, -ours.shape[1]:].tolist() == ours.tolist()
    inputs2 = AutoProcessor.from_pretrained(tmp_path / "out")(
        images=images, text=["what colour is the shape ?", "which shape is it ?"], padding=True, return_tensors="pt")
    for k in inputs:
        assert torch.equal(inputs[k], inputs2[k]), k
