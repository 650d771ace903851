"""The maze2d tasks of D4RL on Gymnasium-Robotics' PointMaze, with D4RL's semantics.

What is kept from D4RL (so that a normalized score means what it means in the papers): the mazes, the fixed
goal cell of the single-goal tasks, episode lengths 300 / 600 / 800, the sparse reward (1 within 0.5 of the goal),
no termination at the goal, the reset distribution (a free cell other than the goal cell, plus U(-0.1, 0.1) per
axis, velocity N(0, 0.1)), and for the multi-goal tasks a goal drawn at each reset (a free cell plus U(-0.1, 0.1)).
What is Gymnasium-Robotics': the MuJoCo model and physics (official ``mujoco`` bindings), the coordinate frame and
the dict observation (``observation`` = x, y, vx, vy; ``achieved_goal``; ``desired_goal``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv

from envs.mazes import Maze

# D4RL's reward radius (Gymnasium-Robotics uses 0.45).
GOAL_RADIUS = 0.5
# D4RL's reset noise: U(-0.1, 0.1) on the position, N(0, 0.1) on the velocity.
POSITION_NOISE = 0.1
VELOCITY_NOISE = 0.1


@dataclass(frozen=True)
class TaskSpec:
    """Everything that defines one maze2d task."""

    env_id: str
    maze: str
    multi_goal: bool
    max_episode_steps: int
    ref_min_score: float  # D4RL's random-policy return (d4rl/infos.py)
    ref_max_score: float  # D4RL's waypoint-controller return (d4rl/infos.py)


_MAZE_FACTS = {  # maze: (max episode steps, D4RL ref min, D4RL ref max)
    "umaze": (300, 23.85, 161.86),
    "medium": (600, 13.13, 277.39),
    "large": (800, 6.7, 273.99),
}

TASKS: dict[str, TaskSpec] = {}
for _maze, (_steps, _lo, _hi) in _MAZE_FACTS.items():
    for _multi in (False, True):
        _id = f"maze2d-{_maze}{'-multi' if _multi else ''}-v1"
        TASKS[_id] = TaskSpec(_id, _maze, _multi, _steps, _lo, _hi)


def resolve_env_id(env_id: str) -> str:
    """The full task id for what a user typed: ``maze2d-large``, ``maze2d-large-v1`` or ``large-multi``."""
    name = env_id.strip().lower()
    candidates = [name, f"{name}-v1", f"maze2d-{name}", f"maze2d-{name}-v1"]
    for candidate in candidates:
        if candidate in TASKS:
            return candidate
    raise ValueError(f"unknown maze2d task {env_id!r}; valid ids: {', '.join(TASKS)} (the '-v1' may be left out)")


def get_task(env_id: str) -> TaskSpec:
    return TASKS[resolve_env_id(env_id)]


def twin_env_id(env_id: str) -> str:
    """The other task of the same maze: ``maze2d-large-multi-v1`` for ``maze2d-large`` and back (short ids work)."""
    task = get_task(env_id)
    return f"maze2d-{task.maze}{'' if task.multi_goal else '-multi'}-v1"


def split_observation(obs, dtype=np.float32) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(states (B, 4), goals (B, 2), single)`` from one or a batch of Gymnasium-Robotics dict observations
    (``single``: the input was one unbatched observation). Every policy reads its input through this, so a wrong
    shape, a missing key or a NaN gets the same clear error everywhere."""
    if not isinstance(obs, dict) or "observation" not in obs or "desired_goal" not in obs:
        found = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
        raise ValueError(
            f"expected a Gymnasium-Robotics dict observation with 'observation' and 'desired_goal', got {found}"
        )
    states = np.asarray(obs["observation"], dtype=dtype)
    goals = np.asarray(obs["desired_goal"], dtype=dtype)
    single = states.ndim == 1
    states, goals = np.atleast_2d(states), np.atleast_2d(goals)
    if states.ndim != 2 or states.shape[1] != 4 or goals.shape != (len(states), 2):
        raise ValueError(
            f"observation must be (4,) or (batch, 4) with desired_goal (2,) or (batch, 2); got {states.shape} and "
            f"{goals.shape}"
        )
    if not (np.all(np.isfinite(states)) and np.all(np.isfinite(goals))):
        raise ValueError("observation or desired_goal contains NaN or infinity")
    return states, goals, single


def get_normalized_score(env_id: str, returns) -> np.ndarray:
    """D4RL normalized score, 100 * (return - ref_min) / (ref_max - ref_min), for one return or an array."""
    task = get_task(env_id)
    return (
        100.0 * (np.asarray(returns, dtype=np.float64) - task.ref_min_score) / (task.ref_max_score - task.ref_min_score)
    )


class Maze2DEnv(PointMazeEnv):
    """A D4RL maze2d task on Gymnasium-Robotics' PointMaze.

    ``reset(options=...)`` accepts ``goal_cell`` / ``reset_cell`` (row, col), as PointMaze does, and also ``goal``
    / ``reset_pos`` as exact (x, y) positions (no noise added) for planners and tests.
    """

    def __init__(self, maze: str = "umaze", multi_goal: bool = False, reward_type: str = "sparse", **kwargs):
        if reward_type not in ("sparse", "dense"):
            raise ValueError(f"reward_type must be 'sparse' or 'dense', got {reward_type!r}")
        self.maze_layout = Maze.from_name(maze)
        self.multi_goal = multi_goal
        # continuing_task=True with reset_target=False: PointMaze neither terminates nor moves the goal.
        super().__init__(
            maze_map=self.maze_layout.gymnasium_robotics_map(),
            reward_type=reward_type,
            continuing_task=True,
            reset_target=False,
            **kwargs,
        )
        # PointMaze writes its generated MJCF to a temporary file and never deletes it; the model is loaded now.
        Path(self.tmp_xml_file_path).unlink(missing_ok=True)
        self.fixed_goal = self.maze_layout.cell_to_xy(self.maze_layout.goal_cell)

    def _noisy_cell_position(self, cell) -> np.ndarray:
        return self.maze_layout.cell_to_xy(cell) + self.np_random.uniform(-POSITION_NOISE, POSITION_NOISE, size=2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        gym.Env.reset(self, seed=seed)  # seeds self.np_random; PointMaze's own reset draws are replaced below
        options = options or {}
        layout = self.maze_layout
        if options.get("goal") is not None:
            goal = np.asarray(options["goal"], dtype=np.float64).copy()
        elif options.get("goal_cell") is not None:
            goal = self._noisy_cell_position(self._checked_cell(options["goal_cell"], "goal_cell"))
        elif self.multi_goal:
            goal = self._noisy_cell_position(layout.free_cells[self.np_random.integers(len(layout.free_cells))])
        else:
            goal = self.fixed_goal.copy()
        if options.get("reset_pos") is not None:
            position = np.asarray(options["reset_pos"], dtype=np.float64).copy()
        elif options.get("reset_cell") is not None:
            position = self._noisy_cell_position(self._checked_cell(options["reset_cell"], "reset_cell"))
        else:
            position = self._noisy_cell_position(layout.reset_cells[self.np_random.integers(len(layout.reset_cells))])
        velocity = self.np_random.normal(0.0, VELOCITY_NOISE, size=2)

        self.goal = goal
        self.update_target_site_pos()
        self.point_env.reset(seed=seed)
        self.point_env.set_state(position, velocity)
        obs = self._get_obs(np.concatenate([position, velocity]))
        return obs, {"success": self._distance(obs) <= GOAL_RADIUS}

    def _checked_cell(self, cell, name: str) -> np.ndarray:
        cell = np.asarray(cell, dtype=np.int64)
        h, w = self.maze_layout.walls.shape
        if cell.shape != (2,) or not (0 <= cell[0] < h and 0 <= cell[1] < w) or self.maze_layout.walls[tuple(cell)]:
            raise ValueError(f"{name} {cell.tolist()} is not a free cell of maze {self.maze_layout.name!r}")
        return cell

    def _distance(self, obs: dict) -> float:
        return float(np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"]))

    def step(self, action):
        action = np.asarray(action)
        if action.shape != (2,):
            raise ValueError(f"action must have shape (2,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action}")
        point_obs, _, _, _, info = self.point_env.step(action)
        obs = self._get_obs(point_obs)
        distance = self._distance(obs)
        if self.reward_type == "sparse":
            reward = float(distance <= GOAL_RADIUS)
        else:
            reward = float(np.exp(-distance))
        info["success"] = distance <= GOAL_RADIUS
        return obs, reward, False, False, info


def register_tasks() -> None:
    """Register every maze2d id with Gymnasium (idempotent)."""
    for spec in TASKS.values():
        if spec.env_id in gym.registry:
            continue
        gym.register(
            id=spec.env_id,
            entry_point="envs.tasks:Maze2DEnv",
            max_episode_steps=spec.max_episode_steps,
            kwargs={"maze": spec.maze, "multi_goal": spec.multi_goal},
        )


def make(env_id: str, **kwargs) -> gym.Env:
    """``gym.make`` for a maze2d task, accepting the short ids (``maze2d-large``)."""
    register_tasks()
    return gym.make(resolve_env_id(env_id), **kwargs)
