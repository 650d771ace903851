"""Batched simulation of the PointMaze point mass with ``mujoco.rollout`` (many points per call, in C).

PointMaze clips the velocity to [-5, 5] in Python before each simulator step; ``step`` does the same, so a batch
stepped here follows exactly the states the Gymnasium env would visit for the same actions.
"""

from __future__ import annotations

import mujoco
import numpy as np
from mujoco import rollout

from envs.mazes import Maze

MAX_SPEED = 5.0
_STATE_SPEC = mujoco.mjtState.mjSTATE_FULLPHYSICS


class BatchedPointMaze:
    """Steps a batch of point-mass states (qpos, qvel) of one maze with given actions."""

    def __init__(self, maze: Maze | str, num_threads: int = 1):
        from envs.tasks import Maze2DEnv  # builds the same MJCF as the Gymnasium env

        self.maze = Maze.from_name(maze) if isinstance(maze, str) else maze
        env = Maze2DEnv(self.maze.name)
        self.model = env.point_env.model
        self._datas = [mujoco.MjData(self.model) for _ in range(num_threads)]
        self._template = np.zeros(mujoco.mj_stateSize(self.model, _STATE_SPEC))
        mujoco.mj_getState(self.model, self._datas[0], self._template, _STATE_SPEC)
        self.nq, self.nv = self.model.nq, self.model.nv
        env.close()

    def full_states(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """MuJoCo full-physics state vectors (B, nstate) for positions and velocities, velocity clipped."""
        states = np.tile(self._template, (len(qpos), 1))
        states[:, 1 : 1 + self.nq] = qpos
        states[:, 1 + self.nq : 1 + self.nq + self.nv] = np.clip(qvel, -MAX_SPEED, MAX_SPEED)
        return states

    def rollout(self, qpos: np.ndarray, qvel: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Roll out (B, T, 2) actions from (B, 2) states; returns qpos and qvel (B, T, 2) after each step."""
        qpos, qvel = np.asarray(qpos, dtype=np.float64), np.asarray(qvel, dtype=np.float64)
        actions = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
        out_qpos = np.empty(actions.shape)
        out_qvel = np.empty(actions.shape)
        for t in range(actions.shape[1]):
            # One step per call: the velocity clip between steps happens in Python, as in PointMaze.
            state, _ = rollout.rollout(self.model, self._datas, self.full_states(qpos, qvel), actions[:, t : t + 1])
            qpos = state[:, 0, 1 : 1 + self.nq]
            qvel = state[:, 0, 1 + self.nq : 1 + self.nq + self.nv]
            out_qpos[:, t], out_qvel[:, t] = qpos, qvel
        return out_qpos, out_qvel

    def step(self, qpos: np.ndarray, qvel: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step of a batch: (B, 2) states and actions in, (B, 2) qpos and qvel out."""
        out_qpos, out_qvel = self.rollout(qpos, qvel, np.asarray(actions)[:, None])
        return out_qpos[:, 0], out_qvel[:, 0]
