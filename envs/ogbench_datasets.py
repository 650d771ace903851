"""OGBench pointmaze datasets regenerated locally by OGBench's published recipe, as .npz files and Minari datasets.

OGBench's loader downloads its datasets from a host this machine cannot reach, so they are regenerated here.

Recipe: OGBench's ``data_gen_scripts/generate_locomaze.py`` for pointmaze (run as in its ``commands.sh``: action
noise 0.5, ``terminate_at_goal=False``), rewritten to run all episodes side by side:

* navigate: 1000 episodes x 1001 steps (giant: 500 x 2001); stitch: 5000 episodes x 201 steps; then a validation
  split of a tenth as many episodes (the ``-val`` file). An episode ends only at its time limit.
* Each episode starts in a random free cell (cell centre plus the env's U(-1, 1) noise per coordinate, velocity
  N(0, 0.1) as after ``env.reset``), for both kinds.
* navigate: the goal is a random *vertex* cell (``vertex_cells``: a free cell that is not a straight hallway cell, so
  junctions, corners and dead ends) plus the same noise, redrawn among the vertex cells (with fresh noise) whenever
  the point reaches it (``info['success']``: within 1.0 after the step). stitch: the goal is a random cell exactly 4
  cells from the start cell by BFS over the maze grid (the start cell itself if there is none), never redrawn.
* The expert heads for OGBench's ``get_oracle_subgoal``: the centre of the neighbour cell of least BFS distance to
  the goal's cell (ties broken in its order up, left, down, right), and, inside the goal's own cell, that cell's
  centre, not the goal position (no neighbour is closer, so the subgoal is the agent's own cell). Action = unit
  vector towards that point + N(0, 0.5) noise per dimension, clipped to [-1, 1]; the env steps with this float64
  action, and the file keeps it as float32, as OGBench's script does.
* Rows are stored as OGBench stores them: per step the observation (the xy position) before the action, the action,
  ``terminals`` (True on each episode's last row), and ``qpos``/``qvel`` before the action; float32 (terminals
  bool), written with ``np.savez_compressed`` to ``<dataset_dir>/<env_id>.npz`` and ``<env_id>-val.npz``, where
  ``ogbench.make_env_and_datasets(env_id, dataset_dir=...)`` finds them (default dir ``~/.ogbench/data``).

Speed: all episodes of a dataset advance side by side; each step the point moves by ``0.2 * action`` (as OGBench's
PointEnv does) and only the points that then touch a wall are simulated with OGBench's own MuJoCo model (5 steps in
one ``mujoco.rollout`` call); a point clear of every wall provably stays put with zero velocity (nothing else acts on
it), so it is not simulated. The result equals ``env.step`` on the same float64 actions (checked in the tests).

The Minari copies (``ogbench/pointmaze-<maze>-<kind>-v0`` and ``...-val-v0``) hold the same episodes, each one step
shorter, as OGBench's own loader makes them (the last row's action has no next observation), with the full-precision
positions as observations, the float32 actions of the .npz files, rewards = ``info['success']`` of each step, the
goal pursued in ``infos['goal']`` and ``infos['success']`` (False first, then each step's); velocities are only in
the .npz files.

Every file is written atomically (a temporary file or folder, then a rename).

For learners, ``load_ogbench_transitions(env_id)`` flattens a dataset into ``envs.datasets.Transitions`` (the arrays
the Diffusion Forcing trainer's ``WindowSampler`` and the baselines read), and ``position_observation`` turns
OGBench's (x, y) observation into the layout a model was trained on.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import minari
import mujoco
import numpy as np
from minari.data_collector.episode_buffer import EpisodeBuffer
from mujoco import rollout as mj_rollout
from tqdm.auto import tqdm

from envs.datasets import Transitions
from envs.minari_io import dataset_path, datasets_root, generation_lock, load_local, write_minari_dataset
from envs.ogbench_tasks import (
    DEFAULT_DATASET_DIR,
    OGBENCH_TASKS,
    OGBenchDatasetMissing,
    generation_command,
    get_ogbench_task,
    install_download_guard,
    minari_dataset_id,
)

ACTION_NOISE = 0.5  # std of the Gaussian noise added to each action dimension
STITCH_DISTANCE = 4  # stitch goals are exactly this many cells away (BFS)
ACTION_SCALE = 0.2  # OGBench's PointEnv: qpos += 0.2 * action
FRAME_SKIP = 5
RESET_VELOCITY_NOISE = 0.1  # PointEnv.reset_model: qvel ~ N(0, 0.1)
CONTACT_MARGIN = 0.05  # simulate every point closer than radius + margin to a wall (contacts start at the radius)
_MOVES = ((-1, 0), (0, -1), (1, 0), (0, 1))  # the neighbour order of OGBench's get_oracle_subgoal
_STATE_SPEC = mujoco.mjtState.mjSTATE_FULLPHYSICS


def vertex_cells(maze_map: np.ndarray) -> np.ndarray:
    """The free cells OGBench's generator draws navigate goals from, as (V, 2) rows of (i, j) in row-major order.

    A free cell is left out only when it is a straight hallway cell: both vertical neighbours free and both
    horizontal ones walls, or both horizontal neighbours free and both vertical ones walls. Every other free cell
    counts: junctions, corners and dead ends (three walls) alike. A neighbour outside the grid counts as a wall
    (OGBench's mazes have a wall border, so this never matters there).
    """
    maze_map = np.asarray(maze_map)
    wall = np.pad(maze_map != 0, 1, constant_values=True)
    up, down, left, right = wall[:-2, 1:-1], wall[2:, 1:-1], wall[1:-1, :-2], wall[1:-1, 2:]
    vertical_hallway = ~up & ~down & left & right
    horizontal_hallway = ~left & ~right & up & down
    return np.argwhere((maze_map == 0) & ~vertical_hallway & ~horizontal_hallway)


def dataset_dir_path(dataset_dir: str | os.PathLike | None = None) -> Path:
    return Path(os.path.expanduser(str(DEFAULT_DATASET_DIR if dataset_dir is None else dataset_dir)))


def npz_paths(env_id: str, dataset_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Where OGBench's loader looks for the training and validation files of a dataset."""
    task = get_ogbench_task(env_id)
    root = dataset_dir_path(dataset_dir)
    return root / f"{task.env_id}.npz", root / f"{task.env_id}-val.npz"


class MazeGrid:
    """The grid of one OGBench maze, read from its env: cells, vertex cells, BFS distances, oracle subgoals,
    cell <-> xy."""

    def __init__(self, env: gym.Env):
        maze = env.unwrapped
        self.maze_map = np.asarray(maze.maze_map)
        self.unit = float(maze._maze_unit)
        self.offset = np.array([maze._offset_x, maze._offset_y], dtype=np.float64)
        self.position_noise = float(maze._noise) * self.unit / 4  # add_noise: U(-noise, noise) * unit / 4
        self.goal_tol = float(maze._goal_tol)
        self.height, self.width = self.maze_map.shape
        self.free_cells = np.argwhere(self.maze_map == 0)  # (F, 2) rows of (i, j)
        self.vertex_cells = vertex_cells(self.maze_map)  # (V, 2): the navigate goal cells
        self.distances = self._all_bfs()  # (H*W goal, H*W cell): BFS steps, -1 if unreachable or a wall
        self.next_cell = self._subgoal_table()  # (H*W goal, H*W cell) -> flat index of the subgoal cell

    def flat(self, ij: np.ndarray) -> np.ndarray:
        ij = np.asarray(ij)
        return ij[..., 0] * self.width + ij[..., 1]

    def cell_to_xy(self, ij: np.ndarray) -> np.ndarray:
        """ij_to_xy: x = j * unit - offset_x, y = i * unit - offset_y."""
        ij = np.asarray(ij, dtype=np.float64)
        return np.stack([ij[..., 1] * self.unit, ij[..., 0] * self.unit], axis=-1) - self.offset

    def xy_to_cell(self, xy: np.ndarray) -> np.ndarray:
        """xy_to_ij, truncating with int() as OGBench does."""
        xy = np.asarray(xy, dtype=np.float64)
        j = np.trunc((xy[..., 0] + self.offset[0] + 0.5 * self.unit) / self.unit).astype(np.int64)
        i = np.trunc((xy[..., 1] + self.offset[1] + 0.5 * self.unit) / self.unit).astype(np.int64)
        return np.stack([np.clip(i, 0, self.height - 1), np.clip(j, 0, self.width - 1)], axis=-1)

    def _bfs(self, goal: tuple[int, int]) -> np.ndarray:
        dist = np.full((self.height, self.width), -1, dtype=np.int64)
        if self.maze_map[goal] != 0:
            return dist
        dist[goal] = 0
        queue = deque([goal])
        while queue:
            i, j = queue.popleft()
            for di, dj in _MOVES:
                ni, nj = i + di, j + dj
                if 0 <= ni < self.height and 0 <= nj < self.width and self.maze_map[ni, nj] == 0 and dist[ni, nj] < 0:
                    dist[ni, nj] = dist[i, j] + 1
                    queue.append((ni, nj))
        return dist

    def _all_bfs(self) -> np.ndarray:
        n = self.height * self.width
        table = np.full((n, n), -1, dtype=np.int64)
        for i, j in self.free_cells:
            table[i * self.width + j] = self._bfs((int(i), int(j))).ravel()
        return table

    def _subgoal_table(self) -> np.ndarray:
        """OGBench's get_oracle_subgoal for every (goal cell, agent cell): the neighbour with the least BFS value,
        strictly less than the current pick, scanned in the order up, left, down, right; else the agent's cell."""
        n = self.height * self.width
        table = np.tile(np.arange(n), (n, 1))
        for g in range(n):
            dist = self.distances[g].reshape(self.height, self.width)
            for i in range(self.height):
                for j in range(self.width):
                    best = (i, j)
                    for di, dj in _MOVES:
                        ni, nj = i + di, j + dj
                        if (
                            0 <= ni < self.height
                            and 0 <= nj < self.width
                            and self.maze_map[ni, nj] == 0
                            and dist[ni, nj] < dist[best]
                        ):
                            best = (ni, nj)
                    table[g, i * self.width + j] = best[0] * self.width + best[1]
        return table

    def cells_at_distance(self, start: np.ndarray, distance: int) -> list[np.ndarray]:
        """For each start cell, the free cells exactly ``distance`` BFS steps away."""
        return [np.argwhere(self.distances[self.flat(s)].reshape(self.height, self.width) == distance) for s in start]

    def add_noise(self, xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return xy + rng.uniform(-self.position_noise, self.position_noise, size=np.shape(xy))

    def oracle_subgoal(self, xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray:
        """OGBench's ``get_oracle_subgoal`` for a batch (B, 2): the centre of the next cell on the BFS shortest path
        to the goal's cell; inside the goal's cell (no neighbour is nearer the goal) the centre of that same cell.
        An unreachable goal gives the centre of the agent's own cell, as in OGBench."""
        sub = self.next_cell[self.flat(self.xy_to_cell(goal_xy)), self.flat(self.xy_to_cell(xy))]
        return self.cell_to_xy(np.stack([sub // self.width, sub % self.width], axis=-1))

    @staticmethod
    def _unit(direction: np.ndarray) -> np.ndarray:
        return direction / (np.linalg.norm(direction, axis=-1, keepdims=True) + 1e-6)

    def oracle_direction(self, xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray:
        """The dataset expert, as OGBench's generator computes it: unit vectors (B, 2) from ``xy`` towards
        ``oracle_subgoal`` (so, inside the goal's cell, towards that cell's centre, not the goal position)."""
        xy = np.asarray(xy, dtype=np.float64)
        return self._unit(self.oracle_subgoal(xy, goal_xy) - xy)

    def expert_direction(self, xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray:
        """The evaluation oracle's direction (``envs.ogbench_eval.OGBenchOracle``): ``oracle_direction``, except that
        inside the goal's cell it heads for the goal position itself, so that the noiseless policy reaches a goal the
        env's noise put more than 1.0 from the cell centre. The dataset generator does not use it."""
        xy, goal_xy = np.asarray(xy, dtype=np.float64), np.asarray(goal_xy, dtype=np.float64)
        in_goal_cell = self.flat(self.xy_to_cell(xy)) == self.flat(self.xy_to_cell(goal_xy))
        target = np.where(in_goal_cell[..., None], goal_xy, self.oracle_subgoal(xy, goal_xy))
        return self._unit(target - xy)


class BatchedPointMazeSim:
    """Steps a batch of OGBench point masses exactly as ``PointEnv.step`` does, with the env's own MuJoCo model:
    qpos += 0.2 * action (computed in the action's dtype, as NumPy does in the env), qvel = 0, then 5 MuJoCo steps.
    Only points touching a wall need the simulator: elsewhere nothing acts on a resting point."""

    def __init__(self, env: gym.Env, grid: MazeGrid, num_threads: int = 1):
        maze = env.unwrapped
        self.model = maze.model
        self.radius = float(self.model.geom("pointbody").size[0])
        self._datas = [mujoco.MjData(self.model) for _ in range(max(1, num_threads))]
        self._template = np.zeros(mujoco.mj_stateSize(self.model, _STATE_SPEC))
        mujoco.mj_getState(self.model, self._datas[0], self._template, _STATE_SPEC)
        self.nq, self.nv = self.model.nq, self.model.nv
        assert self.nq == 2 and self.nv == 2, "expected the 2-D point mass"
        walls = np.argwhere(grid.maze_map == 1)
        self.wall_centers = grid.cell_to_xy(walls)  # (W, 2)
        self.wall_half = grid.unit / 2
        self.simulated_steps = 0
        self.total_steps = 0

    def near_wall(self, xy: np.ndarray) -> np.ndarray:
        gap = np.maximum(np.abs(xy[:, None, :] - self.wall_centers[None]) - self.wall_half, 0.0)
        distance = np.sqrt((gap**2).sum(-1)).min(axis=1)
        return distance < self.radius + CONTACT_MARGIN

    def step(self, qpos: np.ndarray, actions: np.ndarray, simulate_all: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(B, 2) positions and actions in; (B, 2) positions and velocities after the step out."""
        displaced = np.asarray(qpos, dtype=np.float64) + ACTION_SCALE * np.asarray(actions)
        new_qpos = displaced.copy()
        new_qvel = np.zeros_like(displaced)
        touching = np.ones(len(qpos), dtype=bool) if simulate_all else self.near_wall(displaced)
        if touching.any():
            index = np.flatnonzero(touching)
            states = np.tile(self._template, (len(index), 1))
            states[:, 1 : 1 + self.nq] = displaced[index]
            states[:, 1 + self.nq : 1 + self.nq + self.nv] = 0.0
            control = np.zeros((len(index), FRAME_SKIP, self.model.nu))
            out, _ = mj_rollout.rollout(self.model, self._datas, states, control, nstep=FRAME_SKIP)
            new_qpos[index] = out[:, -1, 1 : 1 + self.nq]
            new_qvel[index] = out[:, -1, 1 + self.nq : 1 + self.nq + self.nv]
        self.simulated_steps += int(touching.sum())
        self.total_steps += len(qpos)
        return new_qpos, new_qvel


@dataclass
class OGBenchRollouts:
    """All episodes of one generation run (training episodes first, then validation ones)."""

    qpos: np.ndarray  # (E, T + 1, 2): position before each step, and after the last one
    qvel: np.ndarray  # (E, T + 1, 2): velocity before each step (the reset's random one first)
    actions: np.ndarray  # (E, T, 2) float64, as the env stepped with them (the files keep them as float32)
    goals: np.ndarray  # (E, T + 1, 2): goal pursued at each step (the last: after the last step)
    success: np.ndarray  # (E, T) bool: info['success'] of each step (within goal_tol of goals[:, t] after it)
    init_cells: np.ndarray  # (E, 2)
    goal_cells: np.ndarray  # (E, T + 1, 2)
    num_train: int
    seconds: float
    simulated_fraction: float  # share of steps that needed MuJoCo (the rest were clear of walls)

    @property
    def num_episodes(self) -> int:
        return len(self.actions)

    @property
    def episode_length(self) -> int:
        return self.actions.shape[1]


def simulate(
    env_id: str,
    num_episodes: int | None = None,
    episode_length: int | None = None,
    num_val_episodes: int | None = None,
    seed: int = 0,
    progress: bool = True,
    simulate_all: bool = False,
) -> OGBenchRollouts:
    """Run OGBench's noisy pointmaze expert for a dataset's episodes, all side by side (the recipe: module
    docstring). Starts are drawn among all free cells; navigate goals (first and redrawn) among ``vertex_cells``;
    stitch goals among the cells exactly ``STITCH_DISTANCE`` BFS steps from the start cell."""
    task = get_ogbench_task(env_id)
    num_train = task.dataset_episodes if num_episodes is None else int(num_episodes)
    length = task.dataset_episode_length if episode_length is None else int(episode_length)
    num_val = num_train // 10 if num_val_episodes is None else int(num_val_episodes)
    if num_train < 1 or length < 1 or num_val < 0:
        raise ValueError(f"need at least one episode of one step, got {num_train} x {length} (+{num_val} val)")
    total = num_train + num_val
    rng = np.random.default_rng(seed)
    env = gym.make(task.env_name)
    try:
        grid = MazeGrid(env)
        sim = BatchedPointMazeSim(env, grid)
    finally:
        env.close()

    def random_cells(cells: np.ndarray, n: int) -> np.ndarray:
        return cells[rng.integers(len(cells), size=n)]

    init_cells = random_cells(grid.free_cells, total)
    if task.dataset_kind == "stitch":
        candidates = grid.cells_at_distance(init_cells, STITCH_DISTANCE)
        # OGBench's fallback: a start cell with no cell at that distance keeps its own cell as the goal.
        goal_cell = np.stack(
            [c[rng.integers(len(c))] if len(c) else cell for c, cell in zip(candidates, init_cells, strict=True)]
        )
    else:
        goal_cell = random_cells(grid.vertex_cells, total)

    qpos = np.empty((total, length + 1, 2))
    qvel = np.empty((total, length + 1, 2))
    actions = np.empty((total, length, 2))
    goals = np.empty((total, length + 1, 2))
    goal_cells = np.empty((total, length + 1, 2), dtype=np.int64)
    success = np.zeros((total, length), dtype=bool)
    qpos[:, 0] = grid.add_noise(grid.cell_to_xy(init_cells), rng)
    qvel[:, 0] = rng.standard_normal((total, 2)) * RESET_VELOCITY_NOISE
    goal = grid.add_noise(grid.cell_to_xy(goal_cell), rng)
    start = time.perf_counter()
    with tqdm(total=total * length, desc=f"generate {task.env_id}", unit="step", unit_scale=True,
              disable=not progress) as bar:  # fmt: skip
        for t in range(length):
            goals[:, t], goal_cells[:, t] = goal, goal_cell
            direction = grid.oracle_direction(qpos[:, t], goal)
            noisy = direction + rng.normal(0.0, ACTION_NOISE, size=direction.shape)
            action = np.clip(noisy, -1.0, 1.0)  # float64: OGBench steps with it and stores it as float32
            actions[:, t] = action
            qpos[:, t + 1], qvel[:, t + 1] = sim.step(qpos[:, t], action, simulate_all=simulate_all)
            reached = np.linalg.norm(qpos[:, t + 1] - goal, axis=-1) <= grid.goal_tol
            success[:, t] = reached
            if task.dataset_kind == "navigate" and reached.any():
                goal, goal_cell = goal.copy(), goal_cell.copy()
                goal_cell[reached] = random_cells(grid.vertex_cells, int(reached.sum()))
                goal[reached] = grid.add_noise(grid.cell_to_xy(goal_cell[reached]), rng)
            bar.update(total)
    goals[:, length], goal_cells[:, length] = goal, goal_cell
    return OGBenchRollouts(
        qpos=qpos,
        qvel=qvel,
        actions=actions,
        goals=goals,
        success=success,
        init_cells=init_cells,
        goal_cells=goal_cells,
        num_train=num_train,
        seconds=time.perf_counter() - start,
        simulated_fraction=sim.simulated_steps / max(1, sim.total_steps),
    )


def ogbench_arrays(rollouts: OGBenchRollouts, split: str = "train") -> dict[str, np.ndarray]:
    """The rows of one split in OGBench's file layout: observations, actions, terminals, qpos, qvel."""
    episodes = slice(0, rollouts.num_train) if split == "train" else slice(rollouts.num_train, None)
    qpos = rollouts.qpos[episodes, :-1]
    n, length = qpos.shape[:2]
    terminals = np.zeros((n, length), dtype=bool)
    terminals[:, -1] = True
    return {
        "observations": qpos.reshape(-1, 2).astype(np.float32),
        "actions": rollouts.actions[episodes].reshape(-1, 2).astype(np.float32),
        "terminals": terminals.reshape(-1),
        "qpos": qpos.reshape(-1, 2).astype(np.float32),
        "qvel": rollouts.qvel[episodes, :-1].reshape(-1, 2).astype(np.float32),
    }


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` into a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(partial, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def minari_episodes(rollouts: OGBenchRollouts, split: str = "train") -> list[EpisodeBuffer]:
    """Episodes of one split as Minari buffers: T - 1 steps each (OGBench's loader drops the last row's action)."""
    episodes = range(rollouts.num_train) if split == "train" else range(rollouts.num_train, rollouts.num_episodes)
    n = rollouts.episode_length - 1
    if n < 1:
        raise ValueError("Minari episodes need dataset episodes of at least 2 steps")
    buffers = []
    for k, e in enumerate(episodes):
        truncations = np.zeros(n, dtype=bool)
        truncations[-1] = True
        success = rollouts.success[e, :n]
        buffers.append(
            EpisodeBuffer(
                id=k,
                observations=rollouts.qpos[e, : n + 1].copy(),
                actions=rollouts.actions[e, :n].astype(np.float32),  # as in the .npz file
                rewards=success.astype(np.float64),
                terminations=np.zeros(n, dtype=bool),
                truncations=truncations,
                infos={
                    "goal": rollouts.goals[e, : n + 1].copy(),
                    "success": np.concatenate([[False], success]),
                },
            )
        )
    return buffers


def outputs_exist(env_id: str, dataset_dir=None, write_minari: bool = True) -> bool:
    files = all(p.exists() for p in npz_paths(env_id, dataset_dir))
    if not write_minari:
        return files
    return files and all(dataset_path(minari_dataset_id(env_id, s)).exists() for s in ("train", "val"))


def generate_dataset(
    env_id: str,
    dataset_dir: str | os.PathLike | None = None,
    num_episodes: int | None = None,
    episode_length: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    write_minari: bool = True,
    progress: bool = True,
) -> dict:
    """Generate a dataset and write its train/val .npz files (and Minari copies); returns a summary dict.

    Without ``overwrite``, a dataset whose outputs all exist is left alone (``skipped: True``); a partial one is
    regenerated whole (same seed, same data) and all its outputs rewritten.
    """
    task = get_ogbench_task(env_id)
    train_path, val_path = npz_paths(env_id, dataset_dir)
    with generation_lock(minari_dataset_id(env_id)):
        if not overwrite and outputs_exist(env_id, dataset_dir, write_minari):
            return dict(env_id=task.env_id, skipped=True, train_path=train_path, val_path=val_path)
        start = time.perf_counter()
        rollouts = simulate(env_id, num_episodes, episode_length, seed=seed, progress=progress)
        simulated = time.perf_counter()
        write_npz_atomic(val_path, ogbench_arrays(rollouts, "val"))
        write_npz_atomic(train_path, ogbench_arrays(rollouts, "train"))
        written_npz = time.perf_counter()
        if write_minari:
            for split in ("train", "val"):
                count = rollouts.num_train if split == "train" else rollouts.num_episodes - rollouts.num_train
                description = (
                    f"{task.env_id} ({split}) regenerated by df-agent with OGBench's recipe: {count} episodes x "
                    f"{rollouts.episode_length} steps (stored one step shorter, as OGBench's loader reads them), "
                    f"seed {seed}. Same episodes as {(train_path if split == 'train' else val_path).name}."
                )
                write_minari_dataset(
                    minari_dataset_id(env_id, split),
                    minari_episodes(rollouts, split),
                    task.env_name,
                    algorithm_name="OGBench pointmaze oracle: BFS subgoal direction + N(0, 0.5) noise (df-agent)",
                    description=description,
                    requirements=["ogbench>=1.2"],
                )
        done = time.perf_counter()
    return dict(
        env_id=task.env_id,
        skipped=False,
        train_path=train_path,
        val_path=val_path,
        episodes=rollouts.num_train,
        val_episodes=rollouts.num_episodes - rollouts.num_train,
        episode_length=rollouts.episode_length,
        simulate_s=simulated - start,
        npz_s=written_npz - simulated,
        minari_s=done - written_npz,
        total_s=done - start,
        simulated_fraction=rollouts.simulated_fraction,
        goal_success_rate=float(rollouts.success.mean()),
    )


def load_ogbench(env_id: str, dataset_dir=None, generate: bool = False, **kwargs):
    """``ogbench.make_env_and_datasets`` on the local files: returns (env, train_dataset, val_dataset).

    Missing files raise ``OGBenchDatasetMissing`` naming the generation command (``generate=True`` generates them
    instead). Keyword arguments go to ``ogbench.make_env_and_datasets`` (``compact_dataset``, ``add_info``, ...).
    """
    import ogbench

    task = get_ogbench_task(env_id)
    install_download_guard()
    directory = dataset_dir_path(dataset_dir)
    if not all(p.exists() for p in npz_paths(env_id, directory)):
        if not generate:
            raise OGBenchDatasetMissing(
                f"OGBench dataset {task.env_id} is not in {directory}; df-agent never downloads datasets: generate "
                f"it locally with `{generation_command(task.env_id, str(dataset_dir) if dataset_dir else None)}`"
            )
        generate_dataset(env_id, directory, write_minari=False)
    return ogbench.make_env_and_datasets(task.env_id, dataset_dir=str(directory), **kwargs)


SUCCESS_RADIUS = 1.0  # OGBench's pointmaze goal_tol: success within 1.0 of the goal after a step


def load_ogbench_transitions(
    env_id: str, dataset_dir: str | os.PathLike | None = None, split: str = "train", zero_velocity: bool = False
) -> Transitions:
    """A dataset's transitions as ``envs.datasets.Transitions``, read from its .npz file by OGBench's own loader
    (``ogbench.utils.load_dataset``, regular layout: each episode's last row, whose action has no next observation,
    is dropped, so an episode of T rows gives T - 1 transitions).

    * ``observations`` / ``next_observations``: OGBench's observation, the (x, y) position before / after the action,
      (N, 2); with ``zero_velocity`` (x, y, 0, 0), (N, 4), maze2d's layout. OGBench's ``PointEnv.step`` zeroes the
      velocity before it simulates (the point moves by 0.2 * action, walls permitting), so the next position depends
      on the position and the action alone: (x, y) is the whole state, and the velocity that enters every step is 0.
      The stored ``qvel`` (nonzero only on each episode's first row, the reset's N(0, 0.1), and after a wall
      contact: under 1% of rows) is left out.
    * ``segment_ids`` = ``episode_ids``: every episode starts afresh in a random cell, so windows never cross one.
    * ``goals``: the files do not keep the goal the data's expert pursued, so each episode's goal is its hindsight
      goal, its final position; ``rewards``: 1.0 where the next position is within ``SUCCESS_RADIUS`` of it (OGBench's
      success rule). Neither is used by goal-guided Diffusion Forcing (no reward slot).

    Missing files raise ``OGBenchDatasetMissing`` naming the command that generates them.
    """
    import ogbench.utils

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    task = get_ogbench_task(env_id)
    path = npz_paths(env_id, dataset_dir)[0 if split == "train" else 1]
    if not path.exists():
        raise OGBenchDatasetMissing(
            f"OGBench dataset file {path} is missing; df-agent never downloads datasets: generate it locally with "
            f"`{generation_command(task.env_id, str(dataset_dir) if dataset_dir else None)}`"
        )
    data = ogbench.utils.load_dataset(str(path), compact_dataset=False)
    observations = np.asarray(data["observations"], dtype=np.float32)
    next_observations = np.asarray(data["next_observations"], dtype=np.float32)
    actions = np.asarray(data["actions"], dtype=np.float32)
    ends = np.flatnonzero(np.asarray(data["terminals"]) > 0)  # each episode's last transition
    if len(actions) == 0 or len(ends) == 0 or ends[-1] != len(actions) - 1:
        raise ValueError(f"{path} does not end with a complete episode (terminals)")
    lengths = np.diff(np.concatenate([[-1], ends])).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    episode_ids = np.repeat(np.arange(len(lengths)), lengths)
    goals = next_observations[ends][episode_ids]
    rewards = (np.linalg.norm(next_observations - goals, axis=-1) <= SUCCESS_RADIUS).astype(np.float32)
    return Transitions(
        observations=position_observation(observations, 4 if zero_velocity else 2),
        actions=actions,
        next_observations=position_observation(next_observations, 4 if zero_velocity else 2),
        goals=goals,
        rewards=rewards,
        episode_ids=episode_ids,
        segment_ids=episode_ids.copy(),
        episode_starts=starts,
        episode_lengths=lengths,
    )


def position_observation(xy, obs_dim: int = 2) -> np.ndarray:
    """OGBench's (x, y) observations (..., 2) in a model's layout: ``obs_dim`` 2 as they are, 4 as (x, y, 0, 0)
    (the velocity entering every OGBench step is 0, see ``load_ogbench_transitions``). float32."""
    xy = np.asarray(xy, dtype=np.float32)
    if xy.shape[-1] != 2:
        raise ValueError(f"OGBench pointmaze observations are (x, y), got shape {xy.shape}")
    if obs_dim == 2:
        return xy
    if obs_dim == 4:
        return np.concatenate([xy, np.zeros_like(xy)], axis=-1)
    raise ValueError(f"obs_dim must be 2 (x, y) or 4 (x, y, 0, 0), got {obs_dim}")


def load_ogbench_minari(env_id: str, split: str = "train") -> minari.MinariDataset:
    """The Minari copy of a dataset (never downloaded); missing raises ``DatasetError`` naming the command."""
    dataset_id = minari_dataset_id(env_id, split)
    if not dataset_path(dataset_id).exists():
        raise OGBenchDatasetMissing(
            f"dataset {dataset_id} is not in {datasets_root()}; df-agent never downloads datasets: generate it "
            f"locally with `{generation_command(get_ogbench_task(env_id).env_id)}`"
        )
    return load_local(dataset_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m envs.ogbench_datasets",
        description="Regenerate OGBench pointmaze datasets locally by OGBench's recipe (.npz for OGBench's loader "
        "and Minari copies).",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--env", action="append", choices=list(OGBENCH_TASKS), help="dataset to generate (repeatable)")
    which.add_argument("--all", action="store_true", help="generate all six pointmaze datasets")
    parser.add_argument("--dataset-dir", default=DEFAULT_DATASET_DIR, help="where to write the .npz files "
                        "(OGBench's default: %(default)s)")  # fmt: skip
    parser.add_argument("--num-episodes", type=int, default=None, help="training episodes (default: OGBench's)")
    parser.add_argument("--episode-length", type=int, default=None, help="steps per episode (default: OGBench's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if all outputs exist")
    parser.add_argument("--no-minari", action="store_true", help="write only the .npz files")
    args = parser.parse_args(argv)
    env_ids = list(OGBENCH_TASKS) if args.all else args.env
    start = time.perf_counter()
    for env_id in env_ids:
        summary = generate_dataset(
            env_id,
            args.dataset_dir,
            args.num_episodes,
            args.episode_length,
            seed=args.seed,
            overwrite=args.overwrite,
            write_minari=not args.no_minari,
        )
        if summary["skipped"]:
            print(f"{env_id}: all outputs exist, skipped (--overwrite to regenerate)")
            continue
        print(
            f"{env_id}: {summary['episodes']} + {summary['val_episodes']} val episodes x {summary['episode_length']} "
            f"steps; simulate {summary['simulate_s']:.1f} s ({summary['simulated_fraction']:.1%} of steps touched a "
            f"wall), npz {summary['npz_s']:.1f} s, minari {summary['minari_s']:.1f} s, total {summary['total_s']:.1f} "
            f"s -> {summary['train_path']}, {summary['val_path'].name}"
            + (f", minari {minari_dataset_id(env_id)} (+ -val)" if not args.no_minari else ""),
            flush=True,
        )
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
