import os

import minari
import numpy as np
import pytest
from minari.dataset._storages.hdf5_storage import HDF5Storage
from minari.storage.datasets_root_dir import get_dataset_path

import envs
from envs import datasets, generation
from envs.datasets import DatasetError, generate_dataset, load_dataset, local_dataset_id, public_dataset_id
from envs.tasks import GOAL_RADIUS

NUM_STEPS = 3000


@pytest.fixture(scope="module")
def umaze_dataset():
    return generate_dataset("umaze", num_steps=NUM_STEPS, seed=1, num_chains=4, overwrite=True, progress=False)


def test_generated_dataset_loads_with_minari(umaze_dataset):
    dataset = minari.load_dataset(local_dataset_id("umaze"))
    assert dataset.total_steps == NUM_STEPS
    assert dataset.total_episodes == umaze_dataset.total_episodes > 4
    assert dataset.storage.metadata["ref_min_score"] == envs.get_task("maze2d-umaze").ref_min_score
    assert dataset.storage.metadata["ref_max_score"] == envs.get_task("maze2d-umaze").ref_max_score
    assert minari.get_normalized_score(dataset, np.array([161.86])) == pytest.approx(1.0)
    assert dataset.spec.env_spec.id == "maze2d-umaze-v1"


def test_episodes_are_split_at_the_goals(umaze_dataset):
    cut_short = 0
    for episode in umaze_dataset.iterate_episodes():
        obs = episode.observations
        n = len(episode.actions)
        assert obs["observation"].shape == (n + 1, 4) and len(episode.rewards) == n
        assert episode.truncations[-1] and not episode.truncations[:-1].any() and not episode.terminations.any()
        assert (np.abs(episode.actions) <= 1).all()
        goal = obs["desired_goal"][0]
        np.testing.assert_array_equal(obs["desired_goal"], np.tile(goal, (n + 1, 1)))
        distance = np.linalg.norm(obs["achieved_goal"] - goal, axis=-1)
        np.testing.assert_array_equal(episode.rewards, (distance[1:] <= GOAL_RADIUS).astype(float))
        # An episode ends when the goal is reached (Minari's 0.45), at the task's length, or at the end of a run;
        # never earlier.
        assert (distance[1:-1] > datasets.SPLIT_RADIUS).all()
        if distance[-1] > datasets.SPLIT_RADIUS and n < envs.get_task("maze2d-umaze").max_episode_steps:
            cut_short += 1
    assert cut_short <= 4  # only where one of the 4 runs ends


def test_observations_follow_from_actions_through_the_simulator(umaze_dataset):
    env = envs.make("maze2d-umaze").unwrapped
    env.reset(seed=0)
    for episode in umaze_dataset.sample_episodes(3):
        states = episode.observations["observation"]
        for t in range(0, len(episode.actions), 7):
            env.point_env.set_state(states[t, :2], states[t, 2:])
            obs, *_ = env.step(episode.actions[t])
            np.testing.assert_allclose(obs["observation"], states[t + 1], atol=1e-9)


def test_loader_returns_the_local_dataset_and_never_downloads(umaze_dataset):
    assert load_dataset("maze2d-umaze-multi", generate=False).spec.dataset_id == local_dataset_id("umaze")
    with pytest.raises(DatasetError, match="does not download.*python -m envs.datasets --maze umaze"):
        load_dataset("maze2d-umaze", source="public")
    with pytest.raises(DatasetError, match="python -m envs.datasets --maze medium"):
        load_dataset("maze2d-medium", generate=False)
    with pytest.raises(DatasetError, match="already exists"):
        generate_dataset("umaze", num_steps=10, progress=False)


def test_loader_prefers_a_public_dataset_on_disk():
    generate_dataset("large", num_steps=500, num_chains=2, dataset_id=public_dataset_id("large"), progress=False)
    assert load_dataset("maze2d-large", generate=False).spec.dataset_id == public_dataset_id("large")
    with pytest.raises(DatasetError, match="missing"):
        load_dataset("maze2d-large", source="local", generate=False)


def test_an_interrupted_generation_leaves_nothing_that_loads(monkeypatch):
    real_update = HDF5Storage.update_episodes

    def update_then_die(self, episodes):
        real_update(self, list(episodes)[:3])  # part of the data reaches the disk, then the user hits Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(HDF5Storage, "update_episodes", update_then_die)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset("medium", num_steps=800, num_chains=2, progress=False)
    assert not get_dataset_path(local_dataset_id("medium")).exists()
    assert local_dataset_id("medium") not in minari.list_local_datasets()
    scratch = get_dataset_path().parent / f".{get_dataset_path().name}.partial"
    assert not scratch.exists() or not os.listdir(scratch)
    with pytest.raises(DatasetError, match="missing"):
        load_dataset("maze2d-medium", generate=False)


def test_a_corrupt_dataset_gives_a_clear_error():
    dataset_id = "df-agent/pointmaze/corrupt-v2"
    generate_dataset("umaze", num_steps=200, num_chains=1, dataset_id=dataset_id, progress=False)
    data_file = get_dataset_path(dataset_id) / "data" / "main_data.hdf5"
    data_file.write_bytes(data_file.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="corrupt.*--overwrite"):
        datasets.load_local(dataset_id)


def test_unknown_maze_is_refused():
    with pytest.raises(ValueError, match="valid mazes"):
        generate_dataset("huge", num_steps=10)


def test_transitions_flatten_the_dataset_and_are_cached(umaze_dataset):
    from envs.datasets import load_transitions

    data = load_transitions("maze2d-umaze", generate=False, progress=False)
    assert len(data) == NUM_STEPS and data.observations.shape == (NUM_STEPS, 4)
    assert len(data.episode_lengths) == umaze_dataset.total_episodes
    episode = next(umaze_dataset.iterate_episodes([5]))
    rows = slice(data.episode_starts[5], data.episode_starts[5] + data.episode_lengths[5])
    np.testing.assert_allclose(data.actions[rows], episode.actions)
    np.testing.assert_allclose(data.next_observations[rows], episode.observations["observation"][1:], rtol=1e-6)
    # Episodes of one run continue each other: 4 runs give 4 continuous segments.
    assert len(np.unique(data.segment_ids)) == 4
    same_segment = data.segment_ids[1:] == data.segment_ids[:-1]
    np.testing.assert_array_equal(data.observations[1:][same_segment], data.next_observations[:-1][same_segment])
    assert (get_dataset_path(local_dataset_id("umaze")) / "df_agent_transitions.npz").exists()
    again = load_transitions("maze2d-umaze", generate=False, progress=False)
    np.testing.assert_array_equal(again.observations, data.observations)


def test_first_use_generation_is_done_once_across_concurrent_loaders():
    import shutil
    import threading

    local = local_dataset_id("medium")
    shutil.rmtree(get_dataset_path(local), ignore_errors=True)
    loaded = {}
    with datasets.generation_lock(local):  # another process is generating it
        waiter = threading.Thread(target=lambda: loaded.update(dataset=load_dataset("maze2d-medium", progress=False)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive()  # blocked on the lock, not generating its own copy
        generate_dataset("medium", num_steps=2000, num_chains=4, progress=False)
    waiter.join(timeout=60)
    assert not waiter.is_alive()
    assert loaded["dataset"].total_steps == 2000  # it loaded the other generator's dataset (a new one has 2M steps)


def test_actions_are_the_controllers_plus_noise_of_std_one_half_clipped_to_the_action_range(monkeypatch):
    """D4RL's recipe: action = clip(controller + N(0, 0.5^2), -1, 1). With the controller's own action held at 0,
    every recorded action is clip(N(0, 0.25)): by hand, its median absolute value is 0.5 * 0.6745 (unaffected by
    the clip) and P(|n| >= 1) = 2 * (1 - Phi(2)) = 4.55% of the actions sit exactly on a bound."""

    class ZeroController(generation.WaypointController):
        def act(self, positions, velocities):
            _, solved = super().act(positions, velocities)
            return np.zeros_like(positions), solved

    monkeypatch.setattr(generation, "WaypointController", ZeroController)
    actions = generation.simulate("umaze", num_steps=8000, seed=0, num_chains=16, progress=False).actions.reshape(-1)
    assert np.abs(actions).max() == 1.0  # clipped, and the clip is reached
    assert np.median(np.abs(actions)) / 0.6745 == pytest.approx(0.5, abs=0.03)  # robust estimate of the std
    assert np.mean(np.abs(actions) == 1.0) == pytest.approx(0.0455, abs=0.01)


def test_goals_are_free_cells_plus_uniform_noise_of_one_tenth():
    """Each goal is a uniformly drawn free cell of the maze (the single-goal task's goal cell included) plus
    U(-0.1, 0.1) per axis: offsets within 0.1 of the cell centre, mean 0, standard deviation 0.1 / sqrt(3)."""
    maze = envs.Maze.from_name("umaze")
    rollouts = datasets.simulate("umaze", num_steps=20000, seed=0, num_chains=64, progress=False)
    goals = np.unique(rollouts.goals.reshape(-1, 2), axis=0)  # every goal pursued, once each
    assert len(goals) > 150
    cells = maze.xy_to_cell(goals)
    # umaze's free cells, read off D4RL's layout "#####\#GOO#\###O#\#OOO#\#####" by hand
    assert {tuple(c) for c in cells} == {(1, 1), (1, 2), (1, 3), (2, 3), (3, 1), (3, 2), (3, 3)}
    counts = np.unique(cells, axis=0, return_counts=True)[1]
    assert counts.min() > 0.6 * len(goals) / 7  # about uniform over the 7 cells (measured: 38-52 of ~320)
    offsets = goals - maze.cell_to_xy(cells)
    assert np.abs(offsets).max() <= 0.1 and np.abs(offsets).max() > 0.09
    assert np.abs(offsets.mean(axis=0)).max() < 0.015
    np.testing.assert_allclose(offsets.std(axis=0), 0.1 / np.sqrt(3), atol=0.012)
