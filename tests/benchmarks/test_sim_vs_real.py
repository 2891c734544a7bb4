"""``benchmarks.sim_vs_real``: a reused profile is checked before any GPU work starts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks import sim_vs_real


def test_a_missing_profile_is_named_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.json"
    monkeypatch.setattr(sys, "argv", ["sim_vs_real", "--out", str(tmp_path / "out"), "--profile", str(missing)])
    monkeypatch.setattr(sim_vs_real, "run", lambda *a, **k: pytest.fail("ran a command before checking --profile"))
    with pytest.raises(SystemExit) as exit_info:
        sim_vs_real.main()
    assert exit_info.value.code == 2
    assert f"--profile {missing} is not a file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
