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


def test_bad_actions_and_cells_are_refused():
    env = envs.make("maze2d-umaze")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="not a free cell"):
        env.reset(options={"goal_cell": (0, 0)})


def test_normalized_score_uses_d4rl_references():
    task = envs.get_task("maze2d-large")
    np.testing.assert_allclose(
        envs.get_normalized_score("maze2d-large", [task.ref_min_score, task.ref_max_score]), [0, 100]
    )
    np.testing.assert_allclose(envs.get_normalized_score("maze2d-umaze-multi", 161.86), 100.0)


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
