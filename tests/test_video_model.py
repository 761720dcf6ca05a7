"""The video and audio parts plug into MultimodalLM as they are: build from config, one forward
with both media in a row, save and reload (the encoders rebuild from their saved directories)."""
from __future__ import annotations

import torch
from conftest import tiny_llm_arch

from mmtune.config import ModelConfig, from_dict
from mmtune.batch import Batch
from mmtune.model import MultimodalLM

QF = {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64}
CONFIG = {
    "llm": {"arch": tiny_llm_arch()},
    "tokenizer": {"type": "synthetic"},
    "encoders": {
        "video": {"type": "video_frames", "arch": {
            "frame_encoder": {"type": "conv", "arch": {"image_size": 32, "channels": [8, 16, 16]}},
            "num_frames": 4}},
        "audio": {"type": "whisper_audio", "drop_cls": False, "select_layer": -1, "arch": {
            "d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
            "num_mel_bins": 80, "max_source_positions": 50}},
    },
    "projectors": {
        "video": {"type": "video_qformer", "options": {"num_frames": 4, "num_queries": 6, **QF}},
        "audio": {"type": "audio_qformer", "options": {"num_queries": 3, **QF}},
    },
}


def batch_for(model: MultimodalLM) -> Batch:
    video, audio = model.encoders["video"], model.encoders["audio"]
    k_v, k_a = model.tokens_per_medium("video"), model.tokens_per_medium("audio")
    tok = model.tokenizer
    ids = ([tok.bos_token_id] + [model.placeholder_ids["video"]] * k_v + [model.placeholder_ids["audio"]] * k_a
           + tok.convert_tokens_to_ids(["which", "way"]))
    torch.manual_seed(1)
    clip = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    return Batch(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                 labels=torch.full((1, len(ids)), -100),
                 media={"video": video.preprocess([clip]), "audio": audio.preprocess([torch.randn(8000) * 0.1])},
                 media_per_row={"video": [1], "audio": [1]}, ids=["r0"])


def test_video_and_audio_in_one_model(tmp_path):
    torch.manual_seed(0)
    model = MultimodalLM.build(from_dict(ModelConfig, CONFIG, "test config")).eval()
    assert model.tokens_per_medium("video") == 6 and model.tokens_per_medium("audio") == 3
    batch = batch_for(model)
    with torch.no_grad():
        logits = model(batch)
    assert logits.shape == (1, batch.input_ids.shape[1], tiny_llm_arch()["vocab_size"])

    model.save_pretrained(tmp_path / "m")
    again = MultimodalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(batch), logits)
