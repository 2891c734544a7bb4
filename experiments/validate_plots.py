"""Seaborn plots of a sim-vs-real validation: the two worlds overlaid, per trace."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

WORLD_COLORS = {"real": "#1f77b4", "sim": "#ff7f0e"}


def latency_cdfs(requests: pd.DataFrame, path: Path) -> Path:
    """ECDFs of TTFT, TPOT and end-to-end latency: one row per policy, sim and real overlaid.

    Args:
        requests: per-request rows of both worlds with ``world`` and ``policy`` columns.
    """
    long = requests.melt(id_vars=["world", "policy"], value_vars=["ttft_s", "tpot_s", "e2e_s"],
                         var_name="metric", value_name="seconds").dropna()
    long = long[long["seconds"] > 0]
    grid = sns.displot(long, x="seconds", hue="world", col="metric", row="policy", kind="ecdf", log_scale=True,
                       palette=WORLD_COLORS, facet_kws={"sharex": False}, height=2.8, aspect=1.3)
    grid.set_titles("{row_name} | {col_name}")
    for ax in grid.axes.flat:  # a narrow log axis labels its minor ticks too, and they overlap
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    grid.savefig(path, dpi=100)
    plt.close(grid.figure)
    return path


def e2e_scatter(requests: pd.DataFrame, path: Path) -> Path:
    """Per-request end-to-end latency, simulated against measured, with the identity line."""
    wide = requests.pivot_table(index=["policy", "request_id"], columns="world", values="e2e_s").reset_index()
    wide = wide.dropna(subset=["real", "sim"])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    sns.scatterplot(wide, x="real", y="sim", hue="policy", s=14, alpha=0.6, ax=ax)
    if len(wide):
        lo = float(np.nanmin(wide[["real", "sim"]].to_numpy()))
        hi = float(np.nanmax(wide[["real", "sim"]].to_numpy()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="sim = real")
        if lo > 0:
            ax.set(xscale="log", yscale="log")
    ax.set(xlabel="real end-to-end latency (s)", ylabel="simulated end-to-end latency (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def kv_utilisation(steps: pd.DataFrame, path: Path, max_points: int = 1500) -> Path:
    """KV-cache utilisation over time: one row per policy, sim and real overlaid."""
    parts = []
    for _, group in steps.groupby(["policy", "world"], sort=False):
        parts.append(group.iloc[:: max(1, len(group) // max_points)])
    data = pd.concat(parts) if parts else steps
    grid = sns.relplot(data, x="start_s", y="kv_util", hue="world", row="policy", kind="line", palette=WORLD_COLORS,
                       height=2.4, aspect=3.5, facet_kws={"sharex": False})
    grid.set_axis_labels("time (s)", "KV blocks in use")
    grid.savefig(path, dpi=100)
    plt.close(grid.figure)
    return path


def error_heatmap(errors: pd.DataFrame, path: Path) -> Path:
    """Relative error (sim - real) / real per metric and run, clipped to +-100%."""
    table = errors.assign(run=errors["trace"] + " | " + errors["policy"]).pivot_table(
        index="metric", columns="run", values="rel_error", sort=False, dropna=False)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * max(1, table.shape[1]), 0.9 + 0.4 * len(table)))
    sns.heatmap(table.clip(-1, 1) * 100, annot=True, fmt=".0f", center=0, cmap="RdBu_r", vmin=-100, vmax=100,
                cbar_kws={"label": "relative error (%)"}, ax=ax)
    ax.set(xlabel="", ylabel="")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
