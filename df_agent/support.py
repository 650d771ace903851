"""Where the offline data has been: a distance field over the plane that is 0 on the cells the data visits and grows
with the distance from them, for guidance that keeps planned positions where the data shows the point can be.

The model learns the dynamics from the data, and where the data is thin (a corridor that few trajectories take) its
predicted positions blur across the walls beside it: a plan toward a goal behind a corner then cuts the corner, its
actions push the point into the wall, and every replan from there asks for the same thing, so the point stalls
(docs/ogbench.md, "the goals that stall"). A position the data never visited is either inside a wall or outside the
maze; the field's gradient points from there to the nearest visited cell. Nothing here knows the maze beyond what
the dataset shows. Used by ``df_agent.guidance.support_distance_cost`` with ``PlannerConfig.support_weight``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt


class DataSupport:
    """A grid of ``cell``-sized cells over the data's positions (with ``margin`` cells of border around them): each
    cell holds the distance from its centre to the centre of the nearest cell some position falls in (0 on those).
    ``distance`` interpolates it bilinearly, so it is differentiable with respect to the positions; beyond the border
    it is constant (no gradient)."""

    def __init__(self, positions: np.ndarray, cell: float = 0.5, margin: int = 8):
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] != 2 or len(positions) == 0:
            raise ValueError(f"positions must have shape (N, 2) with N >= 1, got {positions.shape}")
        if not np.all(np.isfinite(positions)):
            raise ValueError("positions contain NaN or infinity")
        if not cell > 0 or margin < 1:
            raise ValueError(f"cell must be > 0 and margin >= 1, got {cell} and {margin}")
        self.cell = float(cell)
        index = np.floor(positions / cell).astype(np.int64)
        self.low = index.min(axis=0) - margin  # (x, y) index of the grid's first cell
        shape = index.max(axis=0) - self.low + 1 + margin  # cells along x, y
        visited = np.zeros((shape[1], shape[0]), dtype=bool)  # rows: y, columns: x (an image, for grid_sample)
        visited[index[:, 1] - self.low[1], index[:, 0] - self.low[0]] = True
        self.visited = visited
        self.field = distance_transform_edt(~visited) * cell  # (H, W) distance to the nearest visited cell
        self._tensors: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @classmethod
    def from_state_dict(cls, state: dict) -> DataSupport:
        support = cls.__new__(cls)
        support.cell = float(state["cell"])
        support.low = np.asarray(state["low"], dtype=np.int64)
        support.visited = np.asarray(state["visited"], dtype=bool)
        support.field = distance_transform_edt(~support.visited) * support.cell
        support._tensors = {}
        return support

    def state_dict(self) -> dict:
        return {"cell": self.cell, "low": self.low.tolist(), "visited": self.visited.copy()}

    @property
    def num_visited(self) -> int:
        return int(self.visited.sum())

    def _field(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._tensors:
            self._tensors[key] = torch.as_tensor(self.field, dtype=dtype, device=device)[None, None]
        return self._tensors[key]

    def distance(self, positions: torch.Tensor) -> torch.Tensor:
        """Distance of each position (..., 2) from the data's visited cells, (...); differentiable."""
        field = self._field(positions.device, positions.dtype)
        height, width = field.shape[-2:]
        # continuous cell coordinates (0 at the first cell's centre), then grid_sample's [-1, 1] over the centres
        cells = positions / self.cell - torch.as_tensor(self.low + 0.5, dtype=positions.dtype, device=positions.device)
        size = torch.tensor([width - 1, height - 1], dtype=positions.dtype, device=positions.device)
        grid = (2 * cells / size - 1).reshape(1, 1, -1, 2)
        values = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return values.reshape(positions.shape[:-1])
