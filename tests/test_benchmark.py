"""scripts/benchmark.py: every method through the one shared evaluation, on tiny checkpoints."""

import numpy as np
import pytest

from baselines import iql
from df_agent.presets import MAZE_SUBGOALS


@pytest.fixture(scope="module")
def tiny_iql_checkpoints(tmp_path_factory, tiny_umaze_dataset):
    runs = tmp_path_factory.mktemp("runs")
    common = dict(total_steps=50, batch_size=32, hidden_dim=16, eval_every=0, final_eval_episodes=3, log_every=25)
    single = iql.main(iql.Args(env="maze2d-umaze", save_model=True, runs_dir=str(runs), progress=False, **common))
    multi = iql.main(iql.Args(env="umaze-multi", save_model=True, runs_dir=str(runs), progress=False, **common))
    return single, multi


def test_benchmark_reproduces_each_scripts_own_evaluation(tiny_iql_checkpoints, tmp_path, capsys, load_script):
    benchmark = load_script("benchmark")
    single, multi = tiny_iql_checkpoints
    output = tmp_path / "results.json"
    records = benchmark.main(
        benchmark.Args(
            env="maze2d-umaze",
            episodes=3,
            iql=(str(single["checkpoint"]), str(multi["checkpoint"])),
            output=str(output),
        )
    )
    assert [(r["method"], r["task"]) for r in records] == [("IQL", "maze2d-umaze-v1"), ("IQL", "maze2d-umaze-multi-v1")]
    # same seeds, same deterministic policy: the benchmark's numbers are the training script's final evaluation
    for record, run in zip(records, (single, multi), strict=True):
        np.testing.assert_allclose(record["normalized_score"], run["final_eval"].normalized_score)
        np.testing.assert_allclose(record["success_rate"], run["final_eval"].success_rate)
    assert "| IQL | maze2d-umaze-multi-v1 |" in capsys.readouterr().out
    assert output.exists()


def test_benchmark_refuses_a_checkpoint_of_another_maze(tiny_iql_checkpoints, load_script):
    benchmark = load_script("benchmark")
    single, _ = tiny_iql_checkpoints
    with pytest.raises(SystemExit, match="not on the large maze"):
        benchmark.main(benchmark.Args(env="maze2d-large", episodes=1, iql=(str(single["checkpoint"]),)))
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        benchmark.main(benchmark.Args(env="maze2d-umaze", methods=()))


def test_benchmark_scales_with_expert_and_random_and_writes_records(tmp_path, load_script):
    from envs.records import read_records

    benchmark = load_script("benchmark")
    path = tmp_path / "results" / "b.jsonl"
    rows = benchmark.main(benchmark.Args(env="maze2d-umaze", episodes=2, expert=True, random=True, record=str(path)))
    records = read_records(path)
    assert [(r["method"], r["env_id"]) for r in records] == [(r["method"], r["task"]) for r in rows]
    assert {r["method"] for r in records} == {"expert (waypoints + PD)", "random"} and len(records) == 4
    assert all(r["table"] == "maze2d-umaze" and r["episodes"]["seeds"] == [0, 1] for r in records)
    single = {r["method"]: r["metrics"] for r in records if r["env_id"] == "maze2d-umaze-v1"}
    expert, random = single["expert (waypoints + PD)"], single["random"]
    assert expert["success_rate"] == 1.0 and expert["normalized_score"] > random["normalized_score"] + 50


def test_benchmark_trains_within_budgets_and_records_them(tiny_umaze_dataset, tmp_path, load_script):
    """No IQL checkpoint given: IQL is trained per task within its budget by baselines/iql.py, then evaluated on the
    task it was trained for; records carry the budget and what the training used; TensorBoard has one run per
    (task, method) with the shared tags."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from baselines import common
    from envs.records import read_records

    benchmark = load_script("benchmark")
    path = tmp_path / "benchmark.jsonl"
    args = benchmark.Args(
        env="maze2d-umaze",
        methods=("iql", "expert"),
        episodes=2,
        runs_dir=str(tmp_path / "runs"),
        record=str(path),
        train_minutes_iql=0.02,  # 1.2 s per task; --total-steps is far out of reach
        iql_flags="--hidden-dim 16 --batch-size 32 --total-steps 1000000 --log-every 50 --no-progress",
    )
    rows = benchmark.main(args)
    records = read_records(path)
    pairs = [("iql", "maze2d-umaze-v1"), ("iql", "maze2d-umaze-multi-v1")]
    pairs += [("expert", "maze2d-umaze-v1"), ("expert", "maze2d-umaze-multi-v1")]
    assert [(r["method_id"], r["env_id"]) for r in records] == pairs == benchmark.planned_rows(args)
    assert [(r["method_id"], r["task"]) for r in rows] == pairs
    for record in records[:2]:
        assert record["method"] == "IQL" and record["train_budget_minutes"] == 0.02
        assert 0.02 <= record["train_minutes"] < 0.5
        checkpoint = common.load_checkpoint(record["checkpoint"], "iql")
        assert checkpoint["args"]["env"] == record["env_id"]  # trained for the task it is evaluated on
        assert checkpoint["args"]["hidden_dim"] == 16 and checkpoint["args"]["train_minutes"] == 0.02
        assert 0 < record["train_steps"] == checkpoint["step"] < 1_000_000  # stopped by the budget
    assert records[0]["checkpoint"] != records[1]["checkpoint"]
    for record in records[2:]:
        assert record["train_budget_minutes"] is None and record["train_minutes"] is None
        assert record["checkpoint"] is None and record["train_steps"] is None
    assert all(r["table"] == "maze2d-umaze" for r in records)
    assert all({"command", "machine", "episodes", "metrics"} <= set(r) for r in records)

    for method, env_id in pairs:
        events = EventAccumulator(str(tmp_path / "runs" / "benchmark" / env_id / method))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"eval/normalized_score", "eval/reach_stay_score", "eval/success_rate"} <= tags
        record = next(r for r in records if (r["method_id"], r["env_id"]) == (method, env_id))
        (score,) = events.Scalars("eval/normalized_score")
        assert score.step == 0 and score.value == pytest.approx(record["metrics"]["normalized_score"], rel=1e-5)
        assert ("train/steps" in tags) == (method == "iql")


def test_benchmark_all_plans_every_maze_and_both_tasks(load_script):
    benchmark = load_script("benchmark")
    tasks = [f"maze2d-{maze}{goal}-v1" for maze in ("umaze", "medium", "large") for goal in ("", "-multi")]
    plan = benchmark.planned_rows(benchmark.Args(all=True))
    assert sorted({env_id for _, env_id in plan}) == sorted(tasks)
    rows = ["df", "df-hold", "diffuser", "diffuser-actions", "iql", "cql", "mppi", "expert", "random"]
    assert sorted(plan) == sorted((row, env_id) for row in rows for env_id in tasks)
    jobs = benchmark.plan(benchmark.Args(all=True))
    # DF (pretrained by default) and Diffuser: one model per maze for both tasks; IQL and CQL: one per task
    assert [(j.maze, j.tasks) for j in jobs if j.method == "df"] == [
        (maze, (f"maze2d-{maze}-v1", f"maze2d-{maze}-multi-v1")) for maze in ("umaze", "medium", "large")
    ]
    assert {j.source for j in jobs if j.method == "df"} == {"pretrained"}
    assert [len(j.tasks) for j in jobs if j.method in ("iql", "cql")] == [1] * 12
    assert {j.source for j in jobs if j.method in ("diffuser", "iql", "cql")} == {"train"}

    # a chosen subset, DF trained from scratch, the scripts' flags checked before anything runs
    args = benchmark.Args(all=True, methods=("df-hold", "expert"), df="train")
    assert benchmark.planned_rows(args)[:2] == [("df-hold", "maze2d-umaze-v1"), ("df-hold", "maze2d-umaze-multi-v1")]
    assert {j.source for j in benchmark.plan(args) if j.method == "df"} == {"train"}
    with pytest.raises(SystemExit):
        benchmark.plan(benchmark.Args(all=True, iql_flags="--no-such-flag 1"))
    with pytest.raises(SystemExit, match="one maze"):
        benchmark.plan(benchmark.Args(all=True, df="runs/x/agent.pt"))
    # without --methods, the old selection flags still run exactly what they name
    assert {row for row, _ in benchmark.planned_rows(benchmark.Args(env="umaze", expert=True, random=True))} == {
        "expert",
        "random",
    }


def test_benchmark_evaluates_df_with_the_scripts_subgoals(tiny_umaze_dataset, tmp_path, load_script):
    """The DF rows plan as scripts/df_maze2d.py's evaluation does: guided toward the maze's default data-graph
    subgoals (built from the maze's dataset, here the tiny one), in line of sight as umaze's are, or toward the goal
    with --df-subgoal-distance 0."""
    from envs.records import read_records

    benchmark = load_script("benchmark")
    umaze_distance = MAZE_SUBGOALS["umaze"].distance
    for distance, expected, in_sight in ((None, umaze_distance, True), (0.0, None, None)):
        path = tmp_path / f"df_{distance}.jsonl"
        args = benchmark.Args(
            env="maze2d-umaze", methods=("df",), episodes=1, runs_dir=str(tmp_path / "runs"), record=str(path),
            df_subgoal_distance=distance,
        )  # fmt: skip
        benchmark.main(args)
        records = read_records(path)
        assert [r["env_id"] for r in records] == ["maze2d-umaze-v1", "maze2d-umaze-multi-v1"]
        assert all(r["settings"].get("subgoal_distance") == expected for r in records)
        assert expected is None or all(r["settings"]["subgoal_cell"] == 0.25 for r in records)
        assert all(r["settings"].get("subgoal_line_of_sight") is in_sight for r in records)
