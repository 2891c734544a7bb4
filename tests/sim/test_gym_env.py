"""The Gymnasium environment: the official checker, episodes and the action semantics."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from policies.batching import make_policy
from policies.scheduler import SchedulerConfig
from policies.types import Request
from sim.gym_env import ServingEnv
from sim.simulator import simulate
from tests.sim.test_simulator import LinearCost


def trace(seed: int | None) -> list[Request]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(0.02, 40))
    return [Request(str(i), float(t[i]), int(rng.integers(20, 200)), int(rng.integers(2, 20))) for i in range(40)]


def make(window: int = 4, **kw) -> ServingEnv:  # noqa: ANN003
    return ServingEnv(trace, make_policy("continuous", max_num_seqs=4), SchedulerConfig(num_gpu_blocks=200),
                      LinearCost(0.005, 2e-5), window=window, **kw)


def test_passes_gymnasium_env_checker() -> None:
    check_env(make(), skip_render_check=True)


def run_episode(env: ServingEnv, policy) -> tuple[float, int]:  # noqa: ANN001
    obs, info = env.reset(seed=3)
    total, steps, done = 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        assert env.observation_space.contains(obs)
        total += reward
        steps += 1
        done = terminated or truncated
    return total, info["finished"]


def test_action_zero_reproduces_the_hand_written_policy() -> None:
    env = make()
    total, finished = run_episode(env, lambda obs: 0)
    assert finished == 40
    direct = simulate(trace(3), make_policy("continuous", max_num_seqs=4), SchedulerConfig(num_gpu_blocks=200),
                      LinearCost(0.005, 2e-5))
    assert env.sim is not None
    got = env.sim.result().requests.set_index("request_id")["finish_s"]
    want = direct.requests.set_index("request_id")["finish_s"]
    assert np.allclose(got.loc[want.index], want)
    # reward sums to minus the total time requests spent in the system
    assert -total == pytest.approx(direct.requests["e2e_s"].sum(), rel=1e-6)


def test_throttle_action_admits_nobody_and_picks_reorder() -> None:
    env = make()
    env.reset(seed=0)
    for _ in range(30):  # hold: requests pile up, none admitted
        obs, *_ = env.step(env.window + 1)
    assert env.sim is not None and len(env.sim.scheduler.running) == 0
    assert obs[0] > 1 and obs[5] == 1.0  # waiting count, and slot 0 present
    waiting = list(env.sim.scheduler.waiting)
    env.step(3)  # admit the third oldest first
    first = env.sim.scheduler.running[0]
    assert first is waiting[2]


def test_truncation_and_bad_actions() -> None:
    env = make(max_steps=5)
    env.reset(seed=1)
    out = [env.step(0) for _ in range(5)]
    assert out[-1][3] is True and not any(o[3] for o in out[:-1])
    with pytest.raises(ValueError, match="outside Discrete"):
        env.step(99)
    with pytest.raises(ValueError, match="window must be >= 1"):
        make(window=0)
