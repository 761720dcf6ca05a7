"""The tiny models' vocabulary ships as an asset; it must hold every word the tasks generate."""
from mmtune.data.text.tokenizer import TEMPLATE_WORDS, synthetic_words
from mmtune.synth import av, motion, shapes, text, tones


def test_vocabulary_asset_is_the_tasks_words_in_append_only_order():
    expected: list[str] = []
    for w in TEMPLATE_WORDS + shapes.VOCAB + text.VOCAB + motion.VOCAB + tones.VOCAB + av.VOCAB:
        if w not in expected:
            expected.append(w)
    assert synthetic_words() == expected
