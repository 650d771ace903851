"""One evaluation for every algorithm: N episodes of a maze2d task in a vectorized env, with fixed seeds.

A policy is anything that maps a batch of dict observations to a batch of actions (B, 2): a callable, or an object
with a Stable-Baselines3-style ``predict(obs, deterministic=True) -> (actions, state)``. A stateful planner may
also define ``reset(num_envs)``; it is called before each batch of episodes starts. OGBench's pointmaze tasks have
their own protocol (five test goals, episodes that end at the goal) in ``envs.ogbench_eval.evaluate_ogbench``, which
takes the same policies and reuses ``as_batch_policy`` and ``log_evaluation`` from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from envs.tasks import GOAL_RADIUS, get_normalized_score, get_task, make


@dataclass
class EvalResult:
    """Per-episode outcomes of one evaluation and the metrics derived from them."""

    env_id: str
    returns: np.ndarray
    normalized_scores: np.ndarray
    success: np.ndarray  # goal reached at least once
    time_to_goal: np.ndarray  # steps to first reach the goal; the episode length when never reached
    seconds: float
    seeds: list[int] = field(default_factory=list)
    episode_length: int = 0  # the task's steps per episode (for the reach-then-stay return)

    @property
    def stay_returns(self) -> np.ndarray:
        """The return had the agent stayed at the goal from its first reach on: every step from the first one within
        the radius to the episode's end counts 1 (the DF authors' ``episode_reward_if_stay``); 0 if never reached."""
        return np.where(self.success, self.episode_length - self.time_to_goal + 1, 0.0)

    @property
    def stay_scores(self) -> np.ndarray:
        """``stay_returns`` normalized with D4RL's reference scores, like ``normalized_scores``."""
        return get_normalized_score(self.env_id, self.stay_returns)

    @property
    def reach_stay_score(self) -> float:
        return float(self.stay_scores.mean())

    @property
    def reach_stay_score_stderr(self) -> float:
        return _stderr(self.stay_scores)

    @property
    def num_episodes(self) -> int:
        return len(self.returns)

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean())

    @property
    def normalized_score(self) -> float:
        return float(self.normalized_scores.mean())

    @property
    def normalized_score_stderr(self) -> float:
        return _stderr(self.normalized_scores)

    @property
    def success_rate(self) -> float:
        return float(self.success.mean())

    @property
    def mean_time_to_goal(self) -> float:
        return float(self.time_to_goal.mean())

    @property
    def episodes_per_second(self) -> float:
        return self.num_episodes / max(self.seconds, 1e-9)

    def metrics(self) -> dict[str, float]:
        """The scalars every algorithm reports, keyed by their TensorBoard tag (without the ``eval/`` prefix)."""
        return {
            "normalized_score": self.normalized_score,
            "normalized_score_stderr": self.normalized_score_stderr,
            "return": self.mean_return,
            "reach_stay_score": self.reach_stay_score,
            "reach_stay_score_stderr": self.reach_stay_score_stderr,
            "success_rate": self.success_rate,
            "time_to_goal": self.mean_time_to_goal,
            "episodes_per_second": self.episodes_per_second,
        }

    def __str__(self) -> str:
        return (
            f"{self.env_id}: normalized score {self.normalized_score:.1f} ± {self.normalized_score_stderr:.1f}, "
            f"return {self.mean_return:.1f}, reach-then-stay {self.reach_stay_score:.1f} ± "
            f"{self.reach_stay_score_stderr:.1f}, success {100 * self.success_rate:.0f}%, "
            f"time to goal {self.mean_time_to_goal:.0f} steps ({self.num_episodes} episodes, "
            f"{self.episodes_per_second:.1f} episodes/s)"
        )


def _stderr(values: np.ndarray) -> float:
    n = len(values)
    return float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0


def as_batch_policy(policy):
    """A callable ``obs -> actions`` for a callable or an object with an SB3-style ``predict``."""
    if hasattr(policy, "predict"):
        return lambda obs: policy.predict(obs, deterministic=True)[0]
    if callable(policy):
        return policy
    raise TypeError(f"policy must be callable or have a predict method, got {type(policy).__name__}")


def _make_vector_env(env_id: str, num_envs: int) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv([lambda: make(env_id) for _ in range(num_envs)])


def evaluate(
    policy,
    env_id: str,
    num_episodes: int = 100,
    seed: int = 0,
    num_envs: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Run ``num_episodes`` episodes (episode i is seeded ``seed + i``) and compute every metric.

    Episodes run ``num_envs`` at a time (default: all of them, at most 100) in lockstep; maze2d episodes never
    terminate early, so every episode lasts the task's full length.
    """
    task = get_task(env_id)
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be at least 1, got {num_episodes}")
    num_envs = min(num_envs or min(num_episodes, 100), num_episodes)
    act = as_batch_policy(policy)
    horizon = task.max_episode_steps
    returns, success, time_to_goal = [], [], []
    start = time.perf_counter()
    vec_env = _make_vector_env(task.env_id, num_envs)
    bar = tqdm(total=num_episodes * horizon, desc=f"eval {task.env_id}", unit="step", disable=not progress)
    try:
        for first in range(0, num_episodes, num_envs):
            count = min(num_envs, num_episodes - first)
            obs, _ = vec_env.reset(seed=[seed + first + i for i in range(num_envs)])
            if hasattr(policy, "reset"):
                policy.reset(num_envs)
            episode_return = np.zeros(num_envs)
            reached_once = np.zeros(num_envs, dtype=bool)
            first_hit = np.full(num_envs, horizon)
            for t in range(horizon):
                actions = np.asarray(act(obs), dtype=np.float32)
                if actions.shape != (num_envs, 2):
                    raise ValueError(f"policy returned actions of shape {actions.shape}, expected ({num_envs}, 2)")
                obs, reward, _, _, _ = vec_env.step(np.clip(actions, -1.0, 1.0))
                episode_return += reward
                reached = np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"], axis=-1) <= GOAL_RADIUS
                first_hit[reached & ~reached_once] = t + 1
                reached_once |= reached
                bar.update(count)
            returns.append(episode_return[:count])
            success.append(reached_once[:count])
            time_to_goal.append(first_hit[:count])
    finally:
        bar.close()
        vec_env.close()
    returns = np.concatenate(returns)
    return EvalResult(
        env_id=task.env_id,
        returns=returns,
        normalized_scores=get_normalized_score(task.env_id, returns),
        success=np.concatenate(success),
        time_to_goal=np.concatenate(time_to_goal).astype(np.float64),
        seconds=time.perf_counter() - start,
        seeds=[seed + i for i in range(num_episodes)],
        episode_length=horizon,
    )


def log_evaluation(writer, result: EvalResult, global_step: int, prefix: str = "eval") -> None:
    """Write an evaluation's metrics to TensorBoard under the tags every algorithm shares (``eval/...``). Works for
    any result with ``metrics()``: OGBench's (``envs.ogbench_eval``) adds ``eval/success_rate_task1..5`` and more."""
    for name, value in result.metrics().items():
        writer.add_scalar(f"{prefix}/{name}", value, global_step)
