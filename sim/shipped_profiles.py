"""The profiles shipped with servegym, and the cost model a simulation uses by default.

``sim/profiles/`` holds roofline-derived profiles for every (model, GPU) pair (``python -m
sim.make_default_profiles``); ``sim/profiles/measured/`` holds profiles ``servegym calibrate`` wrote on real
GPUs, which take precedence for their (model, GPU, weights, KV) combination.
"""

from __future__ import annotations

from pathlib import Path

from sim.cost_model import CalibratedCostModel, CostModel, RooflineCostModel
from sim.hardware import get_gpu
from sim.model_spec import ModelSpec

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
MEASURED_DIR = PROFILES_DIR / "measured"  # profiles written by servegym calibrate on real GPUs


def profile_name(model: str, gpu: str, weight_dtype: str = "bf16", kv_dtype: str = "bf16") -> str:
    """File name of a shipped profile: ``<model>_<gpu>_<weights>[_kv-<kv>].json``."""
    return f"{model}_{gpu}_{weight_dtype}" + ("" if kv_dtype == "bf16" else f"_kv-{kv_dtype}") + ".json"


def load_cost_model(model: str, gpu: str, kind: str = "calibrated", profile: str | Path | None = None,
                    weight_dtype: str = "bf16", kv_dtype: str = "bf16", block_size: int = 16,
                    step_overhead_s: float = 0.0) -> CostModel:
    """The cost model the simulator uses.

    Args:
        model, gpu: names (``llama-3.2-1b``, ``h100``); a model may also be a config path.
        kind: 'calibrated' (a profile file) or 'roofline' (analytic).
        profile: profile path for 'calibrated'; default: the shipped one for
            (model, gpu, weight_dtype, kv_dtype): the measured one in ``sim/profiles/measured``
            where there is one, else the roofline-derived one in ``sim/profiles``.
        step_overhead_s: per-step overhead of the roofline model (a profile has its own).

    Raises:
        ValueError: unknown kind, model or GPU. FileNotFoundError: no such profile
        (the message lists the shipped ones).
    """
    if kind not in ("calibrated", "roofline"):
        raise ValueError(f"unknown cost model kind {kind!r}; known: ['calibrated', 'roofline']")
    spec, gpu_spec = ModelSpec.load(model), get_gpu(gpu)  # unknown names fail here, listing known ones
    if kind == "roofline":
        return RooflineCostModel(spec, gpu_spec, weight_dtype, kv_dtype, block_size, step_overhead_s)
    if profile is None:
        name = profile_name(spec.name, gpu_spec.name, weight_dtype, kv_dtype)
        profile = MEASURED_DIR / name if (MEASURED_DIR / name).is_file() else PROFILES_DIR / name
    path = Path(profile)
    if not path.is_file():
        shipped = sorted(str(p.relative_to(PROFILES_DIR)) for p in PROFILES_DIR.glob("**/*.json"))
        raise FileNotFoundError(f"no profile {path}; shipped profiles: {shipped} (or use kind='roofline', "
                                "or write one with python -m sim.make_default_profiles)")
    return CalibratedCostModel.from_file(path, block_size)
