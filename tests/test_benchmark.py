"""scripts/benchmark.py: every method through the one shared evaluation, on tiny checkpoints."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

from baselines import iql


def load_script():
    path = pathlib.Path(__file__).parents[1] / "scripts" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_iql_checkpoints(tmp_path_factory, tiny_umaze_dataset):
    runs = tmp_path_factory.mktemp("runs")
    common = dict(total_steps=50, batch_size=32, hidden_dim=16, eval_every=0, final_eval_episodes=3, log_every=25)
    single = iql.main(iql.Args(env="maze2d-umaze", save_model=True, runs_dir=str(runs), progress=False, **common))
    multi = iql.main(iql.Args(env="umaze-multi", save_model=True, runs_dir=str(runs), progress=False, **common))
    return single, multi


def test_benchmark_reproduces_each_scripts_own_evaluation(tiny_iql_checkpoints, tmp_path, capsys):
    benchmark = load_script()
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


def test_benchmark_refuses_a_checkpoint_of_another_maze(tiny_iql_checkpoints):
    benchmark = load_script()
    single, _ = tiny_iql_checkpoints
    with pytest.raises(SystemExit, match="not on the large maze"):
        benchmark.main(benchmark.Args(env="maze2d-large", episodes=1, iql=(str(single["checkpoint"]),)))
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        benchmark.main(benchmark.Args(env="maze2d-umaze"))


def test_benchmark_scales_with_expert_and_random_and_writes_records(tmp_path):
    from envs.records import read_records

    benchmark = load_script()
    path = tmp_path / "results" / "b.jsonl"
    rows = benchmark.main(benchmark.Args(env="maze2d-umaze", episodes=2, expert=True, random=True, record=str(path)))
    records = read_records(path)
    assert [(r["method"], r["env_id"]) for r in records] == [(r["method"], r["task"]) for r in rows]
    assert {r["method"] for r in records} == {"expert (waypoints + PD)", "random"} and len(records) == 4
    assert all(r["table"] == "maze2d-umaze" and r["episodes"]["seeds"] == [0, 1] for r in records)
    expert, random = records[0]["metrics"], records[1]["metrics"]
    assert expert["success_rate"] == 1.0 and expert["normalized_score"] > random["normalized_score"] + 50
