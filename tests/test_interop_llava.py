"""llava-hf folders import into MultimodalLM with the same logits, and export back unchanged."""
from __future__ import annotations

import pytest
import torch
from released import image, llava_hf
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mmtune.batch import Batch
from mmtune.model import MultimodalLM

PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the shape ?"}]}]


def hf_inputs(folder, n_images: int = 2):
    processor = AutoProcessor.from_pretrained(folder)
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True)
    images = [image(seed) for seed in range(n_images)]
    return processor(images=images, text=[text] * n_images, return_tensors="pt"), images


def mmtune_logits(model: MultimodalLM, inputs, images) -> torch.Tensor:
    pixels = model.encoders["image"].preprocess(images)
    assert torch.equal(pixels, inputs["pixel_values"])  # the same preprocessing
    batch = Batch(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                  labels=inputs["input_ids"], media={"image": pixels}, media_per_row={"image": [1] * len(images)})
    with torch.no_grad():
        return model(batch)


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_llava_hf_imports_with_the_same_logits_and_exports_the_same_tensors(tmp_path, tower):
    hf = llava_hf(tmp_path / "hf", tower)
    inputs, images = hf_inputs(tmp_path / "hf")
    with torch.no_grad():
        expected = hf(**inputs).logits
    model = MultimodalLM.from_hf(tmp_path / "hf").eval()
    assert model.config.encoders["image"].drop_cls == (tower == "clip")
    assert len(model.tokenizer) == model.llm.get_input_embeddings().num_embeddings
    torch.testing.assert_close(mmtune_logits(model, inputs, images), expected, atol=1e-4, rtol=0)

    from mmtune.interop import export_hf

    export_hf(model, tmp_path / "out")
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    want, got = hf.state_dict(), again.state_dict()
    assert sorted(want) == sorted(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    inputs2, _ = hf_inputs(tmp_path / "out")
    assert torch.equal(inputs2["input_ids"], inputs["input_ids"])
    assert torch.equal(inputs2["pixel_values"], inputs["pixel_values"])


def test_a_template_for_content_parts_only_must_be_replaced_by_name(tmp_path):
    """llava-hf's own templates read content parts; mmtune's records are strings."""
    from transformers import AutoTokenizer

    from mmtune.config import ModelConfig, TokenizerConfig

    llava_hf(tmp_path / "hf", "clip")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    tok.chat_template = ("{% for m in messages %}{{ m.role.upper() }}: {% for c in m['content'] | "
                         "selectattr('type', 'equalto', 'text') %}{{ c['text'] }}{% endfor %} {% endfor %}")
    tok.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="renders no plain-text message content"):
        MultimodalLM.from_hf(tmp_path / "hf")
    model = MultimodalLM.from_hf(tmp_path / "hf", ModelConfig(tokenizer=TokenizerConfig(chat_template="user_assistant")))
    assert model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<s>USER: hi "
