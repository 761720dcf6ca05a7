"""A tokenizer holds placeholders only for the model's modalities, and an exported one matches
the embedding table it is saved with (issue 10, item 4)."""
from __future__ import annotations

from conftest import tiny_llm_arch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, PreTrainedTokenizerFast

from mmtune.config import ModelConfig, from_dict
from mmtune.data.text.tokenizer import SPECIALS, TEMPLATES, synthetic_words
from mmtune.interop import export_hf
from mmtune.model import MultimodalLM


def plain_tokenizer(folder) -> int:
    """A word-level tokenizer with no media placeholders (as a text LLM ships); returns its size."""
    vocab = {w: i for i, w in enumerate(SPECIALS + synthetic_words())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>")
    tok.chat_template = TEMPLATES["user_assistant"]
    tok.save_pretrained(folder)
    return len(vocab)


def test_placeholders_only_for_the_models_modalities_and_export_resizes(tmp_path, tiny_model):
    n = plain_tokenizer(tmp_path / "tok")
    text_only = MultimodalLM.build(from_dict(ModelConfig, {
        "llm": {"arch": tiny_llm_arch(n)}, "tokenizer": {"type": "auto", "path": str(tmp_path / "tok")}}))
    assert len(text_only.tokenizer) == n == text_only.llm.get_input_embeddings().num_embeddings

    model = tiny_model(llm={"arch": tiny_llm_arch(n)}, tokenizer={"type": "auto", "path": str(tmp_path / "tok")})
    vocab = model.tokenizer.get_vocab()
    assert "<image>" in vocab and "<video>" not in vocab and "<audio>" not in vocab
    assert len(model.tokenizer) == n + 1  # <image> past the table: features replace its rows anyway

    export_hf(model, tmp_path / "out")
    config = AutoConfig.from_pretrained(tmp_path / "out")
    assert config.text_config.vocab_size == n + 1 == len(PreTrainedTokenizerFast.from_pretrained(tmp_path / "out"))
    assert config.image_token_id == n
