"""The maze2d offline data by D4RL's recipe: simulate the noisy expert and cut its runs into Minari episodes.

Recipe (D4RL's ``generate_maze2d_datasets.py``, as re-run for Minari's ``D4RL/pointmaze/*-v2``): the point mass
runs without ever being reset; a goal is drawn (a random free cell plus U(-0.1, 0.1)); the waypoint controller
steers to it with N(0, 0.5) noise added to every action (clipped to [-1, 1]); when the point comes within 0.45 of
the goal (the Gymnasium-Robotics success radius at which Minari split its episodes), or after the task's maximum
episode length, the episode ends (``truncations[-1] = True``) and a new goal is drawn. Rewards are relative to each
episode's own goal (sparse, 1 within 0.5, as in our tasks).

To be fast, ``num_chains`` such runs advance side by side in one batched MuJoCo call per step; each chain is one
continuous run of ``num_steps / num_chains`` steps (``num_chains=1`` gives D4RL's single run exactly).

Nothing here touches the disk: ``envs.datasets.generate_dataset`` writes the episodes as a Minari dataset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from minari.data_collector.episode_buffer import EpisodeBuffer
from tqdm.auto import tqdm

from envs.expert import WaypointController
from envs.mazes import Maze
from envs.simulator import BatchedPointMaze
from envs.tasks import GOAL_RADIUS, POSITION_NOISE, VELOCITY_NOISE, get_task

DEFAULT_NUM_STEPS = {"umaze": 1_000_000, "medium": 2_000_000, "large": 4_000_000}
ACTION_NOISE = 0.5
SPLIT_RADIUS = 0.45


@dataclass
class Rollouts:
    """Raw output of the generator: per chain, T + 1 states and T actions, goals and episode ends."""

    qpos: np.ndarray  # (B, T + 1, 2)
    qvel: np.ndarray  # (B, T + 1, 2)
    actions: np.ndarray  # (B, T, 2)
    goals: np.ndarray  # (B, T, 2): the goal pursued at each step
    episode_end: np.ndarray  # (B, T) bool: the episode ends after this step
    steps_per_chain: np.ndarray  # (B,) how many of the T steps belong to each chain
    seconds: float


def simulate(maze: str, num_steps: int, seed: int = 0, num_chains: int = 256, progress: bool = True) -> Rollouts:
    """Run the noisy expert by D4RL's recipe for ``num_steps`` steps in total, split over ``num_chains`` runs."""
    layout = Maze.from_name(maze)
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    num_chains = max(1, min(num_chains, num_steps))
    rng = np.random.default_rng(seed)
    max_episode_steps = get_task(f"maze2d-{maze}").max_episode_steps
    steps_per_chain = np.full(num_chains, num_steps // num_chains)
    steps_per_chain[: num_steps % num_chains] += 1
    horizon = int(steps_per_chain.max())

    def random_goals(n: int) -> np.ndarray:
        cells = layout.free_cells[rng.integers(len(layout.free_cells), size=n)]
        return layout.cell_to_xy(cells) + rng.uniform(-POSITION_NOISE, POSITION_NOISE, size=(n, 2))

    sim = BatchedPointMaze(layout)
    controller = WaypointController(layout, num_chains, rng)
    qpos = np.empty((num_chains, horizon + 1, 2))
    qvel = np.empty((num_chains, horizon + 1, 2))
    actions = np.empty((num_chains, horizon, 2))
    goals = np.empty((num_chains, horizon, 2))
    episode_end = np.zeros((num_chains, horizon), dtype=bool)
    start_cells = layout.reset_cells[rng.integers(len(layout.reset_cells), size=num_chains)]
    qpos[:, 0] = layout.cell_to_xy(start_cells) + rng.uniform(-POSITION_NOISE, POSITION_NOISE, size=(num_chains, 2))
    qvel[:, 0] = rng.normal(0.0, VELOCITY_NOISE, size=(num_chains, 2))
    goal = random_goals(num_chains)
    controller.set_targets(np.ones(num_chains, dtype=bool), goal, qpos[:, 0])
    episode_length = np.zeros(num_chains, dtype=np.int64)
    start = time.perf_counter()
    with tqdm(total=num_steps, desc=f"generate {maze}", unit="step", unit_scale=True, disable=not progress) as bar:
        for t in range(horizon):
            action, _ = controller.act(qpos[:, t], qvel[:, t])
            action = np.clip(action + rng.normal(0.0, ACTION_NOISE, size=action.shape), -1.0, 1.0)
            action = action.astype(np.float32).astype(np.float64)  # simulate exactly the float32 action we store
            qpos[:, t + 1], qvel[:, t + 1] = sim.step(qpos[:, t], qvel[:, t], action)
            actions[:, t], goals[:, t] = action, goal
            episode_length += 1
            reached = np.linalg.norm(qpos[:, t + 1] - goal, axis=-1) <= SPLIT_RADIUS
            done = reached | (episode_length >= max_episode_steps)
            episode_end[:, t] = done
            if done.any():
                goal = goal.copy()
                goal[done] = random_goals(int(done.sum()))
                controller.set_targets(done, goal, qpos[:, t + 1])
                episode_length[done] = 0
            bar.update(int((steps_per_chain > t).sum()))
    return Rollouts(qpos, qvel, actions, goals, episode_end, steps_per_chain, time.perf_counter() - start)


def split_episodes(rollouts: Rollouts) -> list[EpisodeBuffer]:
    """Cut each chain at its episode ends into Minari episode buffers (the last, unfinished one included)."""
    episodes = []
    for c, length in enumerate(rollouts.steps_per_chain):
        ends = np.flatnonzero(rollouts.episode_end[c, :length])
        if len(ends) == 0 or ends[-1] != length - 1:
            ends = np.append(ends, length - 1)
        begin = 0
        for end in ends:
            states = np.concatenate([rollouts.qpos[c, begin : end + 2], rollouts.qvel[c, begin : end + 2]], axis=-1)
            goal = rollouts.goals[c, begin]
            n = end + 1 - begin
            success = np.linalg.norm(states[:, :2] - goal, axis=-1) <= GOAL_RADIUS
            truncations = np.zeros(n, dtype=bool)
            truncations[-1] = True
            episodes.append(
                EpisodeBuffer(
                    id=len(episodes),
                    observations={
                        "achieved_goal": states[:, :2].copy(),
                        "desired_goal": np.tile(goal, (n + 1, 1)),
                        "observation": states,
                    },
                    actions=rollouts.actions[c, begin : end + 1].astype(np.float32),
                    rewards=success[1:].astype(np.float64),
                    terminations=np.zeros(n, dtype=bool),
                    truncations=truncations,
                    infos={"success": success},
                )
            )
            begin = end + 1
    return episodes
