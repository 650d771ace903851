"""D4RL's waypoint controller (the maze2d expert), vectorized over a batch of independent points.

Plan on the grid (``Maze.next_cell_table``: Q-iteration), follow waypoints at cell centres jittered by up to 0.2,
the last one being the continuous goal, switch to the next waypoint within 0.1 of the current one, and act with
the PD law ``10 * (waypoint - position) - 1 * velocity`` clipped to [-1, 1]. D4RL's controller holds state for one
point; here every array has a leading batch axis so that the dataset generator and the evaluation can drive many
points at once.
"""

from __future__ import annotations

import numpy as np

from envs.mazes import Maze
from envs.tasks import split_observation

P_GAIN = 10.0
D_GAIN = -1.0
SOLVE_THRESHOLD = 0.1  # distance at which a waypoint (or the goal) counts as reached
WAYPOINT_JITTER = 0.2


def pd_action(target: np.ndarray, positions: np.ndarray, velocities: np.ndarray) -> np.ndarray:
    """D4RL's PD law toward ``target`` (B, 2): ``10 * (target - position) - velocity``, clipped to [-1, 1]."""
    return np.clip(P_GAIN * (target - positions) + D_GAIN * velocities, -1.0, 1.0)


class WaypointController:
    """Batched waypoint controller. Call ``set_targets`` for the points whose goal changes, then ``act``."""

    def __init__(
        self, maze: Maze | str, batch_size: int, rng: np.random.Generator | None = None, jitter=WAYPOINT_JITTER
    ):
        self.maze = Maze.from_name(maze) if isinstance(maze, str) else maze
        self.rng = rng if rng is not None else np.random.default_rng()
        self.jitter = jitter
        self.batch_size = batch_size
        self.target = np.full((batch_size, 2), np.nan)
        self.target_index = np.zeros(batch_size, dtype=np.int64)
        self.waypoint = np.zeros((batch_size, 2))
        self.waypoint_index = np.zeros(batch_size, dtype=np.int64)

    def set_targets(self, mask: np.ndarray, targets: np.ndarray, positions: np.ndarray) -> None:
        """Give the points in ``mask`` new targets (x, y) and plan from their current positions."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        self.target[mask] = targets[mask] if len(targets) == self.batch_size else targets
        self.target_index[mask] = self._free_index(self.target[mask], "target")
        self._advance(mask, self._free_index(positions[mask], "position"))

    def _free_index(self, xy: np.ndarray, what: str) -> np.ndarray:
        index = self.maze.cell_index(self.maze.xy_to_cell(xy))
        if (index < 0).any():
            raise ValueError(f"a {what} lies inside a wall of maze {self.maze.name!r}: {xy[index < 0].tolist()}")
        return index

    def _advance(self, mask: np.ndarray, from_index: np.ndarray) -> None:
        """Move the waypoint of the points in ``mask`` to the next cell after ``from_index`` on the path."""
        target_index = self.target_index[mask]
        next_index = self.maze.next_cell_table[target_index, from_index]
        waypoint = self.maze.cell_to_xy(self.maze.free_cells[next_index])
        waypoint += self.rng.uniform(-self.jitter, self.jitter, size=waypoint.shape)
        at_target_cell = next_index == target_index
        waypoint[at_target_cell] = self.target[mask][at_target_cell]  # the last waypoint is the goal itself
        self.waypoint[mask] = waypoint
        self.waypoint_index[mask] = next_index

    def act(self, positions: np.ndarray, velocities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Actions (B, 2) for the current states, and whether each point has reached its target (within 0.1)."""
        if np.isnan(self.target).any():
            raise RuntimeError("set_targets must give every point a target before act")
        solved = np.linalg.norm(positions - self.target, axis=-1) < SOLVE_THRESHOLD
        aim = np.where(solved[:, None], self.target, self.waypoint)
        action = pd_action(aim, positions, velocities)
        switch = ~solved & (np.linalg.norm(positions - self.waypoint, axis=-1) < SOLVE_THRESHOLD)
        if switch.any():
            self._advance(switch, self.waypoint_index[switch])
        return action, solved


class WaypointExpert:
    """The expert as a policy for the shared evaluation: a batch of dict observations in, a batch of actions out.

    It follows each observation's ``desired_goal`` and replans whenever that goal changes.
    """

    def __init__(self, maze: Maze | str, seed: int | None = 0):
        self.maze = Maze.from_name(maze) if isinstance(maze, str) else maze
        self.rng = np.random.default_rng(seed)
        self.controller: WaypointController | None = None

    def reset(self, num_envs: int | None = None) -> None:
        """Forget every plan (called by the evaluation at the start of each batch of episodes)."""
        self.controller = None if num_envs is None else WaypointController(self.maze, num_envs, self.rng)

    def __call__(self, obs: dict) -> np.ndarray:
        state, goal, _ = split_observation(obs, dtype=np.float64)
        if self.controller is None or self.controller.batch_size != len(state):
            self.controller = WaypointController(self.maze, len(state), self.rng)
        changed = ~np.all(np.isclose(self.controller.target, goal), axis=-1)  # NaN targets count as changed
        self.controller.set_targets(changed, goal, state[:, :2])
        action, _ = self.controller.act(state[:, :2], state[:, 2:4])
        return action.astype(np.float32)
