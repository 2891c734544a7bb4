"""Seeded random building blocks of synthetic traces: arrival processes and length distributions.

Arrival processes (first arrival at t = 0, then ``n - 1`` inter-arrival gaps):

- :func:`poisson_arrivals`: exponential gaps of mean ``1 / rate``.
- :func:`gamma_arrivals`: gamma gaps of mean ``1 / rate`` and coefficient of variation ``cv``
  (shape ``1 / cv**2``); ``cv = 1`` is a Poisson process, ``cv > 1`` is burstier, ``cv < 1`` more regular.

Length distributions (each a frozen dataclass with ``sample(rng, n) -> int64 array`` of values >= 1, and
``str()`` giving its spec form):

- :class:`FixedLen` ``fixed:N``; :class:`UniformLen` ``uniform:LO:HI`` (inclusive);
- :class:`LogNormalLen` ``lognormal:MEAN:CV[:MAX]``, parameterised by the mean and the coefficient of
  variation of the lengths themselves (not of the underlying normal): ``sigma**2 = ln(1 + cv**2)``,
  ``mu = ln(mean) - sigma**2 / 2``; values are rounded and clipped to ``[1, MAX]``;
- :class:`EmpiricalLen` ``empirical:PATH``: resampled (with replacement) from the prompt or output
  lengths of a trace file loaded with :func:`traces.loaders.load_file`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from traces.loaders import load_file


class LengthDist(Protocol):
    """A distribution of token counts."""

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw ``n`` lengths (int64, each >= 1)."""
        ...


def _check_rate_n(rate: float, n: int) -> None:
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a finite number > 0 (requests per second), got {rate}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")


def poisson_arrivals(rng: np.random.Generator, rate: float, n: int) -> np.ndarray:
    """Arrival times (s) of a Poisson process of ``rate`` requests/s, starting at 0.

    Returns:
        ``n`` non-decreasing float64 times, the first 0.
    """
    _check_rate_n(rate, n)
    gaps = rng.exponential(1.0 / rate, size=n - 1)
    return np.concatenate(([0.0], np.cumsum(gaps)))


def gamma_arrivals(rng: np.random.Generator, rate: float, cv: float, n: int) -> np.ndarray:
    """Arrival times (s) with gamma inter-arrival gaps: mean ``1 / rate``, coefficient of variation ``cv``.

    Returns:
        ``n`` non-decreasing float64 times, the first 0.
    """
    _check_rate_n(rate, n)
    if not (math.isfinite(cv) and cv > 0):
        raise ValueError(f"cv must be a finite number > 0, got {cv}")
    shape = 1.0 / cv**2
    gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n - 1)
    return np.concatenate(([0.0], np.cumsum(gaps)))


@dataclass(frozen=True)
class FixedLen:
    """Every length equals ``value``."""

    value: int

    def __post_init__(self) -> None:
        if self.value < 1:
            raise ValueError(f"fixed length must be >= 1, got {self.value}")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value, dtype=np.int64)

    def __str__(self) -> str:
        return f"fixed:{self.value}"


@dataclass(frozen=True)
class UniformLen:
    """Lengths uniform on the integers ``[lo, hi]``."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not (1 <= self.lo <= self.hi):
            raise ValueError(f"uniform lengths need 1 <= lo <= hi, got lo={self.lo}, hi={self.hi}")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.lo, self.hi, size=n, endpoint=True, dtype=np.int64)

    def __str__(self) -> str:
        return f"uniform:{self.lo}:{self.hi}"


@dataclass(frozen=True)
class LogNormalLen:
    """Log-normal lengths of the given mean and coefficient of variation, clipped to ``[1, max]``.

    Args:
        mean: mean length (before rounding and clipping).
        cv: standard deviation / mean of the lengths (0 gives the mean every time).
        max: upper clip, or None for none.
    """

    mean: float
    cv: float
    max: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and self.mean >= 1):
            raise ValueError(f"lognormal mean must be a finite number >= 1, got {self.mean}")
        if not (math.isfinite(self.cv) and self.cv >= 0):
            raise ValueError(f"lognormal cv must be a finite number >= 0, got {self.cv}")
        if self.max is not None and self.max < 1:
            raise ValueError(f"lognormal max must be >= 1, got {self.max}")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        sigma2 = math.log1p(self.cv**2)
        mu = math.log(self.mean) - sigma2 / 2
        x = np.rint(rng.lognormal(mu, math.sqrt(sigma2), size=n))
        return np.clip(x, 1, self.max if self.max is not None else np.inf).astype(np.int64)

    def __str__(self) -> str:
        tail = f":{self.max}" if self.max is not None else ""
        return f"lognormal:{self.mean:g}:{self.cv:g}{tail}"


@dataclass(frozen=True)
class EmpiricalLen:
    """Lengths resampled with replacement from a trace file's prompt or output lengths.

    The file is read when sampling (zero lengths clamped to 1, as :func:`load_file` does by default).
    """

    path: str
    field: Literal["prompt", "output"] = "prompt"

    def __post_init__(self) -> None:
        if self.field not in ("prompt", "output"):
            raise ValueError(f"empirical field must be 'prompt' or 'output', got {self.field!r}")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        requests = load_file(self.path)
        attr = "prompt_len" if self.field == "prompt" else "output_len"
        values = np.fromiter((getattr(r, attr) for r in requests), dtype=np.int64, count=len(requests))
        return rng.choice(values, size=n, replace=True)

    def __str__(self) -> str:
        return f"empirical:{self.path}"
