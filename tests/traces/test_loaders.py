"""Loading the real trace samples and well-formed small files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traces import TraceFormatError, detect_format, load_file

BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


def test_azure_sample(azure_path: Path) -> None:
    reqs = load_file(azure_path)
    assert len(reqs) == 19366
    first, second = reqs[0], reqs[1]
    assert (first.id, first.arrival_s, first.prompt_len, first.output_len) == ("0", 0.0, 374, 44)
    # 18:15:50.9951690 - 18:15:46.6805900
    assert (second.id, second.prompt_len, second.output_len) == ("1", 396, 109)
    assert second.arrival_s == pytest.approx(4.314579, abs=1e-6)
    arrivals = np.array([r.arrival_s for r in reqs])
    assert np.all(np.diff(arrivals) >= 0)
    assert arrivals[-1] == pytest.approx(58 * 60 + 21.721937, abs=1e-6)
    assert all(r.block_hashes is None and r.prompt_token_ids is None for r in reqs[:100])
    assert np.mean([r.prompt_len for r in reqs]) == pytest.approx(1154.70, abs=0.01)


def test_mooncake_sample(mooncake_path: Path) -> None:
    reqs = load_file(mooncake_path)
    assert len(reqs) == 12031
    r0, r1 = reqs[0], reqs[1]
    assert (r0.id, r0.arrival_s, r0.prompt_len, r0.output_len) == ("0", 0.0, 6758, 500)
    assert r0.block_hashes == tuple(range(14)) and r0.hash_block_size == 512
    assert r1.block_hashes is not None and r1.block_hashes[:2] == (0, 14)
    # Equal hash ids mean a reusable prefix: block 0 shared, block 1 not.
    c0, c1 = r0.block_contents(512), r1.block_contents(512)
    assert c0[0] == c1[0] and c0[1] != c1[1]
    arrivals = np.array([r.arrival_s for r in reqs])
    assert np.all(np.diff(arrivals) >= 0)
    assert arrivals[-1] == pytest.approx(3536.999)
    assert np.mean([r.prompt_len for r in reqs]) == pytest.approx(12035.06, abs=0.01)


def test_format_detected_from_content_not_extension(tmp_path: Path, azure_path: Path) -> None:
    odd = tmp_path / "trace.jsonl"  # misleading extension, Azure content
    with open(azure_path) as src:
        odd.write_text("".join(next(src) for _ in range(6)))
    assert detect_format(odd) == "azure"
    reqs = load_file(odd)
    assert [r.prompt_len for r in reqs][:2] == [374, 396]

    moon = tmp_path / "trace.csv"
    moon.write_text('{"timestamp": 5, "input_length": 600, "output_length": 3, "hash_ids": [7, 8]}\n')
    assert detect_format(moon) == "mooncake"
    (r,) = load_file(moon)
    assert r.arrival_s == pytest.approx(0.005) and r.block_hashes == (7, 8)


def test_burstgpt_from_tmp_file(tmp_path: Path) -> None:
    path = tmp_path / "burst.csv"
    path.write_text(
        BURST_HEADER
        + "5,ChatGPT,472,18,490,Conversation log\n"
        + "3.5,GPT-4,1000,250,1250,API log\n"  # out of order: sorted by arrival
        + "5,ChatGPT,31,7,38,Conversation log\n"  # ties keep file order
        + "9,GPT-4,20,0,20,API log\n"  # zero response tokens: clamped by default
    )
    assert detect_format(path) == "burstgpt"
    with pytest.warns(
        UserWarning, match=r"burst\.csv: 1 of 4 rows have 0 prompt or 0 output tokens; clamped"
    ):
        reqs = load_file(path)
    assert [r.id for r in reqs] == ["1", "0", "2", "3"]
    assert [r.arrival_s for r in reqs] == [3.5, 5.0, 5.0, 9.0]
    assert [(r.prompt_len, r.output_len) for r in reqs] == [(1000, 250), (472, 18), (31, 7), (20, 1)]


def test_blank_lines_are_not_rows(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text(BURST_HEADER + "1,m,10,5,15,x\n\n2,m,11,6,17,x\n\n")
    assert [(r.id, r.prompt_len) for r in load_file(path)] == [("0", 10), ("1", 11)]


def _write_zero_rows(tmp_path: Path) -> Path:
    path = tmp_path / "zeros.csv"
    path.write_text(BURST_HEADER + "1,m,10,5,15,x\n2,m,0,6,6,x\n3,m,12,0,12,x\n4,m,13,7,20,x\n")
    return path


def test_zero_length_drop(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"zeros\.csv: 2 of 4 rows .*dropped \(zero_length='drop'\)"):
        reqs = load_file(_write_zero_rows(tmp_path), zero_length="drop")
    assert [r.id for r in reqs] == ["0", "3"]  # ids stay the rows' own


def test_zero_length_clamp(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"zeros\.csv: 2 of 4 rows"):
        reqs = load_file(_write_zero_rows(tmp_path))
    assert [(r.prompt_len, r.output_len) for r in reqs] == [(10, 5), (1, 6), (12, 1), (13, 7)]


def test_zero_length_error_names_line_and_field(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match=r"zeros\.csv line 3: Request tokens is 0"):
        load_file(_write_zero_rows(tmp_path), zero_length="error")
    with pytest.raises(ValueError, match="zero_length must be one of"):
        load_file(_write_zero_rows(tmp_path), zero_length="ignore")  # type: ignore[arg-type]


def test_no_warning_when_nothing_is_zero(tmp_path: Path) -> None:
    path = tmp_path / "ok.csv"
    path.write_text(BURST_HEADER + "1,m,10,5,15,x\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_file(path)) == 1


def test_mooncake_clamped_empty_prompt_becomes_length_only(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 0, "output_length": 3, "hash_ids": []}\n')
    with pytest.warns(UserWarning, match="1 of 1 rows"):
        (r,) = load_file(path)
    assert r.prompt_len == 1 and r.block_hashes is None


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(1, 200_000), st.integers(1, 5000)),
        min_size=1,
        max_size=30,
    )
)
def test_azure_round_trip(tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[int, int, int]]) -> None:
    """Any well-formed Azure file loads back to its lengths and relative times (microseconds)."""
    path = tmp_path_factory.mktemp("az") / "azure.csv"
    micros = np.cumsum([r[0] for r in rows])
    stamps = np.datetime64("2023-11-16T18:00:00.000000") + micros.astype("timedelta64[us]")
    lines = [f"{str(t).replace('T', ' ')}0,{p},{o}" for t, (_, p, o) in zip(stamps, rows, strict=True)]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(lines) + "\n")
    reqs = load_file(path)
    assert [(r.prompt_len, r.output_len) for r in reqs] == [(p, o) for _, p, o in rows]
    assert np.allclose([r.arrival_s for r in reqs], (micros - micros[0]) / 1e6, rtol=0, atol=1e-9)
