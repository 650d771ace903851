"""Subgoals from a graph of the offline data's own transitions, for goals the planner cannot reach in one plan.

The guidance cost pulls a plan toward its goal in a straight line (``df_agent.guidance``). Where the way to the goal
bends around walls and the data holds only short pieces of it (OGBench's stitch datasets: every trajectory spans at
most 4 cells), the pull leads into a wall and the model's prior has never seen the detour whole. The data has seen
every piece, though: this module builds a graph whose nodes are the cells of a fine grid the data visits and whose
edges are the data's transitions between them, finds the shortest way from the point to the goal along it (Dijkstra,
weighted by the distance between the nodes' mean positions), and hands the planner a subgoal a fixed distance ahead on
that way. The planner still diffuses every action; only the point it is guided toward changes. This is search on the
replay buffer (Eysenbach et al., 2019, "SoRB") with the data's transitions as its edges, so no edge crosses a wall:
nothing here knows the maze beyond what the dataset shows.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree


class TransitionGraph:
    """Nodes: the cells of a ``cell``-sized grid that the data visits, placed at the mean of the data's positions in
    them. Edges: one per pair of cells that some transition moves between, both ways, weighted by the distance
    between their nodes. ``subgoals`` walks the shortest path from the node nearest each point toward the node
    nearest its goal."""

    def __init__(self, positions: np.ndarray, next_positions: np.ndarray, cell: float = 0.5):
        positions = np.asarray(positions, dtype=np.float64)
        next_positions = np.asarray(next_positions, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] != 2 or positions.shape != next_positions.shape:
            raise ValueError(
                f"positions and next_positions must both have shape (N, 2), got {positions.shape} and "
                f"{next_positions.shape}"
            )
        if len(positions) == 0 or not (np.all(np.isfinite(positions)) and np.all(np.isfinite(next_positions))):
            raise ValueError("the graph needs at least one transition and finite positions")
        if not cell > 0:
            raise ValueError(f"cell must be > 0, got {cell}")
        self.cell = float(cell)
        both = np.concatenate([positions, next_positions])
        grid = np.floor(both / cell).astype(np.int64)
        # one integer per cell, ordered as the (x, y) rows are: np.unique on it is several times faster than on rows
        low = grid.min(axis=0)
        width = grid[:, 1].max() - low[1] + 1
        cell_keys, node_of = np.unique((grid[:, 0] - low[0]) * width + (grid[:, 1] - low[1]), return_inverse=True)
        num_nodes = len(cell_keys)
        self._cell_keys, self._low, self._width = cell_keys, low, int(width)
        counts = np.bincount(node_of, minlength=num_nodes).astype(np.float64)
        self.node_positions = np.stack(
            [np.bincount(node_of, weights=both[:, k], minlength=num_nodes) / counts for k in range(2)], axis=1
        )
        start, end = node_of[: len(positions)], node_of[len(positions) :]
        moved = start != end
        low_end, high_end = np.minimum(start[moved], end[moved]), np.maximum(start[moved], end[moved])
        pair_keys = np.unique(low_end * num_nodes + high_end)
        pairs = np.stack([pair_keys // num_nodes, pair_keys % num_nodes], axis=1)
        lengths = np.linalg.norm(self.node_positions[pairs[:, 0]] - self.node_positions[pairs[:, 1]], axis=1)
        lengths = np.maximum(lengths, 1e-9)  # a zero weight would read as "no edge" in a sparse matrix
        rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
        cols = np.concatenate([pairs[:, 1], pairs[:, 0]])
        self.adjacency = coo_matrix((np.tile(lengths, 2), (rows, cols)), shape=(num_nodes, num_nodes)).tocsr()
        self.num_edges = len(pairs)
        self._tree = cKDTree(self.node_positions)
        self._trees: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._ahead: dict[tuple[int, float], np.ndarray] = {}

    @classmethod
    def from_transitions(cls, transitions, cell: float = 0.5) -> TransitionGraph:
        """The graph of a dataset's moves: ``transitions`` has ``observations`` and ``next_observations`` (N, obs_dim)
        whose first two entries are the point's position, as ``envs.load_transitions`` returns for maze2d and
        OGBench pointmaze."""
        return cls(transitions.observations[:, :2], transitions.next_observations[:, :2], cell=cell)

    @property
    def num_nodes(self) -> int:
        return len(self.node_positions)

    def visited(self, xy: np.ndarray) -> np.ndarray:
        """Whether the data visits the grid cell of each position (..., 2) -> (...) bool."""
        xy = np.asarray(xy, dtype=np.float64)
        grid = np.floor(xy.reshape(-1, 2) / self.cell).astype(np.int64) - self._low
        inside = (grid[:, 0] >= 0) & (grid[:, 1] >= 0) & (grid[:, 1] < self._width)
        keys = grid[:, 0] * self._width + grid[:, 1]
        at = np.minimum(np.searchsorted(self._cell_keys, keys), len(self._cell_keys) - 1)
        return (inside & (self._cell_keys[at] == keys)).reshape(xy.shape[:-1])

    def in_sight(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Whether the straight segment from each start (N, 2) to its end (N, 2) runs through visited cells only,
        checked every half cell: no wall the data never crossed lies between them. -> (N,) bool."""
        start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
        longest = float(np.linalg.norm(end - start, axis=-1).max(initial=0.0))
        fractions = np.linspace(0.0, 1.0, int(np.ceil(2 * longest / self.cell)) + 2)
        points = start[:, None, :] + (end - start)[:, None, :] * fractions[None, :, None]
        return self.visited(points).all(axis=1)

    def nearest(self, xy: np.ndarray) -> np.ndarray:
        """Index of the node nearest each position (B, 2) -> (B,)."""
        return self._tree.query(np.asarray(xy, dtype=np.float64).reshape(-1, 2))[1]

    def _shortest_paths(self, goal_node: int) -> tuple[np.ndarray, np.ndarray]:
        """The shortest-path tree to ``goal_node`` (Dijkstra, once per goal node): every node's path length to it
        (inf where the data never connects them) and its parent on the way (itself at the root and where unreached)."""
        if goal_node not in self._trees:
            to_goal, predecessors = dijkstra(
                self.adjacency, directed=False, indices=goal_node, return_predecessors=True
            )
            parent = np.where(predecessors < 0, np.arange(self.num_nodes), predecessors)
            self._trees[goal_node] = (to_goal, parent)
        return self._trees[goal_node]

    def path_distances(self, goal: np.ndarray) -> np.ndarray:
        """Shortest-path length from every node to the node nearest ``goal`` (2,): (num_nodes,), inf where the data
        never connects them."""
        return self._shortest_paths(int(self.nearest(goal)[0]))[0]

    def way(self, xy: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The node positions on the data's shortest way from the node nearest ``xy`` (2,) to the node nearest
        ``goal`` (2,), both included: (K, 2); empty (0, 2) where the data never connects them."""
        start, goal_node = int(self.nearest(xy)[0]), int(self.nearest(goal)[0])
        to_goal, parent = self._shortest_paths(goal_node)
        if not np.isfinite(to_goal[start]):
            return np.zeros((0, 2))
        nodes = [start]
        while nodes[-1] != goal_node:
            nodes.append(int(parent[nodes[-1]]))
        return self.node_positions[nodes]

    def _lookahead(self, goal_node: int, distance: float) -> np.ndarray:
        """For every node: the node ``distance`` ahead of it on its shortest path to ``goal_node`` (the goal node
        itself when the goal is nearer; itself where unreached). Cached per goal node and distance."""
        key = (goal_node, distance)
        if key not in self._ahead:
            to_goal, parent = self._shortest_paths(goal_node)
            reachable = np.isfinite(to_goal)
            ahead = np.arange(self.num_nodes)
            # pointer jumping along the shortest-path tree: step every node's pointer toward the goal while it is
            # less than ``distance`` ahead; each round moves at least one edge, so rounds <= the tree's depth
            while True:
                step = parent[ahead]
                move = reachable & (step != ahead)
                move[move] = to_goal[move] - to_goal[ahead[move]] < distance
                if not move.any():
                    break
                ahead = np.where(move, step, ahead)
            self._ahead[key] = ahead
        return self._ahead[key]

    def subgoals(self, xy: np.ndarray, goals: np.ndarray, distance: float, line_of_sight: bool = False) -> np.ndarray:
        """The point ``distance`` ahead of each position on the data's shortest way to its goal (B, 2).

        A goal within ``distance`` along the way (or a position the data never connects to its goal) gets the goal
        itself; otherwise the subgoal is the node's mean position there. xy, goals (B, 2).

        ``line_of_sight``: where the way bends sharply (around the end of a wall), the point ``distance`` ahead can
        lie behind the wall, and a straight pull toward it pins the point against the wall. Then the subgoal is the
        farthest point of the way within ``distance`` that is ``in_sight`` of the position, moved out along the same
        direction to ``distance`` from it (so that a pull toward it stays a pull along the way, not toward a point
        to stop at); a goal in sight stays the goal."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        goals = np.asarray(goals, dtype=np.float64).reshape(-1, 2)
        if len(xy) != len(goals):
            raise ValueError(f"one goal per position: got {len(xy)} positions and {len(goals)} goals")
        if not distance > 0:
            raise ValueError(f"distance must be > 0, got {distance}")
        out = goals.copy()
        here, goal_nodes = self.nearest(xy), self.nearest(goals)
        for goal_node in np.unique(goal_nodes):
            members = np.flatnonzero(goal_nodes == goal_node)
            ahead, to_goal = self._lookahead(int(goal_node), float(distance)), self._shortest_paths(int(goal_node))[0]
            nodes = here[members]
            far = np.isfinite(to_goal[nodes]) & (to_goal[nodes] > distance)
            out[members[far]] = self.node_positions[ahead[nodes[far]]]
            if line_of_sight:
                reached = np.isfinite(to_goal[nodes])
                out[members[reached]] = self._in_sight_along_way(
                    xy[members[reached]], out[members[reached]], nodes[reached], int(goal_node), ahead
                )
        return out

    def _in_sight_along_way(
        self, xy: np.ndarray, targets: np.ndarray, nodes: np.ndarray, goal_node: int, ahead: np.ndarray
    ) -> np.ndarray:
        """``subgoals``' line of sight for positions xy (N, 2) whose way (from their nodes (N,) toward goal_node)
        leads to targets (N, 2): the targets in sight stay; the others become the farthest node of the way before
        them that is in sight (the first node ahead if none is), moved out to the targets' distance along the way's
        direction."""
        keep = self.in_sight(xy, targets)
        if keep.all():
            return targets
        parent = self._shortest_paths(goal_node)[1]
        last = ahead[nodes]  # the way's last node before the target (the goal node where the target is the goal)
        chain = [nodes]
        while True:  # walk every position's way one node a step, each stopping at its last node
            step = np.where(chain[-1] == last, chain[-1], parent[chain[-1]])
            if np.array_equal(step, chain[-1]):
                break
            chain.append(step)
        candidates = self.node_positions[np.stack(chain, axis=1)]  # (N, K, 2), the way's nodes in order
        num = len(xy)
        seen = self.in_sight(np.repeat(xy, candidates.shape[1], axis=0), candidates.reshape(-1, 2)).reshape(num, -1)
        seen[:, 0] = False  # the position's own node is no direction
        farthest = np.where(seen.any(axis=1), candidates.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1), 1)
        farthest = np.minimum(farthest, candidates.shape[1] - 1)
        chosen = candidates[np.arange(num), farthest]
        offset = chosen - xy
        length = np.linalg.norm(offset, axis=1, keepdims=True)
        reach = np.linalg.norm(targets - xy, axis=1, keepdims=True)
        moved = xy + offset / np.maximum(length, 1e-9) * np.maximum(length, reach)
        return np.where(keep[:, None], targets, moved)

    def routes(self, xy: np.ndarray, goals: np.ndarray, distance: float, spacing: float = 0.25) -> np.ndarray:
        """The data's way from each position toward its goal, as far as its subgoal ``distance`` ahead: K =
        floor(distance / spacing) + 1 points evenly spaced along the polyline from the position through the way's
        nodes to the subgoal (to the goal itself where it is within reach), (B, K, 2). A position the data never
        connects to its goal gets the goal K times.
        xy, goals (B, 2). For ``df_agent.guidance.route_distance_cost``: the points a plan should stay near on its
        way to the subgoal, so that it follows the corridor the data took instead of a straight line through a wall.
        """
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        goals = np.asarray(goals, dtype=np.float64).reshape(-1, 2)
        if len(xy) != len(goals):
            raise ValueError(f"one goal per position: got {len(xy)} positions and {len(goals)} goals")
        if not (distance > 0 and spacing > 0):
            raise ValueError(f"distance and spacing must be > 0, got {distance} and {spacing}")
        num_points = int(np.floor(distance / spacing)) + 1
        out = np.repeat(goals[:, None, :], num_points, axis=1)
        here, goal_nodes = self.nearest(xy), self.nearest(goals)
        for b in range(len(xy)):
            to_goal, parent = self._shortest_paths(int(goal_nodes[b]))
            node = int(here[b])
            if not np.isfinite(to_goal[node]):
                continue
            nodes = [node]
            while nodes[-1] != goal_nodes[b] and to_goal[node] - to_goal[nodes[-1]] < distance:
                nodes.append(int(parent[nodes[-1]]))
            points = np.concatenate([xy[b : b + 1], self.node_positions[nodes]])
            if nodes[-1] == goal_nodes[b]:
                points = np.concatenate([points, goals[b : b + 1]])
            arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
            at = np.linspace(0.0, arc[-1], num_points)
            out[b] = np.stack([np.interp(at, arc, points[:, k]) for k in range(2)], axis=1)
        return out


class SubgoalPolicy:
    """A goal-guided policy ``act(obs, goal)`` (e.g. ``df_agent.Agent``) steered by ``TransitionGraph`` subgoals:
    each call passes the subgoal ``distance`` ahead on the data's way to the goal instead of the goal itself, and with
    ``route=True`` also the way there (``TransitionGraph.routes``) as ``route=`` (``Agent.act`` guides its plans to
    stay near it when its planner's ``route_weight`` is above 0). The policy's own actions are returned unchanged.
    ``obs`` and ``goal`` are batches (B, obs_dim), (B, 2)."""

    def __init__(
        self, policy, graph: TransitionGraph, distance: float, route: bool = False, line_of_sight: bool = False
    ):
        if not distance > 0:
            raise ValueError(f"distance must be > 0, got {distance}")
        self.policy = policy
        self.graph = graph
        self.distance = float(distance)
        self.route = route
        self.line_of_sight = line_of_sight

    @classmethod
    def for_task(cls, policy, env_id: str, route: bool = False, **overrides) -> SubgoalPolicy:
        """``policy`` steered as the headline evaluation steers the shipped agents on a maze2d task: the maze's
        ``df_agent.presets.MAZE_SUBGOALS`` (``distance``, ``line_of_sight``, ``cell``: replace them by keyword) on the
        graph of the task's local dataset (``envs.datasets.load_transitions``: generated on first use, which takes a
        minute or two)."""
        import envs
        from df_agent.presets import MAZE_SUBGOALS
        from envs.datasets import load_transitions

        task = envs.get_task(env_id)  # a clear error for an unknown id
        if task.maze not in MAZE_SUBGOALS:
            raise ValueError(f"no subgoal settings for the maze {task.maze!r}; build SubgoalPolicy(...) by hand")
        settings = replace(MAZE_SUBGOALS[task.maze], **overrides)
        graph = TransitionGraph.from_transitions(load_transitions(task.env_id), cell=settings.cell)
        return cls(policy, graph, settings.distance, route=route, line_of_sight=settings.line_of_sight)

    def reset(self, num_envs: int | None = None) -> None:
        self.policy.reset(num_envs)

    def subgoals(self, obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The points the policy is guided toward from observations (B, obs_dim) with goals (B, 2): (B, 2) float32."""
        obs = np.asarray(obs)
        xy = obs.reshape(len(obs), -1)[:, :2]
        return self.graph.subgoals(xy, goal, self.distance, line_of_sight=self.line_of_sight).astype(np.float32)

    def settings(self) -> dict:
        """The wrapper's part of an evaluation record's settings: its distance and cell, and line of sight when on."""
        settings = {"subgoal_distance": self.distance, "subgoal_cell": self.graph.cell}
        if self.line_of_sight:
            settings["subgoal_line_of_sight"] = True
        return settings

    def act(self, obs, goal: np.ndarray | None = None, active: np.ndarray | None = None) -> np.ndarray:
        """``obs``: observations (B, obs_dim) with ``goal`` (B, 2), or a Gymnasium-Robotics dict observation whose
        ``desired_goal`` is the goal unless ``goal`` is given (``envs.evaluate`` calls ``policy(obs)`` that way).
        ``active``: the envs whose episode goes on, passed on to the policy (see ``Agent.act``) when given."""
        if isinstance(obs, dict):
            goal = obs["desired_goal"] if goal is None else goal
            obs = obs["observation"]
        if goal is None:
            raise ValueError("no goal: pass a dict observation with 'desired_goal' or goal=(B, 2)")
        single = np.ndim(obs) == 1
        obs, goal = np.atleast_2d(obs), np.atleast_2d(goal)
        kwargs = {} if active is None else {"active": active}
        if self.route:
            xy = np.asarray(obs).reshape(len(obs), -1)[:, :2]
            kwargs["route"] = self.graph.routes(xy, goal, self.distance).astype(np.float32)
        actions = self.policy.act(obs, self.subgoals(obs, goal), **kwargs)
        return actions[0] if single else actions

    def __call__(self, obs) -> np.ndarray:
        return self.act(obs)
