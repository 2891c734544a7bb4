"""Which calibration shapes fit an engine (no model needed: the runner's sizes only)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from experiments.calibration_grid import CalibrationGrid, plan_shapes, plan_verify_shapes


def fake_runner(graph_sizes: list[int] | None, speculative: bool = True, blocks: int = 100_000) -> SimpleNamespace:
    return SimpleNamespace(speculative=object() if speculative else None, block_size=16, num_gpu_blocks=blocks,
                           max_model_len=8192, graphs=None if graph_sizes is None else SimpleNamespace(
                               sizes=graph_sizes), mixed_graphs=None,
                           config=SimpleNamespace(max_num_batched_tokens=65536, max_num_seqs=256))


def test_decode_shapes_take_every_context_that_fits() -> None:
    grid = CalibrationGrid(batch_sizes=(1, 8, 64), decode_contexts=(32, 512, 2048, 6144))
    decodes, _, _ = plan_shapes(grid, fake_runner(None, blocks=10_000))
    # 64 sequences share 10,000 blocks of 16 tokens: 2,500 tokens each less the shape's growth and slack,
    # so 2,048 stays and 6,144 shrinks to the same bound
    fit = 10_000 // 64 * 16 - (grid.warmup + grid.repeats + 8) - 32
    assert decodes == [(1, 32), (1, 512), (1, 2048), (1, 6144), (8, 32), (8, 512), (8, 2048), (8, 6144),
                       (64, 32), (64, 512), (64, 2048), (64, fit)]
    one = plan_shapes(CalibrationGrid(batch_sizes=(1, 2), decode_contexts=(2, 4)), fake_runner(None, blocks=2))[0]
    assert one == []  # no batch size fits two contexts: none timed


def test_bad_decode_contexts_are_named() -> None:
    for ctxs in ((32,), (512, 32), (1, 8), (32, 32, 64)):
        with pytest.raises(ValueError, match="decode_contexts"):
            CalibrationGrid(decode_contexts=ctxs)


def test_verification_shapes_stay_within_the_decode_graphs() -> None:
    grid = CalibrationGrid(verify_batches=(1, 16, 48), verify_drafts=(1, 6))
    shapes = plan_verify_shapes(grid, fake_runner([1, 2, 4, 8, 16, 32, 64, 128, 256]))
    # 48 x (6 + 1) = 336 rows would replay the largest graph in chunks: dropped; every other shape at the
    # smallest and largest decode context
    assert shapes == [(b, k, c) for b, k in ((1, 1), (1, 6), (16, 1), (16, 6), (48, 1)) for c in (32, 6144)]
    assert (48, 6, 32) in plan_verify_shapes(grid, fake_runner(None))  # no graphs: no limit
    assert plan_verify_shapes(grid, fake_runner([1, 2, 4], speculative=False)) == []  # no proposer


def test_verification_contexts_shrink_to_the_pool() -> None:
    shapes = plan_verify_shapes(CalibrationGrid(verify_batches=(4,), verify_drafts=(3,)), fake_runner(None, blocks=300))
    small, large = (c for _, _, c in shapes)
    assert small == 32 and 32 < large < 2048  # 4 sequences share 300 blocks of 16 tokens


def test_bad_verification_grid_is_named() -> None:
    with pytest.raises(ValueError, match="verify_drafts"):
        CalibrationGrid(verify_drafts=(0,))
