"""MLP projectors: token merge (pixel shuffle) and the optional 2-D position code."""
from __future__ import annotations

import pytest
import torch

from mmtune.projectors.mlp import MLPProjector, sincos_2d
from mmtune.parts import FeatureSpec
from mmtune.registry import PROJECTORS


def test_registered_names_build_the_right_depth():
    for name, linears in (("linear", 1), ("mlp1x_gelu", 1), ("mlp2x_gelu", 2), ("mlp3x_gelu", 3)):
        proj = PROJECTORS.get(name)(FeatureSpec(8, 4), 16)
        assert sum(isinstance(m, torch.nn.Linear) for m in proj.modules()) == linears, name


def test_token_merge_concatenates_2x2_neighbours():
    proj = MLPProjector(3, 4, depth=1, token_merge=2)
    x = torch.arange(16 * 3, dtype=torch.float32).reshape(1, 16, 3)  # a 4x4 grid
    merged = proj.merge(x)
    assert merged.shape == (1, 4, 12) and proj.num_tokens(16) == 4
    grid = x.reshape(4, 4, 3)
    expected_first = torch.cat([grid[0, 0], grid[0, 1], grid[1, 0], grid[1, 1]])
    assert torch.equal(merged[0, 0], expected_first)
    expected_last = torch.cat([grid[2, 2], grid[2, 3], grid[3, 2], grid[3, 3]])
    assert torch.equal(merged[0, 3], expected_last)
    with pytest.raises(ValueError, match="square grid"):
        proj.merge(torch.zeros(1, 12, 3))


def test_sincos_2d_codes_every_cell_differently():
    code = sincos_2d(16, 8)
    assert code.shape == (16, 8)
    assert len({tuple(row.tolist()) for row in code}) == 16
    # Same column, different rows differ only in the row half; same row: only the column half.
    assert torch.equal(code[0, 4:], code[4, 4:]) and not torch.equal(code[0, :4], code[4, :4])
    assert torch.equal(code[0, :4], code[1, :4]) and not torch.equal(code[0, 4:], code[1, 4:])


def test_pos_embed_tells_identical_patches_apart():
    plain, coded = MLPProjector(8, 4, pos_embed=False), MLPProjector(8, 4, pos_embed=True)
    coded.load_state_dict(plain.state_dict())
    same = torch.ones(1, 16, 8)  # the same feature everywhere
    assert torch.allclose(plain(same)[0, 0], plain(same)[0, 15])
    assert not torch.allclose(coded(same)[0, 0], coded(same)[0, 15])
