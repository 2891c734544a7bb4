"""servegym replay, calibrate and validate on a tiny random model (CPU): files, formats, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from experiments.cli import main
from experiments.engine_run import slug
from experiments.step_fit import STEP_FIT_COLUMNS
from experiments.validate import ERROR_COLUMNS, METRICS
from sim.profile import read_profile

TRACE = "synthetic:poisson,rate=50,n=12,seed=0,in=uniform:4:60,out=uniform:1:12"
ENGINE = ["--dtype", "float32", "--device", "cpu", "--num-gpu-blocks", "128"]
GRID = ["--batch-sizes", "1", "2", "4", "--decode-contexts", "8", "40", "96", "--prefill-tokens", "8", "32",
        "--prefill-context", "64", "--warmup", "1", "--repeats", "2", "--passes", "2", "--mixed-tokens", "8",
        "--mixed-batches", "2", "3", "--mixed-context", "16"]


@pytest.fixture(scope="module")
def profile(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("profile") / "tiny.json"
    assert main(["calibrate", "--model", str(tiny_model), "--out", str(out), "--quiet", *ENGINE, *GRID]) == 0
    return out


def test_replay_writes_the_simulators_format(tiny_model: Path, tmp_path: Path) -> None:
    real, sim = tmp_path / "real", tmp_path / "sim"
    assert main(["replay", "--trace", TRACE, "--policy", "continuous", "--model", str(tiny_model),
                 "--out", str(real), "--quiet", *ENGINE]) == 0
    assert main(["sim", "--trace", TRACE, "--policy", "continuous", "--out", str(sim), "--quiet",
                 "--num-gpu-blocks", "128"]) == 0
    for name in ("requests.parquet", "steps.parquet"):
        a, b = pd.read_parquet(real / name), pd.read_parquet(sim / name)
        assert list(a.columns) == list(b.columns) and len(a) > 0
    summary = json.loads((real / "summary.json").read_text())
    assert summary.keys() == json.loads((sim / "summary.json").read_text()).keys()
    assert summary["num_finished"] == 12 and summary["num_gpu_blocks"] == 128
    assert summary["trace"] == "poisson-r50" and summary["policy"] == "continuous"
    reqs = pd.read_parquet(real / "requests.parquet")
    sim_reqs = pd.read_parquet(sim / "requests.parquet")
    assert sorted(reqs["output_len"]) == sorted(sim_reqs["output_len"])  # exactly the trace's lengths
    assert (reqs["ttft_s"] > 0).all()


def test_calibrate_writes_a_valid_measured_profile(profile: Path) -> None:
    data = read_profile(profile)  # validates
    meta = data["meta"]
    assert meta["source"] == "measured" and meta["command"].startswith("servegym calibrate --model")
    assert "--prefill-context 64" in meta["command"]
    assert len(meta["decode_samples"]) == 9 and len(meta["prefill_samples"]) == 4
    # every decode shape timed in both passes (2 steps each); the kept time is the trimmed mean of all 4
    assert [len(t) for t in meta["decode_pass_times_s"]] == [2] * 9
    # the decode steps by batch size and context per sequence, as measured (3 batch sizes x 3 contexts)
    steps = data["decode_steps"]
    assert steps["batch"] == [1, 2, 4] and all(len(c) == 3 for c in steps["ctx"])
    for b, ctxs, times in zip(steps["batch"], steps["ctx"], steps["time_s"], strict=True):
        measured = sorted((d["ctx_tokens"] / b, d["time_s"]) for d in meta["decode_samples"] if d["batch"] == b)
        assert ctxs == [c for c, _ in measured] and 8 <= ctxs[0] < ctxs[1] < ctxs[2] <= 96 + 8
        assert times == sorted(times) and sum(times) == pytest.approx(sum(t for _, t in measured))
    for d in meta["decode_samples"]:
        assert len(d["times"]) == 4 and d["time_s"] == pytest.approx(sum(sorted(d["times"])) / 4)
    assert data["step_overhead_s"] >= 0 and data["kv_bytes_per_token"] == 2 * 2 * 2 * 8 * 4  # K+V, layers, heads
    assert set(data["tables"]) == {"dense", "decode_attention", "prefill_attention", "mixed_dense", "mixed_decode",
                                    "prefill_context"}
    # one 8-token chunk beside 2 and beside 3 decodes of ~16-token contexts
    assert [(m["tokens"], m["batch"]) for m in meta["mixed_samples"]] == [(8, 2), (8, 3)]
    assert all(16 * m["batch"] <= m["ctx_tokens"] <= 32 * m["batch"] for m in meta["mixed_samples"])
    assert data["tables"]["mixed_decode"]["x"][0] == 0.0
    # the host tail: each sample's postprocess time, measured, and fitted as a non-negative linear model
    tails = [d["tail_s"] for d in meta["decode_samples"]] + [p["tail_s"] for p in meta["prefill_samples"]]
    assert all(0 < t < 0.05 for t in tails)
    assert set(data["host_tail_s"]) == {"step", "per_prefill_token", "per_decode"}
    assert min(data["host_tail_s"].values()) >= 0 and sum(data["host_tail_s"].values()) > 0


def test_validate_writes_errors_and_plots(tiny_model: Path, profile: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    # a policy named twice runs twice, the second labelled 'continuous-2' (the engine's own spread)
    specs = ["static", "dynamic:max_wait_s=0.05", "continuous", "prefix-aware", "continuous"]
    policies = [*specs[:-1], "continuous-2"]
    assert main(["validate", "--traces", TRACE, "--policies", *specs, "--model", str(tiny_model),
                 "--profile", str(profile), "--out", str(tmp_path), "--quiet", *ENGINE]) == 0
    errors = pd.read_csv(tmp_path / "errors.csv")
    assert tuple(errors.columns) == ERROR_COLUMNS
    assert len(errors) == len(policies) * len(METRICS)
    assert list(dict.fromkeys(errors["policy"])) == policies
    assert list(errors["metric"][: len(METRICS)]) == list(METRICS)
    second = json.loads((tmp_path / "poisson-r50" / "continuous-2" / "real" / "summary.json").read_text())
    assert second["policy"] == "continuous-2" and second["num_finished"] == 12
    row = errors[(errors["policy"] == "continuous") & (errors["metric"] == "e2e_mean_s")].iloc[0]
    assert row["rel_error"] == pytest.approx((row["sim"] - row["real"]) / row["real"])
    trace_dir = tmp_path / "poisson-r50"
    for png in ("latency_cdf.png", "e2e_scatter.png", "kv_util.png"):
        assert (trace_dir / png).stat().st_size > 5_000
    for world in ("real", "sim"):
        assert json.loads((trace_dir / "continuous" / world / "summary.json").read_text())["num_finished"] == 12
    out = capsys.readouterr().out
    assert "relative error" in out and "cost model on the real runs' steps" in out
    fit = pd.read_csv(tmp_path / "step_fit.csv")
    assert tuple(fit.columns) == STEP_FIT_COLUMNS and set(fit["policy"]) == set(policies)
    for (_trace, policy), part in fit.groupby(["trace", "policy"]):
        whole = part[part["kind"] == "all"].iloc[0]
        kinds = part[part["kind"] != "all"]
        assert whole["steps"] == kinds["steps"].sum() > 0
        assert whole["real_s"] == pytest.approx(kinds["real_s"].sum()) and whole["real_s"] > 0
        steps = pd.read_parquet(tmp_path / "poisson-r50" / slug(policy) / "real" / "steps.parquet")
        busy = steps[steps["prefill_tokens"] + steps["decodes"] > 0]
        assert whole["steps"] == len(busy) and whole["real_s"] == pytest.approx(busy["duration_s"].sum())

    # --real-from: the saved replays, simulated again with no engine (a config.json alone is the model)
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    shutil.copy(tiny_model / "config.json", config_only / "config.json")
    again = tmp_path / "again"
    resim = ["validate", "--traces", TRACE, "--policies", *specs, "--model", str(config_only), "--out", str(again),
             "--quiet", "--real-from", str(tmp_path), *ENGINE]
    assert main([*resim, "--profile", str(profile)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(again / "errors.csv"), errors)  # the same simulations, the same rows
    assert not (again / "poisson-r50" / "continuous" / "real").exists()
    slower = json.loads(profile.read_text())
    slower["step_overhead_s"] += 0.01
    (tmp_path / "slower.json").write_text(json.dumps(slower))
    assert main([*resim, "--profile", str(tmp_path / "slower.json")]) == 0
    priced = pd.read_csv(again / "errors.csv")
    assert priced["real"].equals(errors["real"])
    e2e = priced["metric"] == "e2e_mean_s"
    assert (priced.loc[e2e, "sim"] > errors.loc[e2e, "sim"]).all()
    capsys.readouterr()
    assert main([*resim, "--profile", str(profile), "--policies", "continuous:max_num_seqs=3"]) == 2
    err = capsys.readouterr().err
    assert "--real-from" in err and "continuous-max_num_seqs=3" in err and "requests.parquet" in err


def test_calibrate_with_the_lookahead_times_cold_decode_steps_too(tiny_model: Path, profile: Path,
                                                                   tmp_path: Path) -> None:
    from sim.cost_model import CalibratedCostModel

    out = tmp_path / "ahead.json"
    grid = ["--batch-sizes", "1", "3", "--decode-contexts", "8", "40", "--prefill-tokens", "8", "32", "--warmup", "1",
            "--repeats", "2", "--passes", "1", "--mixed-batches", "2", "3"]
    assert main(["calibrate", "--model", str(tiny_model), "--out", str(out), "--quiet", *ENGINE, *grid,
                 "--decode-lookahead", "true"]) == 0
    data = read_profile(out)
    cold, served = data["decode_steps_cold"], data["decode_steps"]
    assert cold["batch"] == served["batch"] == [1, 3]
    assert [len(c) for c in cold["ctx"]] == [2, 2] and min(min(t) for t in cold["time_s"]) > 0
    samples = data["meta"]["cold_decode_samples"]
    assert sorted((d["batch"], len(d["times"])) for d in samples) == [(1, 2), (1, 2), (3, 2), (3, 2)]
    assert CalibratedCostModel(data).lookahead_rows == data["graph_batch_sizes"][-1]
    # the served samples keep only the steps a looked-ahead step served (at most the 2 timed ones)
    assert all(1 <= len(d["times"]) <= 2 for d in data["meta"]["decode_samples"])
    plain = read_profile(profile)  # an engine without the lookahead: every step alike
    assert "decode_steps_cold" not in plain and plain["meta"]["cold_decode_samples"] == []
    assert CalibratedCostModel(plain).lookahead_rows is None
    # validated with the lookahead in both worlds: both count the served steps
    assert main(["validate", "--traces", TRACE, "--policies", "continuous", "--model", str(tiny_model),
                 "--profile", str(out), "--out", str(tmp_path / "v"), "--quiet", *ENGINE,
                 "--decode-lookahead", "true"]) == 0
    errors = pd.read_csv(tmp_path / "v" / "errors.csv")
    assert list(errors["metric"]) == [*METRICS, "lookahead_served_steps"]
    served_row = errors.iloc[-1]
    assert served_row["real"] > 0 and served_row["sim"] > 0


@pytest.fixture(scope="module")
def spec_profile(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("profile") / "tiny_spec.json"
    assert main(["calibrate", "--model", str(tiny_model), "--out", str(out), "--quiet", *ENGINE, *GRID,
                 "--speculative-method", "ngram", "--verify-batches", "1", "3", "--verify-drafts", "2", "4"]) == 0
    return out


def test_calibrate_with_a_proposer_times_verification_steps(spec_profile: Path, profile: Path) -> None:
    data = read_profile(spec_profile)
    verify = data["meta"]["verify_samples"]
    assert sorted((v["batch"], v["drafts"]) for v in verify) == [(1, 2)] * 2 + [(1, 4)] * 2 + [(3, 2)] * 2 + [
        (3, 4)] * 2  # each shape at both decode contexts
    for v in verify:  # draft row j of a decode at context c reads c + j keys
        per_seq = v["ctx_tokens"] / v["batch"]
        k = v["drafts"]
        assert v["draft_ctx_tokens"] == pytest.approx(v["batch"] * (k * per_seq + k * (k + 1) / 2))
        assert v["time_s"] > 0
    spec = data["speculative_overhead_s"]
    assert set(spec) == {"step", "per_decode", "per_draft"} and min(spec.values()) >= 0
    assert data["verify_group_rows"] == 1  # the CPU engine's torch attention reads each row's context
    assert data["tables"]["draft_attention"]["x"][0] == 0.0
    assert "speculative_overhead_s" not in read_profile(profile)  # no proposer, no verification steps


def test_validate_with_speculation_compares_acceptance(tiny_model: Path, spec_profile: Path, tmp_path: Path) -> None:
    """The replay speculates with n-gram drafts; the simulator draws acceptances at the replay's spec_alpha."""
    assert main(["validate", "--traces", TRACE, "--policies", "continuous", "--model", str(tiny_model),
                 "--profile", str(spec_profile), "--out", str(tmp_path), "--quiet", "--speculation",
                 "fixed:num_draft_tokens=3", "--speculative-method", "ngram", *ENGINE]) == 0
    errors = pd.read_csv(tmp_path / "errors.csv")
    assert list(errors["metric"]) == [*METRICS, "spec_acceptance_rate"]
    real = json.loads((tmp_path / "poisson-r50" / "continuous" / "real" / "summary.json").read_text())
    sim = json.loads((tmp_path / "poisson-r50" / "continuous" / "sim" / "summary.json").read_text())
    assert real["spec_draft_tokens"] > 0 and sim["spec_draft_tokens"] > 0
    assert real["num_finished"] == sim["num_finished"] == 12
    spec_row = errors[errors["metric"] == "spec_acceptance_rate"].iloc[0]
    assert spec_row["real"] == pytest.approx(real["spec_acceptance_rate"])


@pytest.mark.parametrize(("command", "args", "message"), [
    ("replay", ["--model", "/no/such/model"], "model folder /no/such/model does not exist"),
    ("replay", ["--policy", "fastest"], "unknown policy 'fastest'"),
    ("replay", ["--max-model-len", "16"], "max_model_len is 16"),
    ("replay", ["--num-gpu-blocks", "2"], "pool has only 2 blocks"),
    ("replay", ["--speculation", "fixed"], "--speculation needs --speculative-method ngram or draft"),
    ("replay", ["--speculative-method", "draft"], "draft_model: must be given exactly when"),
    ("replay", ["--speculation", "sometimes", "--speculative-method", "ngram"], "unknown speculation policy"),
    ("calibrate", ["--model", "/no/such/model"], "model folder /no/such/model does not exist"),
    ("validate", ["--profile", "/no/profile.json"], "profile /no/profile.json does not exist"),
    ("validate", ["--policies", "nope"], "unknown policy 'nope'"),  # reported before the missing profile
])
def test_bad_input_exits_2(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str,
                           args: list[str], message: str) -> None:
    base = {"--model": str(tiny_model), "--out": str(tmp_path / "o"), "--dtype": "float32", "--device": "cpu",
            "--num-gpu-blocks": "128"}
    if command == "replay":
        base["--trace"] = TRACE
    if command == "validate":
        base |= {"--traces": TRACE, "--profile": str(tmp_path / "p.json")}
    base |= dict(zip(args[::2], args[1::2], strict=True))
    argv = [command, "--quiet", *[x for kv in base.items() for x in kv]]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
