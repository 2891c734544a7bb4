"""Which calibration shapes fit an engine (no model needed: the runner's sizes only)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from experiments.calibration_grid import CalibrationGrid, plan_verify_shapes


def fake_runner(graph_sizes: list[int] | None, speculative: bool = True, blocks: int = 100_000) -> SimpleNamespace:
    return SimpleNamespace(speculative=object() if speculative else None, block_size=16, num_gpu_blocks=blocks,
                           max_model_len=8192, graphs=None if graph_sizes is None else SimpleNamespace(
                               sizes=graph_sizes), config=SimpleNamespace(max_num_batched_tokens=65536))


def test_verification_shapes_stay_within_the_decode_graphs() -> None:
    grid = CalibrationGrid(verify_batches=(1, 16, 48), verify_drafts=(1, 6))
    shapes = plan_verify_shapes(grid, fake_runner([1, 2, 4, 8, 16, 32, 64, 128, 256]))
    # 48 x (6 + 1) = 336 rows would replay the largest graph in chunks: dropped; every other shape at both contexts
    assert shapes == [(b, k, c) for b, k in ((1, 1), (1, 6), (16, 1), (16, 6), (48, 1)) for c in (32, 2048)]
    assert (48, 6, 32) in plan_verify_shapes(grid, fake_runner(None))  # no graphs: no limit
    assert plan_verify_shapes(grid, fake_runner([1, 2, 4], speculative=False)) == []  # no proposer


def test_verification_contexts_shrink_to_the_pool() -> None:
    shapes = plan_verify_shapes(CalibrationGrid(verify_batches=(4,), verify_drafts=(3,)), fake_runner(None, blocks=300))
    small, large = (c for _, _, c in shapes)
    assert small == 32 and 32 < large < 2048  # 4 sequences share 300 blocks of 16 tokens


def test_bad_verification_grid_is_named() -> None:
    with pytest.raises(ValueError, match="verify_drafts"):
        CalibrationGrid(verify_drafts=(0,))
