"""The OGBench evaluation (envs/ogbench_eval.py): protocol, per-goal bookkeeping, seeds, records and tags."""

import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from envs.evaluation import evaluate, log_evaluation
from envs.expert import WaypointExpert
from envs.ogbench_eval import (
    OGBenchEvalResult,
    OGBenchOracle,
    RandomPolicy,
    evaluate_ogbench,
    main,
    make_eval_env,
    reset_episode,
)
from envs.ogbench_tasks import evaluation_tasks, make_ogbench_env
from envs.records import append_record, make_record, read_records

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_results  # noqa: E402

MEDIUM = "pointmaze-medium-navigate-v0"


@pytest.fixture(scope="module")
def oracle():
    return OGBenchOracle(MEDIUM)


@pytest.fixture(scope="module")
def oracle_result(oracle):
    return evaluate_ogbench(oracle, MEDIUM, episodes_per_goal=2, seed=7, progress=False)


@pytest.mark.parametrize("maze", ["medium", "large", "giant"])
def test_the_oracle_reaches_every_goal(maze):
    env_id = f"pointmaze-{maze}-stitch-v0"
    result = evaluate_ogbench(OGBenchOracle(env_id), env_id, episodes_per_goal=1, seed=3, progress=False)
    assert result.num_episodes == 5 and result.task_ids.tolist() == [1, 2, 3, 4, 5]
    assert result.success.all(), str(result)
    assert result.episode_length == 1000
    assert ((result.time_to_goal > 20) & (result.time_to_goal < 1000)).all()  # it walks, and ends at the goal


def test_oracle_metrics_and_layout(oracle_result):
    result = oracle_result
    assert result.seeds == list(range(7, 17)) and result.task_ids.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    m = result.metrics()
    assert m["success_rate"] == 1.0 and m["success_rate_stderr"] == 0.0
    assert all(m[f"success_rate_task{k}"] == 1.0 for k in range(1, 6))
    assert m["time_to_goal"] == pytest.approx(result.time_to_goal.mean())
    assert m["time_to_goal_task2"] == pytest.approx(result.time_to_goal[2:4].mean())
    np.testing.assert_array_equal(result.returns, 1.0)
    assert result.seconds > 0 and m["episodes_per_second"] == pytest.approx(10 / result.seconds)


def test_random_mostly_fails():
    result = evaluate_ogbench(RandomPolicy(0), MEDIUM, episodes_per_goal=2, seed=0, progress=False)
    assert result.success_rate <= 0.2
    np.testing.assert_array_equal(result.time_to_goal[~result.success], 1000)  # never reached: the episode length


class OnlyGoal:
    """The oracle on test goal ``task_id`` (recognised from the desired goal), standing still on the others; it
    records what it is shown."""

    def __init__(self, oracle, task_id):
        goals = np.array([task["goal_xy"] for task in evaluation_tasks(MEDIUM)])
        self.oracle, self.task_id, self.goals = oracle, task_id, goals
        self.shown, self.resets = [], []

    def reset(self, num_envs):
        self.resets.append(num_envs)

    def __call__(self, obs):
        self.shown.append({key: value.copy() for key, value in obs.items()})
        nearest = np.linalg.norm(obs["desired_goal"][:, None] - self.goals[None], axis=-1).argmin(axis=1) + 1
        return np.where((nearest == self.task_id)[:, None], self.oracle(obs), 0.0)


def test_per_goal_bookkeeping(oracle):
    policy = OnlyGoal(oracle, task_id=3)
    result = evaluate_ogbench(policy, MEDIUM, episodes_per_goal=3, seed=0, max_episode_steps=300, progress=False)
    assert result.success_rate == pytest.approx(0.2)
    assert result.metrics()["success_rate_task3"] == 1.0
    assert [result.metrics()[f"success_rate_task{k}"] for k in (1, 2, 4, 5)] == [0.0] * 4
    assert result.success_rate_stderr == pytest.approx(np.std([1] * 3 + [0] * 12, ddof=1) / np.sqrt(15))
    np.testing.assert_array_equal(result.success, result.task_ids == 3)
    assert (result.time_to_goal[result.task_ids != 3] == 300).all() and result.episode_length == 300
    assert policy.resets == [3] * 5  # one batch of all 3 episodes per goal
    # the dict the policy sees: 2-D positions, the goal of its test task (+- OGBench's noise of 1), the velocity
    first = policy.shown[0]
    assert {key: value.shape for key, value in first.items()} == {
        "observation": (3, 2), "achieved_goal": (3, 2), "desired_goal": (3, 2), "qvel": (3, 2)
    }  # fmt: skip
    np.testing.assert_array_equal(first["observation"], first["achieved_goal"])
    assert np.abs(first["desired_goal"] - policy.goals[0]).max() <= 1.0
    assert np.abs(first["observation"] - evaluation_tasks(MEDIUM)[0]["init_xy"]).max() <= 1.0


def test_an_ended_episode_keeps_showing_its_last_observation(oracle):
    """Episodes of a batch end at different steps; the ended ones are not restarted in the policy's view."""
    policy = OnlyGoal(oracle, task_id=1)
    result = evaluate_ogbench(policy, MEDIUM, episodes_per_goal=3, seed=0, task_ids=(1,), progress=False)
    assert result.success.all() and len(set(result.time_to_goal)) > 1
    assert len(policy.shown) == result.time_to_goal.max()  # the batch ran until its last episode ended
    positions = np.stack([obs["observation"] for obs in policy.shown])  # (steps, 3, 2)
    ended_early = [(i, int(steps)) for i, steps in enumerate(result.time_to_goal) if steps < len(positions)]
    assert ended_early
    for i, steps in ended_early:
        # after its last step (shown[steps] on) the episode shows where it ended, within 1.0 of its goal
        final = positions[steps, i]
        assert (positions[steps:, i] == final).all() and not (positions[steps - 1, i] == final).all()
        assert np.linalg.norm(final - policy.shown[0]["desired_goal"][i]) <= 1.0


def test_a_policy_that_takes_active_is_told_which_episodes_go_on(oracle):
    """A policy whose ``act`` takes ``active`` (the Agent) learns which envs of the batch still run, so it can skip
    planning for the ended ones; its actions for them are not executed. Results match a policy without it."""

    class Masked(OnlyGoal):
        def act(self, obs, active):
            self.masks.append(active.copy())
            actions = self(obs)
            return np.where(active[:, None], actions, np.nan)  # NaN for ended envs must not reach the env

    policy = Masked(oracle, task_id=1)
    policy.masks = []
    result = evaluate_ogbench(policy, MEDIUM, episodes_per_goal=3, seed=0, task_ids=(1,), progress=False)
    masks = np.stack(policy.masks)  # (steps, 3)
    assert masks[0].all() and len(masks) == result.time_to_goal.max()
    for i, steps in enumerate(result.time_to_goal.astype(int)):
        assert masks[:steps, i].all() and not masks[steps:, i].any()  # live until its success step, then not
    plain = evaluate_ogbench(OnlyGoal(oracle, task_id=1), MEDIUM, 3, seed=0, task_ids=(1,), progress=False)
    np.testing.assert_array_equal(result.time_to_goal, plain.time_to_goal)
    np.testing.assert_array_equal(result.success, plain.success)


def test_batches_of_fewer_envs_and_a_subset_of_goals(oracle):
    policy = OnlyGoal(oracle, task_id=3)
    result = evaluate_ogbench(policy, MEDIUM, 3, seed=0, num_envs=2, task_ids=(3,), progress=False)
    assert policy.resets == [2, 2] and result.seeds == [6, 7, 8]  # goal 3's seeds of the full evaluation
    assert "(task3 100%)" in str(result)  # only the goal evaluated is listed
    assert result.success.all() and (result.task_ids == 3).all()


def test_seeds_reproduce_exactly_and_fix_the_start(oracle, oracle_result):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    noisy = evaluate_ogbench(RandomPolicy(5), MEDIUM, 1, seed=40, max_episode_steps=50, progress=False)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # the caller's np.random is left alone
    again = evaluate_ogbench(RandomPolicy(5), MEDIUM, 1, seed=40, max_episode_steps=50, progress=False)
    assert noisy.seeds == again.seeds == [40, 41, 42, 43, 44]
    # same seed, other batching: one env at a time gives exactly the same episodes (the oracle ignores its batch)
    single = evaluate_ogbench(oracle, MEDIUM, episodes_per_goal=2, seed=7, num_envs=1, progress=False)
    np.testing.assert_array_equal(single.time_to_goal, oracle_result.time_to_goal)
    # episode (goal k, seed s) starts where reset_episode puts it, and other seeds start elsewhere
    recorder = OnlyGoal(oracle, task_id=0)
    evaluate_ogbench(recorder, MEDIUM, episodes_per_goal=2, seed=11, max_episode_steps=1, progress=False)
    env = make_eval_env(MEDIUM)
    starts = [reset_episode(env, task_id=k, seed=11 + 2 * (k - 1) + i) for k in range(1, 6) for i in range(2)]
    shown = [(batch["observation"][i], batch["desired_goal"][i]) for batch in recorder.shown for i in range(2)]
    for (obs, info), (position, goal) in zip(starts, shown, strict=True):
        np.testing.assert_array_equal(obs, position)
        np.testing.assert_array_equal(info["goal"], goal)
    assert not np.array_equal(reset_episode(env, 1, seed=12)[0], reset_episode(env, 1, seed=13)[0])


def test_the_protocol_is_ogbench_s_own_loop(oracle):
    """OGBench's env, driven by hand with np.random seeded as our env seeds it, ends each episode at the same step."""
    result = evaluate_ogbench(oracle, MEDIUM, episodes_per_goal=1, seed=2, task_ids=(2, 5), progress=False)
    for task_id, seed, steps in zip(result.task_ids, result.seeds, result.time_to_goal, strict=True):
        env = make_ogbench_env(MEDIUM)
        np.random.seed(seed)
        env.action_space.seed(seed)
        ob, info = env.reset(seed=seed, options=dict(task_id=int(task_id)))
        for taken in range(1, 1001):
            action = oracle({"observation": ob[None], "desired_goal": info["goal"][None]})[0]
            ob, _, terminated, truncated, step_info = env.step(np.clip(action, -1, 1))
            if terminated or truncated or taken == 1000:
                break
        assert step_info["success"] == 1.0 and terminated and taken == steps


def test_bad_env_ids_and_policies_are_clear_errors(oracle):
    with pytest.raises(ValueError, match=r"unknown OGBench task 'pointmaze-tiny-v0'.*pointmaze-medium-navigate-v0"):
        evaluate_ogbench(oracle, "pointmaze-tiny-v0", 1, progress=False)
    with pytest.raises(ValueError, match="maze2d task.*envs.evaluation.evaluate"):
        evaluate_ogbench(oracle, "maze2d-umaze-v1", 1, progress=False)
    with pytest.raises(ValueError, match="task_ids"):
        evaluate_ogbench(oracle, MEDIUM, 1, task_ids=(6,), progress=False)
    with pytest.raises(ValueError, match=r"shape \(2,\).*expected \(1, 2\)"):
        evaluate_ogbench(lambda obs: np.zeros(2), MEDIUM, 1, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ogbench(lambda obs: np.full((1, 2), np.nan), MEDIUM, 1, progress=False)
    with pytest.raises(TypeError, match="callable"):
        evaluate_ogbench(object(), MEDIUM, 1, progress=False)
    with pytest.raises(SystemExit):
        main(["--env", "pointmaze-tiny-v0", "--no-progress"])


def test_tensorboard_tags_beside_maze2d(oracle_result, tmp_path):
    writer = SummaryWriter(tmp_path)
    log_evaluation(writer, oracle_result, global_step=4)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/success_rate", "eval/success_rate_stderr", "eval/time_to_goal", "eval/episodes_per_second"} <= tags
    assert {f"eval/success_rate_task{k}" for k in range(1, 6)} <= tags
    (event,) = events.Scalars("eval/time_to_goal")
    assert event.step == 4 and event.value == pytest.approx(oracle_result.mean_time_to_goal)


def test_records_and_make_results(oracle_result, tmp_path):
    path = append_record(tmp_path / "results" / "ogbench.jsonl", make_record("oracle", oracle_result, {"a": 1}))
    (record,) = read_records(path)
    assert record["benchmark"] == "ogbench" and record["env_id"] == MEDIUM
    assert record["metrics"]["success_rate_task3"] == 1.0 and record["episodes"]["task_ids"][:3] == [1, 1, 2]
    assert record["episodes"]["seeds"] == oracle_result.seeds and record["machine"]["packages"]["ogbench"]
    np.testing.assert_array_equal(record["episodes"]["time_to_goal"], oracle_result.time_to_goal)
    # make_results tabulates the maze2d records, and the OGBench ones in their own section only
    maze2d = evaluate(WaypointExpert("umaze"), "maze2d-umaze", num_episodes=2, progress=False)
    append_record(tmp_path / "results" / "benchmark.jsonl", make_record("expert", maze2d, table="umaze"))
    text = make_results.main(
        make_results.Args(
            records=str(tmp_path / "results" / "*.jsonl"),
            output=str(tmp_path / "RESULTS.md"),
            figures=str(tmp_path / "figures"),
        )
    )
    maze2d_part, ogbench_part = text.split("## OGBench pointmaze")
    assert "## umaze" in maze2d_part and "maze2d-umaze" in maze2d_part and MEDIUM not in maze2d_part
    assert f"| oracle | {MEDIUM} | 100.0 ± 0.0%" in ogbench_part


def test_cli_runs_and_writes_a_record(tmp_path, capsys):
    record = tmp_path / "r.jsonl"
    result = main(["--env", MEDIUM, "--policy", "oracle", "--episodes-per-goal", "1", "--no-progress",
                   "--record", str(record)])  # fmt: skip
    assert isinstance(result, OGBenchEvalResult) and result.success_rate == 1.0
    assert "success 100.0" in capsys.readouterr().out
    (saved,) = read_records(record)
    assert saved["method"] == "oracle (reference)" and saved["settings"]["episodes_per_goal"] == 1


def test_make_results_summarises_the_latest_full_test_of_df_per_dataset():
    def record(method, success, date, seeds):
        metrics = {"success_rate": success, "success_rate_stderr": 0.01, "time_to_goal": 300.0}
        metrics.update({f"success_rate_task{k}": success for k in range(1, 6)})
        return {"method": method, "env_id": MEDIUM, "metrics": metrics, "episodes": {"seeds": list(seeds)},
                "date": date, "commit": "abcdef0123"}  # fmt: skip

    older = record("Diffusion Forcing (a)", 0.5, "2026-12-01T00:00:00", range(250))
    newer = record("Diffusion Forcing (b)", 0.75, "2026-12-02T00:00:00", range(250))
    held_out = record("Diffusion Forcing (c)", 0.25, "2026-12-03T00:00:00", range(1000, 1050))
    oracle = record("oracle (reference)", 1.0, "2026-12-04T00:00:00", range(250))
    text = make_results.ogbench_latest_tests([older, newer, held_out, oracle])
    rows = [line for line in text.splitlines() if line.startswith(f"| {MEDIUM}")]
    assert rows == [
        f"| {MEDIUM} | 75.0 ± 1.0% | 75 / 75 / 75 / 75 / 75 | 300 | - | QRL 82% / 53% | 2026-12-02, abcdef0 |"
    ]
    assert make_results.ogbench_latest_tests([held_out, oracle]) == ""
    # our IQL's latest full test on the dataset goes beside, with its training time; its held-out runs do not
    iql = {**record("IQL", 0.2, "2026-12-05T00:00:00", range(250)), "train_minutes": 25.0}
    iql_held_out = record("IQL", 0.9, "2026-12-06T00:00:00", range(1000, 1050))
    text = make_results.ogbench_latest_tests([newer, iql, iql_held_out])
    (row,) = [line for line in text.splitlines() if line.startswith(f"| {MEDIUM}")]
    assert "| 300 | 20.0% (25 min) | QRL 82% / 53% |" in row
