"""Benchmark of the maze2d tasks and datasets: expert and random scores per task, and dataset generation speed.

python scripts/benchmark_envs.py                      # everything (about 10 minutes on 2 CPU cores)
python scripts/benchmark_envs.py --no-generation      # scores only
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

import envs
from envs.datasets import generate_dataset
from envs.evaluation import evaluate
from envs.expert import WaypointExpert
from envs.generation import DEFAULT_NUM_STEPS, simulate


@dataclass
class Args:
    tasks: tuple[str, ...] = tuple(envs.TASKS)
    """task ids to score the expert and the random policy on"""
    num_episodes: int = 100
    """evaluation episodes per task and policy"""
    seed: int = 0
    """evaluation seed (episode i uses seed + i)"""
    scores: bool = True
    """score the expert and the random policy"""
    generation: bool = True
    """time dataset generation at the default sizes (written to a temporary folder, then deleted)"""
    mazes: tuple[str, ...] = ("umaze", "medium", "large")
    """mazes whose dataset generation is timed"""


class RandomPolicy:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs):
        return self.rng.uniform(-1.0, 1.0, size=(len(obs["observation"]), 2))


def main(args: Args) -> None:
    if args.scores:
        print(
            "| task | expert normalized | expert success | expert time to goal | random normalized | "
            "random success | episodes/s (expert) |"
        )
        print("|---|---|---|---|---|---|---|")
        for env_id in args.tasks:
            maze = envs.get_task(env_id).maze
            expert = evaluate(
                WaypointExpert(maze, seed=args.seed), env_id, args.num_episodes, args.seed, progress=False
            )
            random = evaluate(RandomPolicy(args.seed), env_id, args.num_episodes, args.seed, progress=False)
            print(
                f"| {env_id} | {expert.normalized_score:.1f} ± {expert.normalized_score_stderr:.1f} | "
                f"{100 * expert.success_rate:.0f}% | {expert.mean_time_to_goal:.0f} | "
                f"{random.normalized_score:.1f} ± {random.normalized_score_stderr:.1f} | "
                f"{100 * random.success_rate:.0f}% | {expert.episodes_per_second:.1f} |",
                flush=True,
            )
    if args.generation:
        print("\n| maze | steps | simulation steps/s | generation + writing | overall steps/s | episodes |")
        print("|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder) / "datasets"  # a Minari datasets folder of its own, deleted after
            for maze in args.mazes:
                steps = DEFAULT_NUM_STEPS[maze]
                rollouts = simulate(maze, min(steps, 500_000), progress=False)
                sim_rate = min(steps, 500_000) / rollouts.seconds
                start = time.perf_counter()
                dataset = generate_dataset(
                    maze, steps, dataset_id=f"bench/pointmaze/{maze}-v2", progress=False, root=root
                )
                seconds = time.perf_counter() - start
                print(
                    f"| {maze} | {steps:,} | {sim_rate:,.0f} | {seconds:.0f} s | {steps / seconds:,.0f} | "
                    f"{dataset.total_episodes:,} |",
                    flush=True,
                )


if __name__ == "__main__":
    main(tyro.cli(Args))
