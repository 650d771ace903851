"""Subgoals from the data's transition graph (df_agent.subgoals): the way follows the data, not the straight line."""

import numpy as np
import pytest

from df_agent.subgoals import SubgoalPolicy, TransitionGraph


def walk(points, step=0.2):
    """Positions along the polyline through ``points``, ``step`` apart: (positions, next positions)."""
    path = [np.asarray(points[0], dtype=float)]
    for a, b in zip(points[:-1], points[1:], strict=True):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        n = int(np.ceil(np.linalg.norm(b - a) / step))
        path += [a + (b - a) * (i / n) for i in range(1, n + 1)]
    path = np.array(path)
    return path[:-1], path[1:]


@pytest.fixture(scope="module")
def u_graph():
    """A U: up the left arm x=0, across y=10, down the right arm x=10; the arms' feet are 10 apart in a straight
    line (a wall between them that no transition crosses) and 30 apart along the data."""
    return TransitionGraph(*walk([(0, 0), (0, 10), (10, 10), (10, 0)]), cell=0.5)


def test_the_way_follows_the_data_around_the_wall(u_graph):
    start, goal = np.array([[0.1, 0.1]]), np.array([[10.0, 0.0]])
    to_goal = u_graph.path_distances(goal[0])
    assert to_goal[u_graph.nearest(start)[0]] == pytest.approx(30.0, abs=1.0)  # along the U, not 10 across
    subgoal = u_graph.subgoals(start, goal, distance=5.0)[0]
    assert abs(subgoal[0]) < 0.5 and subgoal[1] == pytest.approx(5.0, abs=1.0)  # up the left arm
    # further ahead: across the top, then down the right arm
    np.testing.assert_allclose(u_graph.subgoals(start, goal, distance=15.0)[0], [5.0, 10.0], atol=1.0)
    np.testing.assert_allclose(u_graph.subgoals(start, goal, distance=25.0)[0], [10.0, 5.0], atol=1.0)


def test_the_way_runs_along_the_data_from_the_point_to_the_goal(u_graph):
    way = u_graph.way(np.array([0.1, 0.1]), np.array([10.0, 0.0]))
    np.testing.assert_allclose(way[0], [0.0, 0.0], atol=0.5)
    np.testing.assert_allclose(way[-1], [10.0, 0.0], atol=0.5)
    assert np.linalg.norm(np.diff(way, axis=0), axis=1).max() < 1.0  # node to next node: no jump across the wall
    assert np.isclose(way[:, 1].max(), 10.0, atol=0.5)  # over the top of the U


def test_routes_follow_the_way_to_the_subgoal_at_even_spacing(u_graph):
    xy = np.array([[0.1, 0.1], [10.0, 3.0], [0.0, 2.0]])
    goals = np.array([[10.0, 0.0], [10.0, 0.0], [0.0, 6.0]])
    routes = u_graph.routes(xy, goals, distance=15.0, spacing=0.5)
    assert routes.shape == (3, 31, 2)
    far = routes[0]
    np.testing.assert_allclose(far[0], xy[0])  # from the point itself
    gaps = np.linalg.norm(np.diff(far, axis=0), axis=1)
    assert 0.45 < gaps.min() and gaps.max() < 0.6  # about ``spacing`` apart, evenly (cut corners a little shorter)
    # up the left arm and over the top, never across the U's open middle, ending at the subgoal 15 ahead
    assert ((np.abs(far[:, 0]) < 0.5) | (np.abs(far[:, 1] - 10) < 0.5)).all()
    np.testing.assert_allclose(far[-1], u_graph.subgoals(xy[:1], goals[:1], distance=15.0)[0], atol=1e-9)
    # a goal within reach: from the point down the right arm to the goal itself, more densely
    np.testing.assert_allclose(routes[1, [0, -1]], [xy[1], goals[1]])
    assert (np.abs(routes[1, :, 0] - 10) < 0.5).all() and routes[1, :, 1].max() < 3.5  # via its cell's node
    assert (np.diff(routes[1, 2:, 1]) <= 1e-9).all()
    np.testing.assert_allclose(routes[2, -1], goals[2])
    # a goal the data never connects: the goal itself, K times
    a, b = walk([(0, 0), (0, 5)])
    c, d = walk([(20, 0), (20, 5)])
    split = TransitionGraph(np.concatenate([a, c]), np.concatenate([b, d]))
    np.testing.assert_array_equal(split.routes(np.zeros((1, 2)), np.array([[20.0, 5.0]]), 2.0)[0], [[20.0, 5.0]] * 9)
    with pytest.raises(ValueError, match="spacing"):
        u_graph.routes(xy, goals, distance=5.0, spacing=0.0)
    with pytest.raises(ValueError, match="one goal per position"):
        u_graph.routes(xy, goals[:2], distance=5.0)


def test_a_route_policy_passes_the_route_with_the_subgoal(u_graph):
    class Recorder:
        def act(self, obs, goal, route=None, active="not passed"):
            self.goal, self.route, self.active = goal, route, active
            return np.zeros((len(obs), 2), np.float32)

    obs, goal = np.array([[0.1, 0.1, 0.0, 0.0]]), np.array([[10.0, 0.0]])
    recorder = Recorder()
    SubgoalPolicy(recorder, u_graph, distance=5.0).act(obs, goal)
    assert recorder.route is None and recorder.active == "not passed"  # a policy without ``active`` still works
    SubgoalPolicy(recorder, u_graph, distance=5.0).act(obs, goal, active=np.array([False]))
    np.testing.assert_array_equal(recorder.active, [False])  # which episodes go on reaches the policy
    SubgoalPolicy(recorder, u_graph, distance=5.0, route=True).act(obs, goal)
    np.testing.assert_allclose(recorder.route, u_graph.routes(obs[:, :2], goal, 5.0), atol=1e-6)
    np.testing.assert_allclose(recorder.route[0, -1], recorder.goal[0], atol=1e-6)  # the route leads to the subgoal


def test_a_near_goal_is_its_own_subgoal_and_batches_mix_goals(u_graph):
    xy = np.array([[0.0, 2.0], [10.0, 3.0], [0.0, 2.0]])
    goals = np.array([[10.0, 0.0], [10.0, 0.0], [0.0, 6.0]])
    subgoals = u_graph.subgoals(xy, goals, distance=5.0)
    assert subgoals[0, 1] == pytest.approx(7.0, abs=1.0)  # 5 up the left arm
    np.testing.assert_array_equal(subgoals[1], goals[1])  # 3 from the goal along the data: the goal itself
    np.testing.assert_array_equal(subgoals[2], goals[2])


def test_a_goal_the_data_never_connects_is_passed_through():
    a, b = walk([(0, 0), (0, 5)])
    c, d = walk([(20, 0), (20, 5)])
    graph = TransitionGraph(np.concatenate([a, c]), np.concatenate([b, d]))
    goal = np.array([[20.0, 5.0]])
    np.testing.assert_array_equal(graph.subgoals(np.zeros((1, 2)), goal, distance=2.0), goal)
    assert graph.way(np.zeros(2), goal[0]).shape == (0, 2)


def test_nodes_sit_where_the_data_is_and_edges_only_where_it_moves(u_graph):
    assert u_graph.num_edges == pytest.approx(u_graph.num_nodes - 1, abs=2)  # a path: one edge per step of it
    # every node is on the U (mean of data positions), none in its open middle
    x, y = u_graph.node_positions.T
    on_u = (np.abs(x) < 0.5) | (np.abs(x - 10) < 0.5) | (np.abs(y - 10) < 0.5)
    assert on_u.all()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        TransitionGraph(np.zeros((5, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="finite"):
        TransitionGraph(np.full((2, 2), np.nan), np.zeros((2, 2)))
    graph = TransitionGraph(*walk([(0, 0), (0, 5)]))
    with pytest.raises(ValueError, match="distance"):
        graph.subgoals(np.zeros((1, 2)), np.ones((1, 2)), distance=0.0)
    with pytest.raises(ValueError, match="one goal per position"):
        graph.subgoals(np.zeros((2, 2)), np.ones((3, 2)), distance=1.0)


class GoalRecorder:
    def __init__(self):
        self.goals, self.resets = [], []

    def reset(self, num_envs=None):
        self.resets.append(num_envs)

    def act(self, obs, goal):
        self.goals.append(np.array(goal))
        return np.zeros((len(obs), 2), dtype=np.float32)


def test_the_policy_is_guided_toward_the_subgoal_and_its_actions_pass_through(u_graph):
    inner = GoalRecorder()
    policy = SubgoalPolicy(inner, u_graph, distance=5.0)
    policy.reset(2)
    obs = np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 2.0, 0.0, 0.0]], dtype=np.float32)
    goals = np.array([[10.0, 0.0], [10.0, 0.0]])
    actions = policy.act(obs, goals)
    assert inner.resets == [2] and actions.shape == (2, 2)
    np.testing.assert_allclose(inner.goals[0][0], [0.0, 5.0], atol=1.0)
    np.testing.assert_array_equal(inner.goals[0][1], goals[1])


def test_the_policy_takes_gymnasium_dict_observations_and_single_ones(u_graph):
    """``envs.evaluate`` calls ``policy(obs)`` with maze2d's dict observation: its ``desired_goal`` is the goal."""
    inner = GoalRecorder()
    policy = SubgoalPolicy(inner, u_graph, distance=5.0)
    obs = {
        "observation": np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 2.0, 0.0, 0.0]], dtype=np.float32),
        "desired_goal": np.array([[10.0, 0.0], [10.0, 0.0]]),
    }
    assert policy(obs).shape == (2, 2)
    np.testing.assert_allclose(inner.goals[-1][0], [0.0, 5.0], atol=1.0)  # up the left arm, not across the wall
    np.testing.assert_array_equal(inner.goals[-1][1], [10.0, 0.0])  # within reach: the goal itself
    single = policy.act(obs["observation"][0], obs["desired_goal"][0])
    assert single.shape == (2,)
    np.testing.assert_allclose(inner.goals[-1][0], [0.0, 5.0], atol=1.0)
    with pytest.raises(ValueError, match="no goal"):
        policy.act(obs["observation"])


def test_the_graph_has_one_node_per_visited_cell_at_its_mean_and_one_edge_per_move_between_cells():
    """Checked against a plain dictionary construction on random moves that span negative and positive
    coordinates; ``from_transitions`` reads the positions from observations that carry more than them."""
    rng = np.random.default_rng(0)
    positions = rng.uniform(-3.0, 2.0, size=(400, 2))
    next_positions = positions + rng.normal(0.0, 0.4, size=(400, 2))
    cell = 0.5
    members: dict[tuple[int, int], list[np.ndarray]] = {}
    for point in np.concatenate([positions, next_positions]):
        members.setdefault(tuple(np.floor(point / cell).astype(int)), []).append(point)
    cells = sorted(members)
    index = {key: i for i, key in enumerate(cells)}
    edges = {
        tuple(sorted((index[tuple(np.floor(a / cell).astype(int))], index[tuple(np.floor(b / cell).astype(int))])))
        for a, b in zip(positions, next_positions, strict=True)
    }
    edges = {edge for edge in edges if edge[0] != edge[1]}

    class Moves:  # observations [x, y, vx, vy], as load_transitions gives them
        observations = np.concatenate([positions, rng.normal(size=(400, 2))], axis=1)
        next_observations = np.concatenate([next_positions, rng.normal(size=(400, 2))], axis=1)

    graph = TransitionGraph.from_transitions(Moves, cell=cell)
    np.testing.assert_allclose(graph.node_positions, [np.mean(members[key], axis=0) for key in cells])
    assert graph.num_edges == len(edges)
    adjacency = graph.adjacency.tocoo()
    assert {(int(i), int(j)) for i, j in zip(adjacency.row, adjacency.col, strict=True) if i < j} == edges


def test_cells_the_data_visits_and_segments_in_sight(u_graph):
    assert u_graph.visited(np.array([[0.1, 3.0], [5.0, 10.1], [10.2, 0.4]])).all()  # on the U
    # inside the U, far outside, and above the top: its cell's row lies past the grid's, and a plain row-major key
    # would alias it to the visited cell (10, 1) on the right arm
    assert not u_graph.visited(np.array([[5.0, 5.0], [-30.0, -30.0], [9.7, 11.7]])).any()
    # along an arm: in sight; across the inside of the U (a wall no transition crosses): not
    np.testing.assert_array_equal(
        u_graph.in_sight(np.array([[0.1, 1.0], [0.1, 1.0]]), np.array([[0.1, 9.0], [10.1, 1.0]])), [True, False]
    )


def test_line_of_sight_subgoals_lead_around_the_bend_not_into_the_wall(u_graph):
    """At the top of the left arm the point 5 ahead lies along the top, out of sight across the U's inside; the
    line-of-sight subgoal points up and over toward the bend, as far away as the plain one. A subgoal in sight is
    kept."""
    start, goal = np.array([[0.1, 9.0]]), np.array([[10.0, 0.0]])
    plain = u_graph.subgoals(start, goal, distance=5.0)
    assert not u_graph.in_sight(start, plain)[0]
    seen = u_graph.subgoals(start, goal, distance=5.0, line_of_sight=True)[0]
    offset = seen - start[0]
    assert offset[1] > 0.5 and offset[0] >= 0.0  # up toward the bend, not down-right across the inside
    assert np.linalg.norm(offset) == pytest.approx(np.linalg.norm(plain[0] - start[0]), rel=1e-6)
    low = np.array([[0.1, 1.0]])  # low on the left arm: 5 ahead is straight up the arm, in sight
    np.testing.assert_allclose(u_graph.subgoals(low, goal, 5.0, line_of_sight=True), u_graph.subgoals(low, goal, 5.0))


def test_for_task_applies_the_maze_s_preset_on_the_task_s_dataset_graph(tiny_umaze_dataset):
    from df_agent.presets import MAZE_SUBGOALS

    class Recorder:  # a goal-guided policy that records what it is guided toward
        def act(self, obs, goal):
            self.goal = goal
            return np.zeros((len(obs), 2), np.float32)

    recorder = Recorder()
    policy = SubgoalPolicy.for_task(recorder, "maze2d-umaze-multi")
    preset = MAZE_SUBGOALS["umaze"]
    assert (policy.distance, policy.line_of_sight, policy.graph.cell) == (preset.distance, True, preset.cell)
    assert policy.graph.num_nodes > 10  # the tiny dataset's graph
    far_goal = np.array([[3.0, 1.0]], np.float32)
    policy.act(np.array([[1.0, 1.0, 0.0, 0.0]], np.float32), far_goal)
    assert not np.allclose(recorder.goal, far_goal)  # guided toward a subgoal on the way, not the goal
    shorter = SubgoalPolicy.for_task(recorder, "maze2d-umaze", distance=1.0, line_of_sight=False)
    assert (shorter.distance, shorter.line_of_sight) == (1.0, False)
    with pytest.raises(ValueError, match="unknown"):
        SubgoalPolicy.for_task(recorder, "maze2d-tiny")
