"""OGBench pointmaze tasks and their locally regenerated datasets (tiny runs of the recipe)."""

import urllib.request

import gymnasium as gym
import numpy as np
import ogbench
import pytest
from scipy import stats
from scipy.special import ndtr

from envs import ogbench_datasets as od
from envs.ogbench_tasks import (
    OGBENCH_TASKS,
    OGBenchDatasetMissing,
    evaluation_tasks,
    get_ogbench_task,
    make_ogbench_env,
    minari_dataset_id,
    reset_to_task,
)

TINY = dict(num_episodes=24, episode_length=40)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to download fails the test loudly instead of hanging."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(scope="module")
def navigate():
    return od.simulate("pointmaze-medium-navigate-v0", num_episodes=16, episode_length=400, seed=3, progress=False)


@pytest.fixture(scope="module")
def stitch():
    return od.simulate("pointmaze-large-stitch-v0", num_episodes=200, episode_length=60, seed=4, progress=False)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A tiny medium-stitch dataset written to a scratch OGBench folder (and the session's scratch Minari root)."""
    directory = tmp_path_factory.mktemp("ogbench_data")
    summary = od.generate_dataset("pointmaze-medium-stitch-v0", directory, seed=5, overwrite=True, progress=False,
                                  **TINY)  # fmt: skip
    return directory, summary


def test_task_table_matches_ogbench():
    assert sorted(OGBENCH_TASKS) == sorted(
        f"pointmaze-{m}-{k}-v0" for m in ("medium", "large", "giant") for k in ("navigate", "stitch")
    )
    for env_id, task in OGBENCH_TASKS.items():
        assert task.env_name == f"pointmaze-{task.maze}-v0" and f"-{task.dataset_kind}-" in env_id
        assert task.max_episode_steps == gym.spec(task.env_name).max_episode_steps == 1000
        assert task.num_eval_tasks == 5
    assert (OGBENCH_TASKS["pointmaze-medium-navigate-v0"].dataset_episodes, OGBENCH_TASKS[
        "pointmaze-medium-navigate-v0"].dataset_episode_length) == (1000, 1001)  # fmt: skip
    giant = OGBENCH_TASKS["pointmaze-giant-navigate-v0"]
    assert (giant.dataset_episodes, giant.dataset_episode_length) == (500, 2001)
    for maze in ("medium", "large", "giant"):
        task = OGBENCH_TASKS[f"pointmaze-{maze}-stitch-v0"]
        assert (task.dataset_episodes, task.dataset_episode_length) == (5000, 201)
    assert minari_dataset_id("pointmaze-giant-stitch-v0") == "ogbench/pointmaze-giant-stitch-v0"
    assert minari_dataset_id("pointmaze-giant-stitch-v0", "val") == "ogbench/pointmaze-giant-stitch-val-v0"


def test_env_test_goals_and_success_rule():
    env = make_ogbench_env("pointmaze-large-navigate-v0")
    assert env.unwrapped.maze_map.shape == (9, 12) and env.spec.max_episode_steps == 1000
    tasks = evaluation_tasks("pointmaze-large-navigate-v0")
    assert [t["task_id"] for t in tasks] == [1, 2, 3, 4, 5]
    assert tasks[0]["init_ij"] == (1, 1) and tasks[0]["goal_ij"] == (7, 10)
    for task in tasks:
        ob, info = reset_to_task(env, task["task_id"], seed=0)
        assert ob.shape == (2,) and np.abs(ob - task["init_xy"]).max() <= 1.0  # start: the cell +- 1 noise
        assert np.abs(info["goal"] - task["goal_xy"]).max() <= 1.0
        _, _, _, _, step_info = env.step(np.zeros(2, dtype=np.float32))
        assert step_info["success"] == 0.0
        env.unwrapped.set_xy(info["goal"] + 0.5)  # within the point's success radius 1.0 of the goal
        _, reward, terminated, _, step_info = env.step(np.zeros(2, dtype=np.float32))
        assert step_info["success"] == 1.0 and reward == 1.0 and terminated
    with pytest.raises(ValueError, match="task_id"):
        reset_to_task(env, 6)
    env.close()


def test_unknown_ids_raise_naming_the_valid_ones(tmp_path):
    for call in (
        lambda: get_ogbench_task("pointmaze-huge-navigate-v0"),
        lambda: make_ogbench_env("antmaze-giant-navigate-v0"),
        lambda: od.simulate("pointmaze-medium-explore-v0"),
        lambda: od.npz_paths("maze2d-umaze-v1"),
        lambda: od.load_ogbench("pointmaze-teleport-navigate-v0", tmp_path),
        lambda: minari_dataset_id("pointmaze-medium-v0"),
    ):
        with pytest.raises(ValueError, match="valid ids: pointmaze-medium-navigate-v0, .*pointmaze-giant-stitch-v0"):
            call()
    with pytest.raises(SystemExit):
        od.main(["--env", "pointmaze-huge-navigate-v0", "--dataset-dir", str(tmp_path)])


def test_batched_simulation_replays_exactly_in_the_ogbench_env(navigate):
    env = gym.make("pointmaze-medium-v0", terminate_at_goal=False, max_episode_steps=10**6)
    env.reset(seed=0)
    maze = env.unwrapped
    for e in range(4):
        maze.set_state(navigate.qpos[e, 0], navigate.qvel[e, 0])
        maze.set_goal(goal_xy=navigate.goals[e, 0])
        for t in range(navigate.episode_length):
            _, _, _, _, info = env.step(navigate.actions[e, t])
            np.testing.assert_array_equal(info["prev_qvel"], navigate.qvel[e, t])
            np.testing.assert_array_equal(info["qpos"], navigate.qpos[e, t + 1])
            np.testing.assert_array_equal(info["qvel"], navigate.qvel[e, t + 1])
            assert bool(info["success"]) == navigate.success[e, t]
            maze.set_goal(goal_xy=navigate.goals[e, t + 1])
    assert 0 < navigate.simulated_fraction < 0.2  # some wall contacts, simulated; most steps are free
    env.close()


def test_oracle_subgoals_are_ogbenchs(navigate):
    env = gym.make("pointmaze-medium-v0")
    grid = od.MazeGrid(env)
    for start in grid.free_cells:
        for goal in grid.free_cells:
            expected, bfs = env.unwrapped.get_oracle_subgoal(grid.cell_to_xy(start), grid.cell_to_xy(goal))
            sub = grid.next_cell[grid.flat(goal), grid.flat(start)]
            np.testing.assert_array_equal(grid.cell_to_xy([sub // grid.width, sub % grid.width]), expected)
            assert grid.distances[grid.flat(goal), grid.flat(start)] == bfs[tuple(start)]
    env.close()


def test_dataset_expert_is_ogbenchs_oracle_subgoal_direction(navigate):
    """As OGBench's generator: the unit vector towards get_oracle_subgoal, which inside the goal's cell is that cell's
    centre. The evaluation oracle (expert_direction) differs only there: it heads for the goal itself."""
    env = gym.make("pointmaze-medium-v0")
    maze, grid = env.unwrapped, od.MazeGrid(env)
    xy, goal = navigate.qpos[:, :-1].reshape(-1, 2), navigate.goals[:, :-1].reshape(-1, 2)
    ours, evaluation = grid.oracle_direction(xy, goal), grid.expert_direction(xy, goal)
    in_goal_cell = 0
    for k in range(0, len(xy), 7):
        subgoal, _ = maze.get_oracle_subgoal(xy[k], goal[k])
        np.testing.assert_allclose(ours[k], (subgoal - xy[k]) / (np.linalg.norm(subgoal - xy[k]) + 1e-6), atol=1e-12)
        if maze.xy_to_ij(xy[k]) == maze.xy_to_ij(goal[k]):
            in_goal_cell += 1
            np.testing.assert_array_equal(subgoal, maze.ij_to_xy(maze.xy_to_ij(goal[k])))  # the cell's centre
            to_goal = (goal[k] - xy[k]) / (np.linalg.norm(goal[k] - xy[k]) + 1e-6)
            np.testing.assert_allclose(evaluation[k], to_goal, atol=1e-12)
        else:
            np.testing.assert_array_equal(evaluation[k], ours[k])
    assert in_goal_cell > 10
    env.close()


def test_in_the_goal_cell_the_generator_steers_at_the_cell_centre(monkeypatch):
    """A tiny noiseless stitch run (goals never redrawn): every action inside the goal's cell points at the cell's
    centre, not at the goal, and the point settles at the centre even where the goal lies more than 1.0 away."""
    monkeypatch.setattr(od, "ACTION_NOISE", 0.0)
    run = od.simulate("pointmaze-medium-stitch-v0", num_episodes=80, episode_length=120, num_val_episodes=0, seed=11,
                      progress=False)  # fmt: skip
    grid = od.MazeGrid(gym.make("pointmaze-medium-v0"))
    xy, goal = run.qpos[:, :-1], run.goals[:, :-1]
    centre = grid.cell_to_xy(run.goal_cells[:, :-1])
    inside = (grid.xy_to_cell(xy) == run.goal_cells[:, :-1]).all(-1)
    assert inside.sum() > 1000 and inside[:, -1].all()  # every episode ends in its goal's cell
    expected = (centre - xy) / (np.linalg.norm(centre - xy, axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(run.actions[inside], expected[inside], atol=1e-12)  # noise 0: unit vectors
    towards_goal = (goal - xy) / (np.linalg.norm(goal - xy, axis=-1, keepdims=True) + 1e-6)
    assert np.abs(run.actions[inside] - towards_goal[inside]).max() > 0.5
    final = run.qpos[:, -1]
    assert np.linalg.norm(final - centre[:, -1], axis=-1).max() <= 0.2 + 1e-9  # it hovers at the centre
    far = np.linalg.norm(goal[:, -1] - centre[:, -1], axis=-1) > 1.0 + 0.2
    assert far.any() and not run.success[far, -1].any()  # so a goal far from the centre is not reached


def _vertex_rule(maze_map, i, j):
    """OGBench's generator, written out per cell: a free cell is a vertex unless it is a straight hallway cell."""
    up, down, left, right = maze_map[i - 1, j], maze_map[i + 1, j], maze_map[i, j - 1], maze_map[i, j + 1]
    vertical_hallway = up == 0 and down == 0 and left == 1 and right == 1
    horizontal_hallway = left == 0 and right == 0 and up == 1 and down == 1
    return maze_map[i, j] == 0 and not vertical_hallway and not horizontal_hallway


def test_vertex_cells_follow_ogbenchs_rule():
    for maze, count in (("medium", 21), ("large", 22), ("giant", 46)):
        grid = od.MazeGrid(gym.make(f"pointmaze-{maze}-v0"))
        m = grid.maze_map
        expected = [(i, j) for i in range(1, m.shape[0] - 1) for j in range(1, m.shape[1] - 1) if _vertex_rule(m, i, j)]
        assert [tuple(c) for c in grid.vertex_cells] == expected and len(expected) == count
    # A tiny maze: a dead end (3 walls), a straight hallway cell, a corner, a junction, an isolated cell.
    tiny = np.array(
        [
            [1, 1, 1, 1, 1, 1, 1],
            [1, 0, 0, 0, 0, 1, 1],
            [1, 1, 0, 1, 1, 1, 1],
            [1, 1, 0, 0, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1],
        ]
    )
    # (1,1) dead end, (1,2) junction, (1,3) horizontal hallway: left out, (1,4) dead end, (2,2) vertical hallway:
    # left out, (3,2) corner, (3,3) dead end, (3,6) isolated on the border (outside the grid counts as a wall).
    assert [tuple(c) for c in od.vertex_cells(tiny)] == [(1, 1), (1, 2), (1, 4), (3, 2), (3, 3), (3, 6)]


def test_navigate_goals_lie_on_vertex_cells_only(navigate):
    grid = od.MazeGrid(gym.make("pointmaze-medium-v0"))
    cells = {tuple(c) for c in navigate.goal_cells.reshape(-1, 2)}  # the first goals and every redrawn one
    assert all(_vertex_rule(grid.maze_map, i, j) for i, j in cells)
    hallways = {tuple(c) for c in grid.free_cells} - {tuple(c) for c in grid.vertex_cells}
    assert len(hallways) == 5 and not cells & hallways
    assert len(cells) >= 15  # many of the 21 vertex cells drawn
    more = od.simulate("pointmaze-medium-navigate-v0", num_episodes=200, episode_length=1, seed=9, progress=False)
    assert {tuple(c) for c in more.init_cells} & hallways  # starts: any free cell, hallways included
    assert not {tuple(c) for c in more.goal_cells.reshape(-1, 2)} & hallways


def test_navigate_goals_are_redrawn_when_reached(navigate):
    changed = np.abs(np.diff(navigate.goals, axis=1)).sum(-1) > 0  # (E, T): goal differs after step t
    np.testing.assert_array_equal(changed, navigate.success)  # redrawn exactly after each success
    assert navigate.success.sum() >= 2 * navigate.num_episodes  # several goals reached per episode
    dist = np.linalg.norm(navigate.qpos[:, 1:] - navigate.goals[:, :-1], axis=-1)
    np.testing.assert_array_equal(navigate.success, dist <= 1.0)  # the env's success threshold
    grid = od.MazeGrid(gym.make("pointmaze-medium-v0"))
    cells = grid.xy_to_cell(navigate.goals)
    np.testing.assert_array_equal(cells, navigate.goal_cells)
    assert (grid.maze_map[cells[..., 0], cells[..., 1]] == 0).all()
    offsets = navigate.goals - grid.cell_to_xy(navigate.goal_cells)
    assert np.abs(offsets).max() <= 1.0 and offsets.std() > 0.4  # U(-1, 1) goal noise
    start_offsets = navigate.qpos[:, 0] - grid.cell_to_xy(navigate.init_cells)
    assert np.abs(start_offsets).max() <= 1.0


def test_stitch_goals_are_four_cells_away_and_never_redrawn(stitch):
    np.testing.assert_array_equal(stitch.goals, np.repeat(stitch.goals[:, :1], stitch.goals.shape[1], axis=1))
    env = gym.make("pointmaze-large-v0")
    grid = od.MazeGrid(env)
    for e in range(stitch.num_episodes):
        _, bfs = env.unwrapped.get_oracle_subgoal(grid.cell_to_xy(stitch.init_cells[e]), stitch.goals[e, 0])
        assert bfs[tuple(stitch.init_cells[e])] == 4
    assert len({tuple(c) for c in stitch.goal_cells[:, 0]}) > 10  # many different goals
    assert stitch.success.any()  # some reached, and kept: the goal stays after success
    env.close()


def test_action_noise_is_gaussian_half_and_clipped(stitch, navigate):
    grid = od.MazeGrid(gym.make("pointmaze-large-v0"))
    actions = stitch.actions
    assert actions.dtype == np.float64 and np.abs(actions).max() <= 1.0  # the env steps with float64, as OGBench's
    direction = np.stack([grid.oracle_direction(stitch.qpos[:, t], stitch.goals[:, t]) for t in range(60)], axis=1)
    np.testing.assert_allclose(np.linalg.norm(direction, axis=-1), 1.0, atol=1e-5)  # unit vectors
    d, a = direction.reshape(-1), actions.reshape(-1).astype(np.float64)
    clipped = np.abs(a) == 1.0
    # Clipping: each component hits +-1 with probability P(d + n > 1) + P(d + n < -1).
    for sigma, ok in ((0.5, True), (0.4, False), (0.6, False)):
        p = ndtr((-1 - d) / sigma) + 1 - ndtr((1 - d) / sigma)
        z = (clipped.sum() - p.sum()) / np.sqrt((p * (1 - p)).sum())
        assert (abs(z) < 4) == ok, (sigma, z)
    # Unclipped components: the noise a - d is N(0, sigma) restricted to (-1 - d, 1 - d), tested by KS.
    dd, noise = d[~clipped], a[~clipped] - d[~clipped]
    for sigma, ok in ((0.5, True), (0.45, False), (0.55, False)):
        lo, hi = ndtr((-1 - dd) / sigma), ndtr((1 - dd) / sigma)
        u = (ndtr(noise / sigma) - lo) / (hi - lo)
        assert (stats.kstest(u, "uniform").pvalue > 1e-4) == ok, sigma
    assert 0.2 < clipped.mean() < 0.35 and abs(noise.mean()) < 0.02


def test_generation_is_deterministic_and_uses_the_seed():
    a = od.simulate("pointmaze-medium-stitch-v0", num_episodes=5, episode_length=20, seed=7, progress=False)
    b = od.simulate("pointmaze-medium-stitch-v0", num_episodes=5, episode_length=20, seed=7, progress=False)
    c = od.simulate("pointmaze-medium-stitch-v0", num_episodes=5, episode_length=20, seed=8, progress=False)
    np.testing.assert_array_equal(a.qpos, b.qpos)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.array_equal(a.actions, c.actions)
    assert a.num_train == 5 and a.num_episodes == 5  # 5 // 10 = 0 validation episodes
    full = od.simulate("pointmaze-medium-stitch-v0", num_episodes=5, episode_length=20, seed=7, progress=False,
                       simulate_all=True)  # fmt: skip
    np.testing.assert_array_equal(a.qpos, full.qpos)  # skipping points clear of walls changes nothing


def test_npz_files_have_ogbench_keys_shapes_and_dtypes(written):
    directory, summary = written
    n, length = TINY["num_episodes"], TINY["episode_length"]
    assert summary["episodes"] == n and summary["val_episodes"] == n // 10
    assert not [p for p in directory.iterdir() if "partial" in p.name]  # atomic writes leave no scraps
    for path, episodes in (
        (directory / "pointmaze-medium-stitch-v0.npz", n),
        (directory / "pointmaze-medium-stitch-v0-val.npz", n // 10),
    ):
        with np.load(path) as data:
            assert sorted(data.files) == ["actions", "observations", "qpos", "qvel", "terminals"]
            assert data["observations"].shape == data["actions"].shape == (episodes * length, 2)
            assert data["observations"].dtype == data["actions"].dtype == data["qpos"].dtype == np.float32
            assert data["terminals"].dtype == bool
            np.testing.assert_array_equal(np.flatnonzero(data["terminals"]), np.arange(1, episodes + 1) * length - 1)
            np.testing.assert_array_equal(data["observations"], data["qpos"])


def test_files_load_through_ogbench_and_minari(written):
    directory, _ = written
    n, length = TINY["num_episodes"], TINY["episode_length"]
    env, train, val = ogbench.make_env_and_datasets("pointmaze-medium-stitch-v0", dataset_dir=str(directory))
    assert env.spec.id == "pointmaze-medium-v0"
    assert train["observations"].shape == train["next_observations"].shape == (n * (length - 1), 2)
    assert val["observations"].shape == (n // 10 * (length - 1), 2)
    assert train["terminals"].sum() == n
    steps = np.linalg.norm(train["next_observations"] - train["observations"], axis=-1)
    assert steps.max() <= 0.2 * np.sqrt(2) + 1e-5  # consecutive states only: no jump across episodes
    _, compact, _ = od.load_ogbench("pointmaze-medium-stitch-v0", directory, compact_dataset=True)
    assert compact["valids"].shape == (n * length,)
    # The single-task variant relabels rewards from qpos: the files carry it.
    _, single, _ = ogbench.make_env_and_datasets(
        "pointmaze-medium-stitch-singletask-task1-v0", dataset_dir=str(directory)
    )
    assert single["rewards"].shape == (n * (length - 1),)
    env.close()

    dataset = od.load_ogbench_minari("pointmaze-medium-stitch-v0")
    assert dataset.spec.dataset_id == "ogbench/pointmaze-medium-stitch-v0"
    assert dataset.total_episodes == n and dataset.total_steps == n * (length - 1)
    episode = next(dataset.iterate_episodes([0]))
    first = np.concatenate([train["observations"][: length - 1], train["next_observations"][length - 2 : length - 1]])
    np.testing.assert_allclose(episode.observations, first, atol=1e-5)  # float64 in Minari, float32 in the .npz
    np.testing.assert_array_equal(episode.actions, train["actions"][: length - 1])
    goal = episode.infos["goal"][0]
    np.testing.assert_array_equal(episode.rewards, np.linalg.norm(episode.observations[1:] - goal, axis=-1) <= 1.0)
    assert od.load_ogbench_minari("pointmaze-medium-stitch-v0", "val").total_episodes == n // 10
    again = od.generate_dataset("pointmaze-medium-stitch-v0", directory, progress=False, **TINY)
    assert again["skipped"]


def test_missing_files_fail_with_the_generation_command(tmp_path):
    with pytest.raises(
        OGBenchDatasetMissing, match="python -m envs.ogbench_datasets --env pointmaze-large-navigate-v0"
    ):
        od.load_ogbench("pointmaze-large-navigate-v0", tmp_path)
    with pytest.raises(OGBenchDatasetMissing, match="never downloads.*--env pointmaze-giant-stitch-v0"):
        ogbench.make_env_and_datasets("pointmaze-giant-stitch-v0", dataset_dir=str(tmp_path))  # guarded loader
    with pytest.raises(OGBenchDatasetMissing, match="only the pointmaze datasets"):
        ogbench.download_datasets(["antmaze-large-navigate-v0"], str(tmp_path))
    with pytest.raises(OGBenchDatasetMissing, match="python -m envs.ogbench_datasets --env pointmaze-large-stitch-v0"):
        od.load_ogbench_minari("pointmaze-large-stitch-v0")


def test_cli_writes_the_files(tmp_path, capsys):
    od.main(["--env", "pointmaze-giant-navigate-v0", "--dataset-dir", str(tmp_path), "--num-episodes", "10",
             "--episode-length", "15", "--no-minari"])  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pointmaze-giant-navigate-v0-val.npz",
        "pointmaze-giant-navigate-v0.npz",
    ]
    with np.load(tmp_path / "pointmaze-giant-navigate-v0-val.npz") as data:
        assert data["observations"].shape == (15, 2)
    assert "pointmaze-giant-navigate-v0: 10 + 1 val episodes x 15 steps" in capsys.readouterr().out
