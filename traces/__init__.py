"""Request traces: real public traces, seeded synthetic workloads, and the CLI's trace spec grammar.

``load_trace(spec)`` turns a spec string (see :mod:`traces.spec`) into a list of :class:`Request`
sorted by arrival; ``materialize_token_ids`` gives length-only requests deterministic token ids.
"""

from policies.types import Request, SamplingParams
from traces.distributions import (
    EmpiricalLen,
    FixedLen,
    LengthDist,
    LogNormalLen,
    UniformLen,
    gamma_arrivals,
    poisson_arrivals,
)
from traces.loaders import TraceFormatError, detect_format, load_file
from traces.materialize import materialize_token_ids, materialize_trace
from traces.spec import TraceSpec, TraceSpecError, load_trace, parse_trace_spec
from traces.synthetic import HASH_BLOCK_SIZE, SyntheticConfig, generate
from traces.transforms import TraceTransforms

__all__ = [
    "HASH_BLOCK_SIZE",
    "EmpiricalLen",
    "FixedLen",
    "LengthDist",
    "LogNormalLen",
    "Request",
    "SamplingParams",
    "SyntheticConfig",
    "TraceFormatError",
    "TraceSpec",
    "TraceSpecError",
    "TraceTransforms",
    "UniformLen",
    "detect_format",
    "gamma_arrivals",
    "generate",
    "load_file",
    "load_trace",
    "materialize_token_ids",
    "materialize_trace",
    "parse_trace_spec",
    "poisson_arrivals",
]
