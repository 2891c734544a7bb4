"""Seaborn plots of simulation (and replay) results."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def latency_cdfs(requests: pd.DataFrame, path: Path) -> Path:
    """ECDFs of TTFT, TPOT and end-to-end latency, one line per run label.

    Args:
        requests: per-request rows with a ``label`` column and a ``trace`` column.
    """
    long = requests.melt(id_vars=["label", "trace"], value_vars=["ttft_s", "tpot_s", "e2e_s"],
                         var_name="metric", value_name="seconds").dropna()
    grid = sns.displot(long, x="seconds", hue="label", col="metric", row="trace", kind="ecdf",
                       log_scale=True, facet_kws={"sharex": False}, height=3.2, aspect=1.2)
    grid.set_titles("{row_name} | {col_name}")
    grid.savefig(path, dpi=110)
    plt.close(grid.figure)
    return path


def throughput_vs_load(summary: pd.DataFrame, path: Path) -> Path:
    """Output throughput and p99 end-to-end latency against the offered request rate."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sns.lineplot(summary, x="offered_rate_req_s", y="throughput_output_tok_s", hue="policy",
                 style="trace", marker="o", ax=axes[0])
    sns.lineplot(summary, x="offered_rate_req_s", y="e2e_p99_s", hue="policy", style="trace",
                 marker="o", ax=axes[1], legend=False)
    axes[0].set(xlabel="offered load (req/s)", ylabel="output tokens/s")
    axes[1].set(xlabel="offered load (req/s)", ylabel="p99 end-to-end latency (s)", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def kv_utilisation(steps: pd.DataFrame, path: Path, max_points: int = 2000) -> Path:
    """KV-cache utilisation over simulated time, one line per run label."""
    parts = []
    for _, group in steps.groupby(["trace", "label"], sort=False):
        stride = max(1, len(group) // max_points)
        parts.append(group.iloc[::stride])
    data = pd.concat(parts) if parts else steps
    grid = sns.relplot(data, x="start_s", y="kv_util", hue="label", row="trace", kind="line",
                       height=3.0, aspect=3.0, facet_kws={"sharex": False})
    grid.set_axis_labels("time (s)", "KV blocks in use")
    grid.savefig(path, dpi=110)
    plt.close(grid.figure)
    return path
