"""The shared evaluation on OGBench's pointmaze tasks, by OGBench's protocol (issue 14, item 3).

OGBench's protocol: each maze has five fixed test goals (``env.reset(options=dict(task_id=k))``, k = 1..5); a
method is run for N episodes per goal (OGBench's default, and ours, 50: 250 episodes); an episode ends at the first
step with ``info['success']`` (the env terminates there: OGBench makes its envs with ``terminate_at_goal=True``) or
at the time limit (the registered ``max_episode_steps``, 1000 for pointmaze); actions are clipped to [-1, 1]. The
score is the success rate, per goal and overall.

Episode seeds: the episodes of goal k (1..5) are seeded ``seed + (k - 1) * episodes_per_goal + i`` for
i = 0..N-1, goal after goal. A seed fixes the whole start state: ``env.reset(seed=...)`` seeds the env's own RNG
(initial velocity), and OGBench's start/goal noise, which it draws from NumPy's *global* RNG (``np.random``), comes
from a ``np.random.RandomState(seed)`` that each env swaps in around its own calls (``IsolatedGlobalRNG``), so the
episodes do not depend on the batching, on each other or on anything else using ``np.random``, and evaluating
leaves the caller's ``np.random`` untouched. (OGBench's own ``main.py`` seeds ``np.random`` once per run instead.)

The policy sees what the maze2d tasks' Gymnasium-Robotics observations look like, a dict of batched arrays:

* ``observation`` (B, 2): OGBench's pointmaze observation, the point's (x, y) (``qpos``), as in the datasets;
* ``achieved_goal`` (B, 2): the same (x, y) (OGBench's goal observation of a pointmaze is a position);
* ``desired_goal`` (B, 2): the goal's (x, y), ``info['goal']`` of the reset (the test goal plus OGBench's noise);
* ``qvel`` (B, 2): the point's velocity (not in OGBench's observation; the datasets keep it in ``qvel``).

Unlike maze2d's 4-D ``observation`` (x, y, vx, vy), OGBench's is 2-D. Policies are the same kinds as in
``envs.evaluation``: callables on the batch or SB3-style ``predict``; ``reset(num_envs)`` is called before each batch.
Each batch is the episodes of one goal (all of them by default), stepped together in a Gymnasium
``SyncVectorEnv``; an episode that has ended keeps showing its last observation to the policy until the batch ends
(its env restarts behind the scenes and is ignored).

    python -m envs.ogbench_eval --env pointmaze-medium-navigate-v0 --policy oracle --episodes-per-goal 50
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from dataclasses import dataclass, field
from typing import ClassVar

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from envs.evaluation import _stderr, as_batch_policy, log_evaluation
from envs.ogbench_tasks import NUM_EVAL_TASKS, OGBENCH_TASKS, get_ogbench_task, make_ogbench_env

DEFAULT_EPISODES_PER_GOAL = 50  # OGBench's eval_episodes


@dataclass
class OGBenchEvalResult:
    """Per-episode outcomes of one OGBench evaluation (goal after goal) and the metrics derived from them."""

    benchmark: ClassVar[str] = "ogbench"

    env_id: str
    task_ids: np.ndarray  # (E,) the test goal (1..5) of each episode
    success: np.ndarray  # (E,) info['success'] at some step (the episode then ended)
    time_to_goal: np.ndarray  # (E,) steps to the first success; the episode length when never reached
    seconds: float
    seeds: list[int] = field(default_factory=list)
    episode_length: int = 0  # the time limit of an episode
    episodes_per_goal: int = 0

    @property
    def num_episodes(self) -> int:
        return len(self.success)

    @property
    def returns(self) -> np.ndarray:
        """OGBench's reward is 1 on the success step and the episode ends there: the return is the success."""
        return self.success.astype(np.float64)

    @property
    def success_rate(self) -> float:
        return float(self.success.mean())

    @property
    def success_rate_stderr(self) -> float:
        return _stderr(self.success.astype(np.float64))

    def task_success(self, task_id: int) -> np.ndarray:
        return self.success[self.task_ids == task_id]

    def task_success_rate(self, task_id: int) -> float:
        success = self.task_success(task_id)
        return float(success.mean()) if len(success) else float("nan")

    def task_success_rate_stderr(self, task_id: int) -> float:
        return _stderr(self.task_success(task_id).astype(np.float64))

    def task_time_to_goal(self, task_id: int) -> float:
        times = self.time_to_goal[self.task_ids == task_id]
        return float(times.mean()) if len(times) else float("nan")

    @property
    def mean_time_to_goal(self) -> float:
        return float(self.time_to_goal.mean())

    @property
    def episodes_per_second(self) -> float:
        return self.num_episodes / max(self.seconds, 1e-9)

    def metrics(self) -> dict[str, float]:
        """The scalars reported, keyed by their TensorBoard tag (without the ``eval/`` prefix)."""
        metrics = {"success_rate": self.success_rate, "success_rate_stderr": self.success_rate_stderr}
        for k in range(1, NUM_EVAL_TASKS + 1):
            metrics[f"success_rate_task{k}"] = self.task_success_rate(k)
        metrics["time_to_goal"] = self.mean_time_to_goal
        for k in range(1, NUM_EVAL_TASKS + 1):
            metrics[f"time_to_goal_task{k}"] = self.task_time_to_goal(k)
        metrics["episodes_per_second"] = self.episodes_per_second
        return metrics

    def episode_arrays(self) -> dict[str, list]:
        """The per-episode arrays of a record (``envs.records.make_record``)."""
        return {
            "seeds": list(self.seeds),
            "task_ids": self.task_ids.astype(int).tolist(),
            "success": self.success.astype(bool).tolist(),
            "time_to_goal": self.time_to_goal.tolist(),
        }

    def __str__(self) -> str:
        evaluated = sorted(set(self.task_ids.tolist()))  # all five, or the goals asked for
        per_task = ", ".join(f"task{k} {100 * self.task_success_rate(k):.0f}%" for k in evaluated)
        return (
            f"{self.env_id}: success {100 * self.success_rate:.1f} ± {100 * self.success_rate_stderr:.1f}% "
            f"({per_task}), time to goal {self.mean_time_to_goal:.0f} steps ({self.num_episodes} episodes, "
            f"{self.seconds:.1f} s, {self.episodes_per_second:.1f} episodes/s)"
        )


class IsolatedGlobalRNG(gym.Wrapper):
    """Gives an OGBench env its own ``np.random`` stream: OGBench draws the start and goal noise from NumPy's global
    RNG. A reset with a seed restarts the stream at ``np.random.RandomState(seed)`` (and seeds the action space,
    which OGBench's reset samples from); around each reset the env's stream is swapped in and the caller's restored.
    Steps are passed through as they are: a pointmaze step draws nothing from ``np.random`` (only OGBench's teleport
    maze does, which is not one of our tasks), and a swap costs about 0.4 ms, more than the step itself."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._state = np.random.RandomState().get_state()

    def _call(self, method, *args, **kwargs):
        outside = np.random.get_state()
        np.random.set_state(self._state)
        try:
            return method(*args, **kwargs)
        finally:
            self._state = np.random.get_state()
            np.random.set_state(outside)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._state = np.random.RandomState(seed).get_state()
            self.env.action_space.seed(seed)
        return self._call(self.env.reset, seed=seed, options=options)


def make_eval_env(env_id: str, max_episode_steps: int | None = None) -> gym.Env:
    """One evaluation env: OGBench's env (its TimeLimit, or ``max_episode_steps``) with its own ``np.random``."""
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": int(max_episode_steps)}
    return IsolatedGlobalRNG(make_ogbench_env(env_id, **kwargs))


def reset_episode(env: gym.Env, task_id: int, seed: int):
    """``(observation, info)`` of the evaluation episode of goal ``task_id`` with ``seed``, on an env from
    ``make_eval_env`` (the start an evaluation gives that seed)."""
    return env.reset(seed=int(seed), options=dict(task_id=int(task_id)))


def episode_seeds(task_id: int, episodes_per_goal: int, seed: int = 0) -> list[int]:
    """The seeds of goal ``task_id``'s episodes: ``seed + (task_id - 1) * episodes_per_goal + i``."""
    first = seed + (task_id - 1) * episodes_per_goal
    return list(range(first, first + episodes_per_goal))


def evaluate_ogbench(
    policy,
    env_id: str,
    episodes_per_goal: int = DEFAULT_EPISODES_PER_GOAL,
    seed: int = 0,
    num_envs: int | None = None,
    task_ids: tuple[int, ...] | None = None,
    max_episode_steps: int | None = None,
    progress: bool = True,
) -> OGBenchEvalResult:
    """Run ``episodes_per_goal`` episodes on each of the maze's five test goals and compute every metric.

    The episodes of a goal run ``num_envs`` at a time (default: all of them, one batch per goal) in lockstep, until
    all of the batch have ended. ``task_ids`` restricts the goals (default 1..5; the seeds stay those of the full
    evaluation); ``max_episode_steps`` overrides the time limit (default: the task's, 1000), for quick checks only.
    """
    if env_id not in OGBENCH_TASKS and isinstance(env_id, str) and env_id.startswith("maze2d"):
        raise ValueError(f"{env_id!r} is a maze2d task: evaluate it with envs.evaluation.evaluate")
    task = get_ogbench_task(env_id)
    if episodes_per_goal < 1:
        raise ValueError(f"episodes_per_goal must be at least 1, got {episodes_per_goal}")
    task_ids = tuple(range(1, NUM_EVAL_TASKS + 1)) if task_ids is None else tuple(int(k) for k in task_ids)
    if not task_ids or any(not 1 <= k <= NUM_EVAL_TASKS for k in task_ids):
        raise ValueError(f"task_ids must be among 1..{NUM_EVAL_TASKS}, got {task_ids}")
    horizon = task.max_episode_steps if max_episode_steps is None else int(max_episode_steps)
    if horizon < 1:
        raise ValueError(f"max_episode_steps must be at least 1, got {horizon}")
    num_envs = min(num_envs or episodes_per_goal, episodes_per_goal)
    act = _masked_batch_policy(policy)
    all_tasks, all_seeds, success, time_to_goal = [], [], [], []
    start = time.perf_counter()
    vec_env = gym.vector.SyncVectorEnv([lambda: make_eval_env(task.env_id, horizon) for _ in range(num_envs)])
    total = len(task_ids) * episodes_per_goal
    bar = tqdm(total=total, desc=f"eval {task.env_id}", unit="episode", disable=not progress)
    try:
        for task_id in task_ids:
            seeds = episode_seeds(task_id, episodes_per_goal, seed)
            for first in range(0, episodes_per_goal, num_envs):
                count = min(num_envs, episodes_per_goal - first)
                batch_seeds = seeds[first : first + count]
                batch_seeds += [batch_seeds[-1] + 1 + i for i in range(num_envs - count)]  # unused envs
                ok, steps = _run_batch(vec_env, act, policy, task_id, batch_seeds, count, horizon)
                all_tasks += [task_id] * count
                all_seeds += batch_seeds[:count]
                success.append(ok[:count])
                time_to_goal.append(steps[:count])
                bar.update(count)
    finally:
        bar.close()
        vec_env.close()
    return OGBenchEvalResult(
        env_id=task.env_id,
        task_ids=np.asarray(all_tasks, dtype=np.int64),
        success=np.concatenate(success),
        time_to_goal=np.concatenate(time_to_goal).astype(np.float64),
        seconds=time.perf_counter() - start,
        seeds=all_seeds,
        episode_length=horizon,
        episodes_per_goal=episodes_per_goal,
    )


def _run_batch(
    vec_env, act, policy, task_id: int, seeds: list[int], count: int, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """One batch of episodes of one goal, until each of the first ``count`` envs has ended (the others are spare
    envs of a last, smaller batch): (success, time to goal) per env."""
    num_envs = vec_env.num_envs
    positions, info = vec_env.reset(seed=seeds, options=dict(task_id=task_id))
    goals = np.asarray(info["goal"], dtype=np.float64).copy()
    positions = np.asarray(positions, dtype=np.float64).copy()
    velocities = _velocities(vec_env)
    if hasattr(policy, "reset"):
        policy.reset(num_envs)
    done = np.arange(num_envs) >= count
    success = np.zeros(num_envs, dtype=bool)
    first_hit = np.full(num_envs, horizon)
    for t in range(horizon):
        obs = {
            "observation": positions.copy(),
            "achieved_goal": positions.copy(),
            "desired_goal": goals.copy(),
            "qvel": velocities.copy(),
        }
        actions = np.asarray(act(obs, ~done), dtype=np.float64)
        if actions.shape != (num_envs, 2):
            raise ValueError(f"policy returned actions of shape {actions.shape}, expected ({num_envs}, 2)")
        if not np.all(np.isfinite(actions[~done])):
            raise ValueError("policy returned NaN or infinite actions")
        actions = np.where(done[:, None], 0.0, np.clip(actions, -1.0, 1.0))
        new_positions, _, terminated, truncated, info = vec_env.step(actions)
        live = ~done
        reached = live & (np.asarray(info.get("success", np.zeros(num_envs))) > 0)
        first_hit[reached] = t + 1
        success |= reached
        positions[live] = new_positions[live]
        velocities[live] = _velocities(vec_env)[live]
        done |= live & (np.asarray(terminated) | np.asarray(truncated) | reached)
        if done.all():
            break
    return success, first_hit


def _masked_batch_policy(policy):
    """A callable ``(obs, live) -> actions``. A policy whose ``act`` takes ``active`` (``df_agent.Agent``) is told
    which episodes of the batch go on, so it does not plan for the ended ones; any other policy sees every env's
    observation (an ended env's stays at its last) and its actions for the ended envs are ignored."""
    act = getattr(policy, "act", None)
    if callable(act) and "active" in inspect.signature(act).parameters:
        return lambda obs, live: act(obs, active=live)
    batch_policy = as_batch_policy(policy)
    return lambda obs, live: batch_policy(obs)


def _velocities(vec_env) -> np.ndarray:
    return np.stack([np.array(env.unwrapped.data.qvel, dtype=np.float64) for env in vec_env.envs])


class OGBenchOracle:
    """OGBench's pointmaze expert without noise, for scale: the unit vector towards the next cell on the BFS shortest
    path to the goal's cell (``get_oracle_subgoal``), or towards the goal itself inside its cell
    (``MazeGrid.expert_direction``; OGBench's data generator heads for the cell's centre there instead, which would
    never reach a goal its noise put far from the centre)."""

    def __init__(self, env_id: str):
        from envs.ogbench_datasets import MazeGrid  # the generator's BFS tables (imports Minari, MuJoCo rollout)

        env = make_ogbench_env(env_id)
        try:
            self.grid = MazeGrid(env)
        finally:
            env.close()

    def __call__(self, obs) -> np.ndarray:
        xy = np.atleast_2d(np.asarray(obs["observation"], dtype=np.float64))[:, :2]
        goal = np.atleast_2d(np.asarray(obs["desired_goal"], dtype=np.float64))
        return self.grid.expert_direction(xy, goal)


class RandomPolicy:
    """Uniform actions in [-1, 1]; ``reset`` restarts its stream, so each batch gets the same draws."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self, num_envs: int) -> None:
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, obs) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=(len(obs["observation"]), 2))


POLICIES = {"oracle": OGBenchOracle, "random": lambda env_id: RandomPolicy(0)}


def main(argv: list[str] | None = None) -> OGBenchEvalResult:
    parser = argparse.ArgumentParser(
        prog="python -m envs.ogbench_eval", description="Evaluate a reference policy on an OGBench pointmaze task."
    )
    parser.add_argument("--env", required=True, help=f"one of {', '.join(OGBENCH_TASKS)}")
    parser.add_argument("--policy", choices=sorted(POLICIES), default="oracle")
    parser.add_argument("--episodes-per-goal", type=int, default=DEFAULT_EPISODES_PER_GOAL)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-envs", type=int, default=None, help="episodes stepped together (default: all of a goal)")
    parser.add_argument("--record", default=None, help="append the evaluation as a JSON record to this file")
    parser.add_argument("--logdir", default=None, help="write the eval/ TensorBoard tags to this folder")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.env not in OGBENCH_TASKS:
        parser.error(f"unknown OGBench task {args.env!r}; valid ids: {', '.join(OGBENCH_TASKS)}")
    policy = POLICIES[args.policy](args.env)
    result = evaluate_ogbench(policy, args.env, args.episodes_per_goal, args.seed, args.num_envs,
                              progress=not args.no_progress)  # fmt: skip
    print(result)
    print(json.dumps(result.metrics()))
    if args.logdir:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(args.logdir) as writer:
            log_evaluation(writer, result, 0)
    if args.record:
        from envs.records import append_record, make_record

        settings = dict(policy=args.policy, episodes_per_goal=args.episodes_per_goal, seed=args.seed)
        append_record(args.record, make_record(f"{args.policy} (reference)", result, settings))
    return result


if __name__ == "__main__":
    main()
