"""IQL (baselines/iql.py) on OGBench pointmaze: OGBench's goal relabelling (baselines.common.OGBenchGoalSampler) and a
tiny end-to-end run on a tiny regenerated dataset, evaluated by OGBench's protocol (envs.ogbench_eval)."""

import re
from dataclasses import replace

import numpy as np
import pytest
import test_df_ogbench
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from baselines import common, iql
from baselines.common import Normalizer, OGBenchGoalSampler
from envs.ogbench_eval import OGBenchEvalResult
from envs.ogbench_tasks import OGBenchDatasetMissing
from envs.records import read_records

# test_df_ogbench's tiny regenerated dataset and its fixtures, shared
ENV, EPISODES, ROWS = test_df_ogbench.ENV, test_df_ogbench.EPISODES, test_df_ogbench.ROWS
dataset_dir, data = test_df_ogbench.dataset_dir, test_df_ogbench.data
LENGTH = ROWS - 1


def tiny_args(dataset_dir, runs_dir, **overrides) -> iql.Args:
    settings = dict(
        env=ENV,
        dataset_dir=str(dataset_dir),
        total_steps=40,
        batch_size=32,
        hidden_dim=16,
        eval_every=20,
        eval_episodes=5,  # periodic: 1 episode per goal
        eval_episodes_per_goal=2,  # final: 2 per goal
        eval_max_steps=20,
        log_every=10,
        checkpoint_every=20,
        runs_dir=str(runs_dir),
        progress=False,
    )
    settings.update(overrides)
    return iql.Args(**settings)


# ------------------------------------------------------------------------------------------- the relabelling


def test_the_task_defaults_are_ogbench_s_gciql_settings_and_maze2d_s_stay_corl_s():
    navigate, stitch, giant = (iql.Args(env=e) for e in (ENV, "pointmaze-large-stitch-v0", "pointmaze-giant-stitch-v0"))
    assert (navigate.expectile, navigate.discount, navigate.actor_p_randomgoal) == (0.9, 0.99, 0.0)
    assert (stitch.expectile, stitch.discount, stitch.actor_p_randomgoal) == (0.9, 0.99, 0.5)
    assert (giant.discount, giant.actor_p_randomgoal) == (0.995, 0.5)
    assert (navigate.value_p_curgoal, navigate.value_p_trajgoal, navigate.value_p_randomgoal) == (0.2, 0.5, 0.3)
    maze2d = iql.Args(env="maze2d-large")
    assert (maze2d.expectile, maze2d.discount) == (0.7, 0.99)
    assert iql.Args(env=ENV, expectile=0.8, discount=0.95).expectile == 0.8  # given values are kept
    assert replace(navigate, env="maze2d-umaze").expectile == 0.9  # once filled in, a value stays


def episode_of(data, rows):
    return data.episode_ids[rows]


def test_goals_come_from_the_current_state_the_same_episode_s_future_or_the_dataset(data):
    normalizer = Normalizer.from_states(data.observations)
    n = 20_000
    last_row = data.episode_starts[data.episode_ids] + data.episode_lengths[data.episode_ids] - 1

    # Only trajectory goals, geometric offsets of mean 1 / (1 - discount) = 5 steps, clipped to the episode's end
    sampler = OGBenchGoalSampler(data, normalizer, discount=0.8, value_p_curgoal=0.0, value_p_trajgoal=1.0,
                                 value_p_randomgoal=0.0, seed=0)  # fmt: skip
    rows, value_rows, actor_rows = sampler.sample_rows(n)
    assert np.all(episode_of(data, value_rows) == episode_of(data, rows))
    assert np.all(value_rows <= last_row[rows])
    at_end = rows == last_row[rows]
    assert np.all(value_rows[~at_end] > rows[~at_end]) and np.all(value_rows[at_end] == rows[at_end])
    far = rows + 30 <= last_row[rows]  # clipping cannot touch an offset of mean 5 there (P(k > 30) = 0.8^30 ~ 1e-3)
    assert (value_rows - rows)[far].mean() == pytest.approx(5.0, rel=0.05)
    # Actor goals (navigate: no random ones): uniform over the rest of the episode, from t + 1 to its last row
    assert np.all(episode_of(data, actor_rows) == episode_of(data, rows))
    assert np.all(actor_rows[~at_end] > rows[~at_end]) and np.all(actor_rows <= last_row[rows])
    fraction = (actor_rows - rows - 1)[far] / (last_row[rows] - rows - 1)[far]
    assert fraction.mean() == pytest.approx(0.5, abs=0.02)

    # OGBench's mix: current state 0.2, same episode's future 0.5, random state 0.3 (of which ~1/12 is the episode)
    sampler = OGBenchGoalSampler(data, normalizer, actor_p_randomgoal=0.5, seed=1)
    rows, value_rows, actor_rows = sampler.sample_rows(n)
    current = value_rows == rows
    same_future = (episode_of(data, value_rows) == episode_of(data, rows)) & (value_rows > rows)
    other_episode = episode_of(data, value_rows) != episode_of(data, rows)
    # (a future goal of an episode's last row is that row itself: OGBench clips to the last state)
    assert current.mean() == pytest.approx(0.2 + 0.5 / LENGTH, abs=0.02)
    assert same_future.mean() == pytest.approx(0.5 * (1 - 1 / LENGTH) + 0.3 / EPISODES / 2, abs=0.02)
    assert other_episode.mean() == pytest.approx(0.3 * (1 - 1 / EPISODES), abs=0.02)
    assert 0 <= value_rows.min() and value_rows.max() < len(data)
    assert (episode_of(data, actor_rows) != episode_of(data, rows)).mean() == pytest.approx(0.5 * 11 / 12, abs=0.02)
    with pytest.raises(ValueError, match="sum to 1"):
        OGBenchGoalSampler(data, normalizer, value_p_curgoal=0.5)


def test_a_batch_holds_the_goal_states_rewards_0_or_minus_1_and_the_actor_s_own_goals(data):
    normalizer = Normalizer.from_states(data.observations)
    assert normalizer.mean.shape == (2,)
    # Two samplers of one seed draw the same rows: the batch of one is checked against the rows of the other
    batch = OGBenchGoalSampler(data, normalizer, seed=3).sample(4096)
    rows, value_rows, actor_rows = OGBenchGoalSampler(data, normalizer, seed=3).sample_rows(4096)

    def decode(inputs):
        return inputs.numpy() * np.tile(normalizer.std, 2) + np.tile(normalizer.mean, 2)

    assert batch.observations.shape == batch.next_observations.shape == batch.actor_observations.shape == (4096, 4)
    np.testing.assert_array_equal(batch.goals.numpy(), data.observations[value_rows])
    np.testing.assert_allclose(decode(batch.observations)[:, :2], data.observations[rows], atol=1e-5)
    np.testing.assert_allclose(decode(batch.observations)[:, 2:], data.observations[value_rows], atol=1e-5)
    np.testing.assert_allclose(decode(batch.next_observations)[:, :2], data.next_observations[rows], atol=1e-5)
    np.testing.assert_allclose(batch.next_observations[:, 2:], batch.observations[:, 2:])  # the same goal
    np.testing.assert_allclose(decode(batch.actor_observations)[:, :2], data.observations[rows], atol=1e-5)
    np.testing.assert_allclose(decode(batch.actor_observations)[:, 2:], data.observations[actor_rows], atol=1e-5)
    np.testing.assert_array_equal(batch.actions.numpy(), data.actions[rows])
    # reward 0 and done exactly where the goal is the current row (OGBench compares indices), else -1
    success = value_rows == rows
    np.testing.assert_array_equal(batch.rewards.numpy(), np.where(success, 0.0, -1.0))
    np.testing.assert_array_equal(batch.dones.numpy(), success.astype(np.float32))


# ------------------------------------------------------------------------------------------------ the script


def random_observations(n=7, seed=0):
    rng = np.random.default_rng(seed)
    return {"observation": rng.uniform(-2, 20, size=(n, 2)), "desired_goal": rng.uniform(-2, 20, size=(n, 2))}


def test_iql_trains_evaluates_records_saves_loads_and_resumes_on_ogbench(dataset_dir, tmp_path):
    record_path = tmp_path / "iql_ogbench.jsonl"
    result = iql.main(tiny_args(dataset_dir, tmp_path / "runs", record=str(record_path)))
    run_dir = result["run_dir"]
    assert run_dir.name.startswith(f"{ENV}__iql__1__") and result["step"] == 40
    final = result["final_eval"]
    assert isinstance(final, OGBenchEvalResult) and final.env_id == ENV
    assert final.task_ids.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5] and final.episode_length == 20
    assert final.seeds == list(range(10))
    checkpoint = torch.load(result["checkpoint"], weights_only=False)
    saved = checkpoint["args"]
    assert (saved["expectile"], saved["discount"], saved["actor_p_randomgoal"]) == (0.9, 0.99, 0.0)
    assert checkpoint["normalizer"]["mean"].shape == (2,)  # OGBench's observation: (x, y)

    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"losses/value_loss", "losses/q_loss", "losses/actor_loss", "charts/SPS", "charts/train_minutes"}
    assert expected | {"eval/success_rate", "eval/success_rate_task5", "eval/time_to_goal"} <= tags
    assert [e.step for e in events.Scalars("eval/success_rate")] == [20, 40]  # periodic, then final
    assert max(e.value for e in events.Scalars("losses/reward")) <= 0.0  # rewards are 0 or -1

    (record,) = read_records(record_path)
    assert record["benchmark"] == "ogbench" and record["method"] == "IQL" and record["env_id"] == ENV
    assert {"success_rate", "success_rate_stderr", "success_rate_task1", "time_to_goal"} <= set(record["metrics"])
    assert record["metrics"]["success_rate"] == final.success_rate
    assert record["episodes"]["task_ids"] == final.task_ids.tolist()
    assert set(record["episodes"]) == {"seeds", "task_ids", "success", "time_to_goal"}
    assert record["train_steps"] == 40 and record["train_minutes"] > 0
    settings = record["settings"]
    assert settings["episodes_per_goal"] == 2 and settings["max_episode_steps"] == 20
    assert settings["checkpoint"] == str(result["checkpoint"]) and settings["value_p_curgoal"] == 0.2

    # The checkpoint's policy acts as the trained one on (x, y) observations, batched or one at a time
    obs = random_observations()
    loaded = iql.load_policy(result["checkpoint"])
    actions = loaded(obs)
    assert actions.shape == (7, 2) and np.all(np.abs(actions) <= 1)
    np.testing.assert_array_equal(actions, result["policy"](obs))
    single, state = loaded.predict({k: v[0] for k, v in obs.items()})
    assert single.shape == (2,) and state is None
    np.testing.assert_allclose(single, actions[0], rtol=1e-5, atol=1e-6)  # other BLAS kernels: a tolerance
    assert not np.allclose(loaded({**obs, "desired_goal": obs["desired_goal"][::-1]}), actions)  # it sees the goal
    with pytest.raises(ValueError, match=r"\(x, y\) position"):
        loaded({"observation": np.zeros((3, 4)), "desired_goal": np.zeros((3, 2))})

    # --eval-only reproduces the final evaluation and records it; the stitch dataset of the maze evaluates too
    again = tiny_args(dataset_dir, tmp_path / "runs", eval_only=True, checkpoint=str(result["checkpoint"]))
    evaluation = iql.main(replace(again, record=str(record_path)))["final_eval"]
    np.testing.assert_array_equal(evaluation.success, final.success)
    np.testing.assert_array_equal(evaluation.time_to_goal, final.time_to_goal)
    assert read_records(record_path)[-1]["episodes"] == record["episodes"]
    stitch = iql.main(replace(again, eval_env="pointmaze-medium-stitch-v0", eval_episodes_per_goal=1))["final_eval"]
    assert stitch.env_id == "pointmaze-medium-stitch-v0" and stitch.num_episodes == 5
    with pytest.raises(ValueError, match="another maze"):
        iql.main(replace(again, eval_env="pointmaze-large-navigate-v0"))
    with pytest.raises(ValueError, match="another maze"):
        iql.main(replace(again, eval_env="maze2d-medium"))

    # Resuming from step 20 gives exactly the networks of the uninterrupted run (OGBench's sampler state included)
    resume = tiny_args(dataset_dir, tmp_path / "b", resume=str(run_dir / "checkpoints" / "step_20.pt"))
    resumed = iql.main(replace(resume, eval_every=0, final_eval_episodes=0))
    other = torch.load(resumed["checkpoint"], weights_only=False)
    assert other["step"] == 40 and other["rng"]["sampler"] == checkpoint["rng"]["sampler"]
    for name, tensor in checkpoint["training_state"]["networks"].items():
        assert torch.equal(tensor, other["training_state"]["networks"][name]), name


def test_a_wrong_task_lists_the_valid_ids_and_a_missing_dataset_names_its_command(tmp_path):
    both = r"valid ids: maze2d: maze2d-umaze-v1, .*OGBench: pointmaze-medium-navigate-v0, .*pointmaze-giant-stitch-v0"
    with pytest.raises(ValueError, match=both):
        iql.main(iql.Args(env="pointmaze-tiny-navigate-v0", runs_dir=str(tmp_path), progress=False))
    with pytest.raises(ValueError, match="pointmaze-giant-stitch-v0"):
        common.resolve_task_id("antmaze-large-navigate-v0")
    command = re.escape(f"python -m envs.ogbench_datasets --env pointmaze-large-stitch-v0 --dataset-dir {tmp_path}")
    with pytest.raises(OGBenchDatasetMissing, match=command):
        iql.main(iql.Args(env="pointmaze-large-stitch-v0", dataset_dir=str(tmp_path), runs_dir=str(tmp_path / "r")))
