import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.evaluation import evaluate
from envs.expert import WaypointExpert
from envs.records import append_record, machine, make_record, read_records

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_results  # noqa: E402


@pytest.fixture(scope="module")
def results():
    expert = evaluate(WaypointExpert("umaze"), "maze2d-umaze", num_episodes=3, seed=100, progress=False)
    still = evaluate(lambda obs: np.zeros((len(obs["observation"]), 2)), "maze2d-umaze", 3, seed=100, progress=False)
    return expert, still


def test_a_record_holds_metrics_episodes_command_commit_and_machine(results, tmp_path):
    expert, _ = results
    path = append_record(tmp_path / "r" / "x.jsonl", make_record("expert", expert, {"k": 1}, table="T"))
    append_record(path, make_record("expert", expert))
    first, second = read_records(path)
    assert first["table"] == "T" and "table" not in second and first["settings"] == {"k": 1}
    assert first["metrics"]["normalized_score"] == pytest.approx(expert.normalized_score)
    assert first["metrics"]["reach_stay_score"] == pytest.approx(expert.reach_stay_score)
    assert first["episodes"]["seeds"] == [100, 101, 102]
    np.testing.assert_array_equal(first["episodes"]["returns"], expert.returns)
    np.testing.assert_array_equal(first["episodes"]["time_to_goal"], expert.time_to_goal)
    assert first["machine"]["packages"]["torch"] and first["machine"]["cpu_count"] >= 1
    assert first["command"] and first["date"][:2] == "20"
    # the commit is this checkout's (the tests run inside the repository)
    assert first["commit"] is None or len(first["commit"].removesuffix("-dirty")) == 40


def test_the_machine_names_the_cpu_and_its_generation_from_the_first_processor(tmp_path):
    block = "processor\t: {0}\nvendor_id\t: AuthenticAMD\ncpu family\t: {1}\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(block.format(0, 25) + "cpu MHz\t\t: 2596.1\ncache size\t: 1024 KB\n\n" + block.format(1, 23))
    info = machine(cpuinfo)
    assert info["cpu"] == "AMD EPYC"
    assert info["cpu_detail"] == "family 25, model 17, MHz 2596.1, cache 1024 KB"
    assert "cpu_detail" not in machine(tmp_path / "absent") and machine(tmp_path / "absent")["cpu"]


def test_a_damaged_record_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_records(path)


def test_make_results_writes_one_table_per_group_with_figures(results, tmp_path):
    expert, still = results
    path = tmp_path / "results" / "runs.jsonl"
    append_record(path, make_record("expert", expert, table="umaze"))
    append_record(path, make_record("still", still, table="umaze", note="a point that never moves"))
    append_record(path, make_record("expert", expert))
    text = make_results.main(
        make_results.Args(
            records=str(tmp_path / "results" / "*.jsonl"),
            output=str(tmp_path / "RESULTS.md"),
            figures=str(tmp_path / "figures"),
        )
    )
    assert text == (tmp_path / "RESULTS.md").read_text()
    assert "## umaze" in text and "## Other evaluations" in text and "- a point that never moves" in text
    row = next(line for line in text.splitlines() if line.startswith("| still"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    # the still point never reaches the goal: score of a zero return, success 0%, time to goal = episode length
    assert cells[3] == f"{still.normalized_score:.1f} ± 0.0" and cells[5] == "0%" and cells[6] == "300"
    assert cells[7] == "3 (seeds 100-102)"
    for name in ("table0_scores.png", "table0_time_to_goal.png", "table1_scores.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000


def test_make_results_draws_score_against_training_minutes_from_records_that_state_them(results, tmp_path):
    """Only the summary's test-episode records (seeds 0-99: the benchmark's, the headline DF rows) with training
    minutes (a benchmark's train_minutes or a DF agent's model.minutes) are drawn and listed; the others are not."""
    expert, _ = results
    test = dataclasses.replace(expert, seeds=list(range(100)))
    folder = tmp_path / "results"
    headline, bench, df = make_results.HEADLINE_TABLE, folder / "benchmark.jsonl", folder / "df.jsonl"
    append_record(bench, make_record("IQL", test, table="T", train_minutes=4.0))
    append_record(bench, make_record("IQL", test, table="T", train_minutes=4.0))  # the same budget twice
    append_record(df, make_record("Diffusion Forcing", test, table=headline, model={"minutes": 42.0}))
    append_record(df, make_record("Diffusion Forcing", test, table="an ablation", model={"minutes": 42.0}))
    append_record(df, make_record("Diffusion Forcing", test, table=headline, model={"steps": 10}))  # no minutes
    append_record(bench, make_record("IQL", expert, table="T", train_minutes=2.0))  # held-out seeds
    text = make_results.main(
        make_results.Args(
            records=str(folder / "*.jsonl"), output=str(tmp_path / "RESULTS.md"), figures=str(tmp_path / "figures")
        )
    )
    section = text.split("## Score against training minutes")[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert sorted(row.split("|")[1:4] for row in rows) == [
        [" Diffusion Forcing ", " maze2d-umaze-v1 ", " 42.0 "],
        [" IQL ", " maze2d-umaze-v1 ", " 4.0 "],
        [" IQL ", " maze2d-umaze-v1 ", " 4.0 "],
    ]
    assert (tmp_path / "figures" / "score_vs_training_minutes.png").stat().st_size > 1000


def test_the_summary_puts_every_method_beside_the_headline_df_rows(results, tmp_path):
    expert, still = results
    test = dataclasses.replace(expert, seeds=list(range(100)))
    folder = tmp_path / "results"
    append_record(folder / "df.jsonl", make_record("Diffusion Forcing", test, table=make_results.HEADLINE_TABLE))
    append_record(folder / "df.jsonl", make_record("Diffusion Forcing", test, table="a probe"))  # not the headline
    append_record(folder / "benchmark.jsonl", make_record("random", dataclasses.replace(still, seeds=list(range(100)))))
    append_record(folder / "benchmark.jsonl", make_record("IQL", test))
    append_record(folder / "benchmark.jsonl", make_record("IQL", expert))  # held-out seeds: left out
    text = make_results.main(
        make_results.Args(records=str(folder / "*.jsonl"), output=str(tmp_path / "R.md"), figures=str(tmp_path / "f"))
    )
    summary = text.split("## Summary: every method on every task")[1].split("## ")[0]
    rows = [line for line in summary.splitlines() if line.startswith("| ")]
    assert rows[0] == "| task | Diffusion Forcing | IQL | random |"
    assert rows[1].startswith("| maze2d-umaze | ") and rows[1].count("100%") == 2 and len(rows) == 2


def test_the_time_lost_table_compares_df_with_the_expert_episode_by_episode(results, tmp_path):
    expert, _ = results
    seeds = list(range(100))
    ideal = dataclasses.replace(expert, time_to_goal=np.array([50, 60, 70]), seeds=seeds)
    slower = dataclasses.replace(ideal, time_to_goal=np.array([50, 70, 170]))  # +0, +10, +100 steps
    folder = tmp_path / "results"
    append_record(folder / "df.jsonl", make_record("Diffusion Forcing", slower, table=make_results.HEADLINE_TABLE))
    append_record(folder / "benchmark.jsonl", make_record("expert (waypoints + PD)", ideal))
    text = make_results.main(
        make_results.Args(records=str(folder / "*.jsonl"), output=str(tmp_path / "R.md"), figures=str(tmp_path / "f"))
    )
    section = text.split("## Where DF loses time on the way")[1].split("## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| maze2d")]
    # mean 97 against 60; lost steps 0, 10, 100: median +10, 75th percentile +55, 90th +82; 1 of 3 over 50
    assert rows == ["| maze2d-umaze | 97 | 60 | +10 | +55 | +82 | 33% |"]


def test_make_results_tables_ogbench_records_beside_the_quoted_numbers(tmp_path):
    """An OGBench record (success per test goal, no D4RL scores) gets its own section, with OGBench's published
    numbers quoted beside it, and stays out of the maze2d tables."""
    from envs.ogbench_eval import OGBenchEvalResult

    result = OGBenchEvalResult(
        env_id="pointmaze-medium-navigate-v0",
        task_ids=np.repeat(np.arange(1, 6), 2),
        success=np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 0], dtype=bool),
        time_to_goal=np.array([100, 200, 300, 1000, 1000, 1000, 50, 150, 1000, 1000], dtype=float),
        seconds=1.0,
        seeds=list(range(10)),
        episode_length=1000,
        episodes_per_goal=2,
    )
    path = tmp_path / "ogbench.jsonl"
    append_record(path, make_record("IQL", result, train_minutes=12.0, train_steps=3000))
    planner = {"schedule": "pyramid", "mcg_samples": 4, "horizon_tokens": 60, "guidance_scale": 2.0}
    append_record(path, make_record("Diffusion Forcing", result, {**planner, "goal_conditioned": True}))
    append_record(path, make_record("Diffusion Forcing", result, {**planner, "horizon_tokens": None}))
    text = make_results.main(
        make_results.Args(records=str(path), output=str(tmp_path / "R.md"), figures=str(tmp_path / "f"))
    )
    row = next(line for line in text.split("## OGBench pointmaze")[1].splitlines() if line.startswith("| IQL"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2].startswith("50.0 ± ") and cells[3] == "100 / 50 / 0 / 100 / 0"
    assert cells[4] == "580" and cells[5] == "12 min, 3,000 steps" and cells[7] == "QRL 82% / 53%"
    assert "## Other evaluations" not in text
    # a DF row names the planner settings that its held-out rows compare
    assert "| Diffusion Forcing (pyramid, MCG 4, 60-token plans, guidance 2, goal-conditioned) | pointmaze-" in text
    assert "| Diffusion Forcing (pyramid, MCG 4, plans to the episode's end, guidance 2) | pointmaze-" in text


def test_the_settings_column_names_the_planner_s_guidance_terms():
    settings = {"schedule": "pyramid", "guidance_scale": 4.0, "mcg_samples": 4, "ddim_steps": 10}
    plain = make_results.describe_settings({"settings": settings})
    pulled_settings = {**settings, "start_weight": 4.0, "near_goal_guidance_scale": 8.0, "near_goal_radius": 1.5}
    pulled = make_results.describe_settings({"settings": pulled_settings})
    assert "start pull" not in plain and "start pull 4" in pulled
    assert "near-goal 8 within 1.5" in pulled


def test_ogbench_rows_name_the_guidance_they_used():
    settings = {"schedule": "pyramid", "mcg_samples": 4, "horizon_tokens": 60, "guidance_scale": 1.0}
    plain = make_results._ogbench_method({"method": "DF", "settings": settings})
    assert plain == "DF (pyramid, MCG 4, 60-token plans, guidance 1)"
    actions = {**settings, "guide_actions_only": True, "start_weight": 4.0, "goal_conditioned": True}
    named = make_results._ogbench_method({"method": "DF", "settings": actions})
    assert named == "DF (pyramid, MCG 4, 60-token plans, guidance 1 on actions only, start pull 4, goal-conditioned)"
    subgoals = make_results._ogbench_method({"method": "DF", "settings": {**settings, "subgoal_distance": 8.0}})
    assert subgoals == "DF (pyramid, MCG 4, 60-token plans, guidance 1, subgoals 8 ahead on the data's graph)"
    assert make_results._ogbench_method({"method": "DF", "settings": {**settings, "subgoal_distance": None}}) == plain
    routed = make_results._ogbench_method(
        {"method": "DF", "settings": {**settings, "subgoal_distance": 8.0, "route_weight": 2.0}}
    )
    assert routed == subgoals[:-1] + ", route pull 2)"
    relative = {**settings, "goal_conditioned": True, "relative_positions": True}
    assert make_results._ogbench_method({"method": "DF", "settings": relative}).endswith(
        "guidance 1, goal-conditioned, relative positions)"
    )
    near = {**settings, "near_goal_guidance_scale": 2.0, "near_goal_radius": 3.0}
    assert make_results._ogbench_method({"method": "DF", "settings": near}) == (
        "DF (pyramid, MCG 4, 60-token plans, guidance 1, guidance 2 within 3 of the goal)"
    )
    near_off = {**near, "near_goal_guidance_scale": None}
    assert make_results._ogbench_method({"method": "DF", "settings": near_off}) == plain
