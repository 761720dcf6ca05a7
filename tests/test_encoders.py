"""Image encoders: output shapes, layer selection, CLS handling and LLaVA-1.5 preprocessing."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

import mmtune  # noqa: F401  (fills the registries)
from mmtune.config import EncoderConfig
from mmtune.encoders import blank_image
from mmtune.registry import ENCODERS

from conftest import tiny_clip_arch, tiny_siglip_arch

OPEN_CLIP_ARCH = {"model_name": "mmtune-tiny-ViT"}  # mmtune/encoders/open_clip_configs/


def build(kind: str, seed: int = 0, **kw):
    arch = {"hf_clip": tiny_clip_arch, "hf_siglip": tiny_siglip_arch,
            "open_clip": lambda: dict(OPEN_CLIP_ARCH)}[kind]()
    kw.setdefault("drop_cls", kind != "hf_siglip")
    torch.manual_seed(seed)
    return ENCODERS.get(kind)(EncoderConfig(type=kind, arch=arch, **kw)).eval()


def pixels(enc, n: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, enc.spec.size, enc.spec.size, generator=g)


KINDS = ["hf_clip", "hf_siglip", "open_clip"]


# ------------------------------------------------------------------------- shapes
# SigLIP has no CLS token to drop: that combination is test_siglip_drop_cls_raises.
@pytest.mark.parametrize("kind,drop_cls", [(k, d) for k in KINDS for d in (True, False)
                                           if not (k == "hf_siglip" and d)])
def test_output_shape(kind, drop_cls):
    enc = build(kind, drop_cls=drop_cls)
    with torch.no_grad():
        out = enc(pixels(enc, n=3))
    assert out.shape == (3, enc.num_tokens(), enc.hidden_size)
    grid = {"hf_clip": 4, "hf_siglip": 4, "open_clip": 8}[kind]
    has_cls = kind != "hf_siglip"
    assert enc.num_tokens() == grid * grid + (1 if has_cls and not drop_cls else 0)
    assert enc.hidden_size == {"hf_clip": 32, "hf_siglip": 32, "open_clip": 128}[kind]


def test_siglip_drop_cls_raises():
    with pytest.raises(ValueError, match="CLS"):
        build("hf_siglip", drop_cls=True)


# ------------------------------------------------------------------------- layer selection
@pytest.mark.parametrize("kind", KINDS)
def test_select_layer_changes_features(kind):
    last, penult = build(kind, select_layer=-1), build(kind, select_layer=-2)
    assert torch.equal(last.state_dict()["tower.embeddings.patch_embedding.weight"] if kind != "open_clip"
                       else last.visual.conv1.weight,
                       penult.state_dict()["tower.embeddings.patch_embedding.weight"] if kind != "open_clip"
                       else penult.visual.conv1.weight)  # same seed, same weights
    x = pixels(last)
    with torch.no_grad():
        a, b = last(x), penult(x)
    assert a.shape == b.shape
    assert not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("kind,drop", [("hf_clip", True), ("hf_clip", False), ("hf_siglip", False)])
@pytest.mark.parametrize("layer", [-1, -2])
def test_hf_select_layer_is_hidden_states_index(kind, drop, layer):
    enc = build(kind, select_layer=layer, drop_cls=drop)
    x = pixels(enc)
    with torch.no_grad():
        ours = enc(x)
        ref = enc.tower(pixel_values=x, output_hidden_states=True).hidden_states[layer]
    if drop:
        ref = ref[:, 1:]
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def _open_clip_block_outputs(visual, x: torch.Tensor) -> list[torch.Tensor]:
    """Reference: every residual block's output, [B, 1 + N, D] (CLS first), written out by hand."""
    h = visual.conv1(x).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(h.dtype).expand(h.shape[0], 1, -1)
    h = torch.cat([cls, h], dim=1) + visual.positional_embedding.to(h.dtype)
    h = visual.ln_pre(h)
    outs = []
    for block in visual.transformer.resblocks:
        h = block(h)
        outs.append(h)
    return outs


@pytest.mark.parametrize("layer", [-1, -2])
@pytest.mark.parametrize("drop", [True, False])
def test_open_clip_select_layer_counts_like_hf(layer, drop):
    """-1 is the last block's output, -2 the one before (2 blocks: -2 is block 0)."""
    enc = build("open_clip", select_layer=layer, drop_cls=drop)
    x = pixels(enc)
    with torch.no_grad():
        ours = enc(x)
        ref = _open_clip_block_outputs(enc.visual, x)[layer]
    if drop:
        ref = ref[:, 1:]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", [0, -3, 3])
def test_open_clip_select_layer_outside_the_blocks_raises(layer):
    """With 2 blocks, only -2..-1 and 1..2 name a block's output; anything else must be
    refused rather than silently mapped onto another layer."""
    with pytest.raises(ValueError, match="select_layer"):
        build("open_clip", select_layer=layer)


# ------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("kind", KINDS)
def test_pad_to_square_with_mean_colour(kind):
    enc = build(kind, drop_cls=kind != "hf_siglip")
    size = enc.spec.size
    wide = Image.new("RGB", (4 * size, size), (255, 0, 0))  # 4:1, red
    out = enc.preprocess([wide])
    assert out.shape == (1, 3, size, size)
    # Padded top and bottom (3/8 of the height each): the mean colour -> ~0 after normalising.
    band = size * 3 // 8 - 2  # stay clear of the resampling seam (bicubic, antialiased)
    top, bottom = out[0, :, :band], out[0, :, -band:]
    assert top.abs().max() < 0.02 and bottom.abs().max() < 0.02, (top.abs().max(), bottom.abs().max())
    # Middle rows: the red image itself, normalised.
    mid = out[0, :, size // 2]
    mean, std = torch.tensor(enc.spec.mean), torch.tensor(enc.spec.std)
    expected = (torch.tensor([1.0, 0.0, 0.0]) - mean) / std
    torch.testing.assert_close(mid, expected[:, None].expand_as(mid), rtol=0, atol=0.02)


@pytest.mark.parametrize("kind", ["hf_clip", "open_clip"])
def test_no_pad_centre_crops(kind):
    """image_pad: false keeps the libraries' own resize + centre crop: no mean-colour band."""
    enc = build(kind, image_pad=False)
    size = enc.spec.size
    out = enc.preprocess([Image.new("RGB", (4 * size, size), (255, 0, 0))])
    assert out.shape == (1, 3, size, size)
    assert out[0, 0].min() > 1.5  # red everywhere


@pytest.mark.parametrize("kind", KINDS)
def test_tall_and_several_images(kind):
    enc = build(kind)
    size = enc.spec.size
    imgs = [Image.new("RGB", (size // 2, 3 * size), (0, 0, 255)),
            Image.new("L", (2 * size, 2 * size), 255),  # greyscale is converted to RGB
            Image.new("RGB", (7, 5), (0, 255, 0))]
    out = enc.preprocess(imgs)
    assert out.shape == (3, 3, size, size)
    # Tall image: the left and right columns are padding.
    assert out[0, :, :, : size // 8].abs().max() < 0.02


@pytest.mark.parametrize("kind", KINDS)
def test_blank_image_is_zero(kind):
    enc = build(kind)
    img = blank_image(enc.spec)
    assert img.size == (enc.spec.size, enc.spec.size)
    out = enc.preprocess([img])
    assert out.shape == (1, 3, enc.spec.size, enc.spec.size)
    assert out.abs().max() < 0.01


@pytest.mark.parametrize("kind", KINDS)
def test_spec_matches_library_defaults(kind):
    enc = build(kind)
    size = {"hf_clip": 32, "hf_siglip": 32, "open_clip": 64}[kind]
    assert enc.spec.size == size and enc.spec.pad_to_square is True
    if kind == "hf_siglip":
        assert enc.spec.mean == (0.5, 0.5, 0.5) and enc.spec.std == (0.5, 0.5, 0.5)
    else:
        assert enc.spec.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
        assert enc.spec.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
