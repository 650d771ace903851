"""Every method side by side on one maze: the same tasks, the same episodes (seeds), the same evaluation.

Trained methods are read from their checkpoints (train them with their own scripts first); MPPI needs none.

    python scripts/benchmark.py --env maze2d-large --df runs/<run>/agent.pt \
        --iql runs/<single-goal run>/iql.pt runs/<multi-goal run>/iql.pt --diffuser runs/<run>/diffuser.pt --mppi
    python scripts/benchmark.py --env maze2d-umaze --mppi --episodes 20 --output umaze.json

Prints one markdown row per (method, task): D4RL normalized score ± standard error, success rate, mean time to
first reach the goal, and the evaluation's wall-clock time. DF and Diffuser are evaluated on both the single-goal
and the multi-goal task (one model serves both); an IQL / CQL checkpoint on the task it was trained for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import tyro

import envs
from envs.evaluation import EvalResult, evaluate
from envs.records import append_record, make_record


@dataclass
class Args:
    env: Annotated[str, tyro.conf.arg(aliases=("--maze",))] = "maze2d-large"
    """a task of the maze (maze2d-large, maze2d-large-multi, or just large): the maze's single-goal and multi-goal
    tasks are both evaluated"""
    episodes: int = 100
    """episodes per method and task (episode i is seeded seed + i for every method)"""
    seed: int = 0
    """evaluation seed"""
    df: str | None = None
    """Diffusion Forcing agent or training checkpoint (scripts/df_maze2d.py); 'pretrained': the packaged one"""
    df_guidance_scale: float | None = None
    """override the DF agent's guidance scale"""
    df_mcg_samples: int | None = None
    """override the DF agent's Monte Carlo Guidance samples"""
    df_ddim_steps: int | None = None
    """override the DF agent's DDIM steps per token"""
    df_horizon_tokens: int | None = None
    """override the DF agent's plan length cap"""
    df_goal_hold_radius: float | None = None
    """override the DF agent's goal-hold radius (0: pure DF)"""
    iql: tuple[str, ...] = ()
    """IQL checkpoints (written by baselines/iql.py), each evaluated on the task it was trained on"""
    cql: tuple[str, ...] = ()
    """CQL checkpoints (written by baselines/cql.py), each evaluated on the task it was trained on"""
    diffuser: str | None = None
    """Diffuser checkpoint (written by baselines/diffuser.py): both execution modes"""
    mppi: bool = False
    """evaluate MPPI on the true dynamics (baselines/mppi.py defaults)"""
    expert: bool = False
    """evaluate D4RL's waypoint expert (envs.expert), for scale"""
    random: bool = False
    """evaluate uniformly random actions, for scale"""
    output: str | None = None
    """also write the results to this JSON file"""
    record: str | None = None
    """append each evaluation as a JSON record to this file (e.g. results/benchmark.jsonl; make_results.py reads it)"""
    table: str | None = None
    """RESULTS.md table of those records (default: maze2d-<maze>)"""


Entry = tuple[str, str, Callable[[], object]]  # method, task id, policy factory (built only when evaluated)


def df_entries(args: Args, tasks: list[str]) -> Iterator[Entry]:
    from df_agent.agent import Agent

    overrides = {
        "guidance_scale": args.df_guidance_scale,
        "mcg_samples": args.df_mcg_samples,
        "ddim_steps": args.df_ddim_steps,
        "horizon_tokens": args.df_horizon_tokens,
        "goal_hold_radius": args.df_goal_hold_radius,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    label = "Diffusion Forcing + goal hold" if args.df_goal_hold_radius else "Diffusion Forcing"
    for env_id in tasks:
        yield (
            label,
            env_id,
            lambda env_id=env_id: Agent.for_task(args.df, env_id, seed=args.seed, **overrides),
        )


def offline_entries(name: str, paths: tuple[str, ...], maze: str) -> Iterator[Entry]:
    from baselines import common, cql, iql

    module = {"iql": iql, "cql": cql}[name]
    for path in paths:
        env_id = envs.resolve_env_id(common.load_checkpoint(path, name, "cpu")["args"]["env"])
        if envs.get_task(env_id).maze != maze:
            raise SystemExit(f"{path} was trained on {env_id}, not on the {maze} maze")
        yield name.upper(), env_id, lambda path=path: module.load_policy(path)


def diffuser_entries(args: Args, tasks: list[str]) -> Iterator[Entry]:
    from baselines.diffuser import DiffuserPlanner, load_checkpoint

    _, ema, _ = load_checkpoint(args.diffuser)
    for env_id in tasks:
        for mode, label in (("pd", "Diffuser"), ("actions", "Diffuser, diffused actions")):
            yield label, env_id, lambda mode=mode: DiffuserPlanner(ema, mode, seed=args.seed)


def mppi_entries(args: Args, tasks: list[str]) -> Iterator[Entry]:
    from baselines import mppi

    for env_id in tasks:
        yield "MPPI", env_id, lambda env_id=env_id: mppi.make_planner(mppi.Args(env=env_id, seed=args.seed))


def scale_entries(args: Args, tasks: list[str], maze: str) -> Iterator[Entry]:
    import numpy as np

    from envs.expert import WaypointExpert

    for env_id in tasks:
        if args.expert:
            yield "expert (waypoints + PD)", env_id, lambda: WaypointExpert(maze, seed=args.seed)
        if args.random:
            rng = np.random.default_rng(args.seed)
            yield "random", env_id, lambda rng=rng: lambda obs: rng.uniform(-1, 1, (len(obs["observation"]), 2))


def row(method: str, env_id: str, result: EvalResult) -> str:
    return (
        f"| {method} | {env_id} | {result.normalized_score:.1f} ± {result.normalized_score_stderr:.1f} | "
        f"{100 * result.success_rate:.0f}% | {result.mean_time_to_goal:.0f} | {result.seconds:.0f} s |"
    )


def main(args: Args) -> list[dict]:
    task = envs.get_task(args.env)
    maze, twin = task.maze, envs.twin_env_id(task.env_id)
    tasks = [twin, task.env_id] if task.multi_goal else [task.env_id, twin]  # the single-goal task first
    entries: list[Entry] = []
    if args.df:
        entries += df_entries(args, tasks)
    entries += offline_entries("iql", args.iql, maze)
    entries += offline_entries("cql", args.cql, maze)
    if args.diffuser:
        entries += diffuser_entries(args, tasks)
    if args.mppi:
        entries += mppi_entries(args, tasks)
    entries += scale_entries(args, tasks, maze)
    if not entries:
        raise SystemExit(
            "nothing to evaluate: pass --df, --iql, --cql, --diffuser checkpoints, --mppi, --expert or --random"
        )

    print(f"| method | task | normalized score | success | time to goal | evaluation time ({args.episodes} episodes) |")
    print("|---|---|---|---|---|---|")
    records = []
    for method, env_id, make_policy in entries:
        result = evaluate(make_policy(), env_id, num_episodes=args.episodes, seed=args.seed)
        print(row(method, env_id, result), flush=True)
        records.append({"method": method, "task": env_id, **result.metrics(), "seconds": result.seconds})
        if args.record:
            append_record(args.record, make_record(method, result, table=args.table or f"maze2d-{maze}"))
    if args.output:
        Path(args.output).write_text(json.dumps(records, indent=2))
    return records


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main(tyro.cli(Args))
