"""The three D4RL maze2d layouts, their grid geometry and shortest-path tables.

Coordinates follow Gymnasium-Robotics' PointMaze frame (maze size scaling 1): cell (i, j) of a map with H rows
and W columns is centred at x = (j + 0.5) - W/2, y = H/2 - (i + 0.5). This is the frame of the public Minari
``D4RL/pointmaze`` datasets, so they fit our tasks unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

# D4RL's layouts ('#' wall, 'O' free, 'G' the goal cell of the single-goal task), rows top to bottom.
MAZE_LAYOUTS: dict[str, tuple[str, ...]] = {
    "umaze": ("#####", "#GOO#", "###O#", "#OOO#", "#####"),
    "medium": (
        "########",
        "#OO##OO#",
        "#OO#OOO#",
        "##OOO###",
        "#OO#OOO#",
        "#O#OO#O#",
        "#OOO#OG#",
        "########",
    ),
    "large": (
        "############",
        "#OOOO#OOOOO#",
        "#O##O#O#O#O#",
        "#OOOOOO#OOO#",
        "#O####O###O#",
        "#OO#O#OOOOO#",
        "##O#O#O#O###",
        "#OO#OOO#OGO#",
        "############",
    ),
}

# Moves on the grid for the waypoint planner: north, south, west, east (row, col deltas).
_MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])


@dataclass(frozen=True)
class Maze:
    """One maze layout: walls, free cells, the D4RL goal cell and conversions between cells and positions."""

    name: str
    layout: tuple[str, ...]

    @classmethod
    def from_name(cls, name: str) -> Maze:
        if name not in MAZE_LAYOUTS:
            raise ValueError(f"unknown maze {name!r}; valid mazes: {sorted(MAZE_LAYOUTS)}")
        return cls(name, MAZE_LAYOUTS[name])

    @property
    def height(self) -> int:
        return len(self.layout)

    @property
    def width(self) -> int:
        return len(self.layout[0])

    @cached_property
    def walls(self) -> np.ndarray:
        """Boolean (H, W) array, True on wall cells."""
        return np.array([[c == "#" for c in row] for row in self.layout])

    @property
    def goal_cell(self) -> tuple[int, int]:
        """D4RL's fixed goal cell (row, col) of the single-goal task."""
        for i, row in enumerate(self.layout):
            if "G" in row:
                return i, row.index("G")
        raise AssertionError(f"maze {self.name} has no goal cell")

    @cached_property
    def free_cells(self) -> np.ndarray:
        """(C, 2) array of the free cells (goal cell included), in row-major order."""
        return np.argwhere(~self.walls)

    @cached_property
    def reset_cells(self) -> np.ndarray:
        """D4RL's reset locations: every free cell except the single-goal task's goal cell."""
        keep = [tuple(c) != self.goal_cell for c in self.free_cells]
        return self.free_cells[keep]

    def gymnasium_robotics_map(self) -> list[list[int]]:
        """The layout as the 0/1 list of lists that Gymnasium-Robotics' PointMaze takes."""
        return [[int(c == "#") for c in row] for row in self.layout]

    def cell_to_xy(self, cells: np.ndarray) -> np.ndarray:
        """Centres of cells (..., 2) of (row, col) as (..., 2) positions (x, y)."""
        cells = np.asarray(cells, dtype=np.float64)
        x = cells[..., 1] + 0.5 - self.width / 2
        y = self.height / 2 - (cells[..., 0] + 0.5)
        return np.stack([x, y], axis=-1)

    def xy_to_cell(self, xy: np.ndarray) -> np.ndarray:
        """Cells (..., 2) of (row, col) that contain positions (..., 2); clipped to the grid."""
        xy = np.asarray(xy, dtype=np.float64)
        row = np.floor(self.height / 2 - xy[..., 1]).astype(np.int64)
        col = np.floor(xy[..., 0] + self.width / 2).astype(np.int64)
        return np.stack([np.clip(row, 0, self.height - 1), np.clip(col, 0, self.width - 1)], axis=-1)

    @cached_property
    def _cell_index(self) -> np.ndarray:
        """(H, W) map from a cell to its index in ``free_cells`` (-1 on walls)."""
        index = -np.ones((self.height, self.width), dtype=np.int64)
        index[tuple(self.free_cells.T)] = np.arange(len(self.free_cells))
        return index

    def cell_index(self, cells: np.ndarray) -> np.ndarray:
        """Indices into ``free_cells`` of cells (..., 2); -1 for a wall."""
        cells = np.asarray(cells)
        return self._cell_index[cells[..., 0], cells[..., 1]]

    @cached_property
    def next_cell_table(self) -> np.ndarray:
        """(C, C) table: ``next_cell_table[target, cell]`` is the index of the cell to move to next.

        D4RL's waypoint planner: Q-iteration on the grid with discount 0.99 and reward 1 on entering the target,
        moves N/S/E/W, a move into a wall leaves the cell unchanged; the greedy action gives the next cell.
        D4RL runs 50 iterations; we run at least as many as there are free cells so that every cell's value has
        converged even in a maze whose longest path is longer than 50 cells (none of D4RL's are).
        """
        n = len(self.free_cells)
        neighbours = np.empty((n, len(_MOVES)), dtype=np.int64)
        for c, cell in enumerate(self.free_cells):
            for m, move in enumerate(_MOVES):
                i, j = cell + move
                neighbours[c, m] = self._cell_index[i, j] if not self.walls[i, j] else c
        reward = np.eye(n)[:, neighbours]  # (target, cell, move): 1 when the move enters the target
        value = np.zeros((n, n))
        for _ in range(max(50, n)):
            q = reward + 0.99 * value[:, neighbours]
            value = q.max(axis=-1)
        best_move = q.argmax(axis=-1)  # (target, cell)
        table = neighbours[np.arange(n)[None, :], best_move]
        table[np.arange(n), np.arange(n)] = np.arange(n)  # at the target, stay
        return table

    def shortest_path_length(self, start_cell: tuple[int, int], target_cell: tuple[int, int]) -> int:
        """Number of moves from one cell to another along the planner's greedy path."""
        table = self.next_cell_table
        current, target = self.cell_index(np.array(start_cell)), self.cell_index(np.array(target_cell))
        if current < 0 or target < 0:
            raise ValueError(f"cells {start_cell} and {target_cell} must both be free")
        steps = 0
        while current != target:
            current = table[target, current]
            steps += 1
            if steps > len(table):
                raise AssertionError("planner loops; the maze is not connected")
        return int(steps)
