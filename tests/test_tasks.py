from collections import deque

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.mazes import Maze
from envs.tasks import GOAL_RADIUS

EXPECTED_GOALS = {"umaze": (-1.0, 1.0), "medium": (2.5, -2.5), "large": (3.5, -3.0)}
EXPECTED_STEPS = {"umaze": 300, "medium": 600, "large": 800}


@pytest.mark.parametrize("maze", ["umaze", "medium", "large"])
def test_single_goal_task_matches_d4rl(maze):
    env = gym.make(f"maze2d-{maze}-v1")
    assert env.spec.max_episode_steps == EXPECTED_STEPS[maze]
    layout = Maze.from_name(maze)
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        assert set(obs) == {"observation", "achieved_goal", "desired_goal"}
        assert obs["observation"].shape == (4,)
        np.testing.assert_allclose(obs["desired_goal"], EXPECTED_GOALS[maze])
        np.testing.assert_allclose(obs["achieved_goal"], obs["observation"][:2])
        # D4RL's reset: within 0.1 of the centre of a free cell that is not the goal cell.
        cell = layout.xy_to_cell(obs["achieved_goal"])
        assert not layout.walls[tuple(cell)] and tuple(cell) != layout.goal_cell
        assert np.abs(obs["achieved_goal"] - layout.cell_to_xy(cell)).max() <= 0.1
    env.close()


def test_goal_cell_conversion_is_the_gymnasium_robotics_frame():
    env = gym.make("maze2d-large-v1")
    pointmaze = env.unwrapped.maze  # Gymnasium-Robotics' own cell -> xy conversion
    np.testing.assert_allclose(pointmaze.cell_rowcol_to_xy(np.array([7, 9])), EXPECTED_GOALS["large"])


@pytest.mark.parametrize("maze", ["umaze", "large"])
def test_multi_goal_task_draws_goals_near_free_cell_centres(maze):
    env = gym.make(f"maze2d-{maze}-multi-v1")
    layout = Maze.from_name(maze)
    goals = []
    for seed in range(30):
        obs, _ = env.reset(seed=seed)
        goal = obs["desired_goal"]
        cell = layout.xy_to_cell(goal)
        assert not layout.walls[tuple(cell)]
        assert np.abs(goal - layout.cell_to_xy(cell)).max() <= 0.1
        goals.append(goal)
    assert len({tuple(np.round(g, 6)) for g in goals}) > 10
    env.close()


def test_sparse_reward_radius_and_no_termination():
    env = gym.make("maze2d-umaze-v1")
    goal = np.array(EXPECTED_GOALS["umaze"])
    for offset, expected in [(GOAL_RADIUS - 0.02, 1.0), (GOAL_RADIUS + 0.02, 0.0)]:
        env.reset(seed=0, options={"reset_pos": goal + np.array([offset, 0.0])})
        env.unwrapped.point_env.set_state(goal + np.array([offset, 0.0]), np.zeros(2))
        obs, reward, terminated, truncated, info = env.step(np.zeros(2))
        assert reward == expected and info["success"] == bool(expected)
        assert not terminated and not truncated
    env.close()


def test_episode_is_truncated_at_the_task_length():
    env = envs.make("maze2d-umaze")
    env.reset(seed=0)
    for t in range(300):
        _, _, terminated, truncated, _ = env.step(np.zeros(2))
        assert not terminated
        assert truncated == (t == 299)


def test_seeded_resets_are_reproducible():
    a, b = gym.make("maze2d-medium-multi-v1"), gym.make("maze2d-medium-multi-v1")
    obs_a, _ = a.reset(seed=7)
    obs_b, _ = b.reset(seed=7)
    for key in obs_a:
        np.testing.assert_array_equal(obs_a[key], obs_b[key])


def test_short_ids_and_unknown_id():
    assert envs.resolve_env_id("maze2d-large") == "maze2d-large-v1"
    assert envs.resolve_env_id("large-multi") == "maze2d-large-multi-v1"
    assert envs.make("maze2d-medium-multi").spec.id == "maze2d-medium-multi-v1"
    with pytest.raises(ValueError, match="maze2d-umaze-v1.*maze2d-large-multi-v1"):
        envs.make("maze2d-huge")


def test_twin_env_id_is_the_other_task_of_the_same_maze():
    assert envs.twin_env_id("maze2d-umaze") == "maze2d-umaze-multi-v1"
    assert envs.twin_env_id("large-multi") == "maze2d-large-v1"
    for env_id, task in envs.TASKS.items():
        twin = envs.get_task(envs.twin_env_id(env_id))
        assert twin.maze == task.maze and twin.multi_goal != task.multi_goal
        assert envs.twin_env_id(twin.env_id) == env_id


def test_bad_actions_and_cells_are_refused():
    env = envs.make("maze2d-umaze")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="not a free cell"):
        env.reset(options={"goal_cell": (0, 0)})


# D4RL's published constants, typed from its source as recorded in the reference notes (d4rl/infos.py for the
# reference scores, d4rl/__init__.py for the episode lengths): max episode steps, ref min score, ref max score. The
# multi-goal tasks (the papers' Multi2D) are normalized with their maze's references.
D4RL_REFERENCES = {
    "umaze": (300, 23.85, 161.86),
    "medium": (600, 13.13, 277.39),
    "large": (800, 6.7, 273.99),
}
# d4rl/pointmaze/maze_model.py: U_MAZE, MEDIUM_MAZE, LARGE_MAZE, rows separated by a backslash.
D4RL_LAYOUTS = {
    "umaze": "#####\\#GOO#\\###O#\\#OOO#\\#####",
    "medium": "########\\#OO##OO#\\#OO#OOO#\\##OOO###\\#OO#OOO#\\#O#OO#O#\\#OOO#OG#\\########",
    "large": (
        "############\\#OOOO#OOOOO#\\#O##O#O#O#O#\\#OOOOOO#OOO#\\#O####O###O#\\#OO#O#OOOOO#\\##O#O#O#O###"
        "\\#OO#OOO#OGO#\\############"
    ),
}
D4RL_GOAL_CELLS = {"umaze": (1, 1), "medium": (6, 6), "large": (7, 9)}


@pytest.mark.parametrize("env_id", sorted(envs.TASKS))
def test_all_six_tasks_carry_d4rls_reference_scores_and_lengths(env_id):
    task = envs.get_task(env_id)
    steps, ref_min, ref_max = D4RL_REFERENCES[task.maze]
    assert (task.max_episode_steps, task.ref_min_score, task.ref_max_score) == (steps, ref_min, ref_max)
    assert gym.spec(env_id).max_episode_steps == steps
    # the normalized score of two returns by hand, 100 * (return - min) / (max - min)
    returns = np.array([0.0, 150.0])
    expected = 100 * (returns - ref_min) / (ref_max - ref_min)
    np.testing.assert_allclose(envs.get_normalized_score(env_id, returns), expected, rtol=1e-12)
    assert envs.get_normalized_score(env_id, ref_max) == pytest.approx(100.0)


@pytest.mark.parametrize("maze", ["umaze", "medium", "large"])
def test_maze_layouts_are_d4rls_and_the_env_is_built_from_them(maze):
    rows = tuple(D4RL_LAYOUTS[maze].split("\\"))
    layout = Maze.from_name(maze)
    assert layout.layout == rows
    assert layout.goal_cell == D4RL_GOAL_CELLS[maze]
    walls = [[int(c == "#") for c in row] for row in rows]
    env = gym.make(f"maze2d-{maze}-v1")
    assert env.unwrapped.maze.maze_map == walls  # the MuJoCo maze Gymnasium-Robotics built
    env.close()


def _bfs_distances(layout: Maze, target):
    dist = {tuple(target): 0}
    queue = deque([tuple(target)])
    while queue:
        i, j = queue.popleft()
        for di, dj in [(-1, 0), (1, 0), (0, -1), (0, 1)]:
            n = (i + di, j + dj)
            if not layout.walls[n] and n not in dist:
                dist[n] = dist[(i, j)] + 1
                queue.append(n)
    return dist


@pytest.mark.parametrize("maze", ["umaze", "medium", "large"])
def test_waypoint_planner_follows_shortest_paths(maze):
    layout = Maze.from_name(maze)
    for target in layout.free_cells[::3]:
        dist = _bfs_distances(layout, target)
        for start in layout.free_cells:
            assert layout.shortest_path_length(tuple(start), tuple(target)) == dist[tuple(start)]


def test_every_policy_reads_observations_through_one_checked_parser():
    from envs import split_observation

    states, goals, single = split_observation({"observation": [1, 2, 3, 4], "desired_goal": [5, 6]})
    assert single and states.shape == (1, 4) and goals.tolist() == [[5.0, 6.0]] and states.dtype == np.float32
    states, goals, single = split_observation({"observation": np.zeros((3, 4)), "desired_goal": np.ones((3, 2))})
    assert not single and states.shape == (3, 4) and goals.shape == (3, 2)
    with pytest.raises(ValueError, match="'observation' and 'desired_goal'"):
        split_observation(np.zeros(4))
    with pytest.raises(ValueError, match=r"\(batch, 4\)"):
        split_observation({"observation": np.zeros(8), "desired_goal": np.zeros(2)})
    with pytest.raises(ValueError, match="NaN"):
        split_observation({"observation": [np.nan, 0, 0, 0], "desired_goal": [0, 0]})
    # the baselines and the expert reject a bad observation with that message, not a reshape error deep inside
    from baselines.mppi import MPPIPlanner
    from envs.expert import WaypointExpert

    for policy in (MPPIPlanner("umaze", horizon=4, num_samples=4, seed=0), WaypointExpert("umaze", seed=0)):
        with pytest.raises(ValueError, match=r"\(batch, 4\)"):
            policy({"observation": np.zeros(8), "desired_goal": np.zeros(2)})
