"""How many draft tokens a simulated verification accepts.

The simulator has no tokens, so speculative decoding needs a model of acceptance.
``GeometricAcceptance`` is the standard one (Leviathan et al., 2023): each draft token
is accepted with probability ``alpha``, independently, given that all before it were;
a verification of ``k`` drafts accepts the first ``a`` of them with
``P(a >= i) = alpha^i``. The engine reports the same quantity
(``summary["spec_alpha"]``: accepted drafts over accepted drafts plus rejections, the
maximum-likelihood ``alpha`` of this model), so a measured replay calibrates it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


class GeometricAcceptance:
    """Seeded draws of accepted draft counts.

    Args:
        alpha: per-token acceptance probability, in [0, 1].
        seed: seed of the draws (a run is reproducible).
    """

    def __init__(self, alpha: float, seed: int = 0) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"acceptance alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha
        self._rng = random.Random(seed)

    def draw(self, draft_lens: Sequence[int]) -> list[int]:
        """Accepted drafts per decode of a step (``StepResult.accepted``).

        Args:
            draft_lens: draft tokens verified per decode (``StepPlan.draft_lens``).

        Returns:
            One count per decode, ``0 <= a_i <= draft_lens[i]``.
        """
        alpha, rand = self.alpha, self._rng.random
        out = []
        for k in draft_lens:
            a = 0
            while a < k and rand() < alpha:
                a += 1
            out.append(a)
        return out
