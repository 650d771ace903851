"""Diagnostic: how much of an OGBench dataset lies where the test goals are.

A stitch dataset's episodes each cross at most 4 cells, from a random free cell to a goal 4 cells away. A cell at the
end of a dead end is crossed only by the episodes that start or end in it, so the data there is thin, and a model
trained on uniformly drawn windows has seen little of the way in. This script counts the dataset's rows (their
observations) per free maze cell and, for each of the five test goals, the rows in the goal's cell and that count's
rank among the free cells (0%: the rarest). One record per dataset, ``"kind": "data_coverage"``; RESULTS.md shows
them beside the success per goal.

    python scripts/ogbench_coverage.py --envs pointmaze-medium-stitch-v0 pointmaze-large-stitch-v0 \
        pointmaze-giant-stitch-v0 --record results/ogbench_coverage.jsonl
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tyro

from envs.ogbench_datasets import MazeGrid, load_ogbench_transitions
from envs.ogbench_tasks import evaluation_tasks, get_ogbench_task, make_ogbench_env
from envs.records import append_record, provenance


@dataclass
class Args:
    envs: tuple[str, ...] = ("pointmaze-giant-stitch-v0",)
    """OGBench pointmaze dataset ids (their .npz files must exist: `python -m envs.ogbench_datasets --env <id>`)"""
    dataset_dir: str | None = None
    """folder of the OGBench .npz files (default: OGBench's ~/.ogbench/data)"""
    record: str | None = None
    """append one JSON record per dataset to this file (e.g. results/ogbench_coverage.jsonl)"""


def goal_coverage(env_id: str, dataset_dir: str | None = None) -> dict:
    """Rows per free cell of the dataset's maze, and per test goal its cell, the rows there and their rank."""
    task = get_ogbench_task(env_id)
    data = load_ogbench_transitions(task.env_id, dataset_dir)
    env = make_ogbench_env(task.env_id)
    grid = MazeGrid(env)
    env.close()
    cells = grid.xy_to_cell(data.observations[:, :2])
    counts = np.zeros(grid.maze_map.shape, dtype=np.int64)
    np.add.at(counts, (cells[:, 0], cells[:, 1]), 1)
    free = counts[grid.maze_map == 0]
    goals = []
    for test_task in evaluation_tasks(task.env_id):
        cell = [int(k) for k in test_task["goal_ij"]]
        rows = int(counts[cell[0], cell[1]])
        rank = float((free < rows).mean())
        goals.append({"task_id": test_task["task_id"], "cell": cell, "rows": rows, "rank": rank})
    return {
        "rows": len(data),
        "free_cells": int(len(free)),
        "rows_per_cell_median": float(np.median(free)),
        "rows_per_cell_min": int(free.min()),
        "rows_per_cell_max": int(free.max()),
        "goals": goals,
    }


def main(args: Args) -> list[dict]:
    records = []
    for env_id in args.envs:
        coverage = goal_coverage(env_id, args.dataset_dir)
        print(
            f"{env_id}: {coverage['rows']:,} rows over {coverage['free_cells']} free cells (median "
            f"{coverage['rows_per_cell_median']:,.0f}, min {coverage['rows_per_cell_min']:,})"
        )
        for goal in coverage["goals"]:
            rank = f"{100 * goal['rank']:.0f}%"
            print(f"  goal {goal['task_id']}: cell {goal['cell']}, {goal['rows']:,} rows, rank {rank}")
        record = {"kind": "data_coverage", "benchmark": "diagnostic", "env_id": env_id, "metrics": coverage}
        records.append({**record, **provenance()})
        if args.record:
            append_record(args.record, records[-1])
    return records


if __name__ == "__main__":
    main(tyro.cli(Args))
