"""Every method side by side: the same tasks, the same episodes (seeds), the same evaluation (envs.evaluation).

    python scripts/benchmark.py --env maze2d-umaze --record results/benchmark.jsonl   # all methods on one maze
    python scripts/benchmark.py --all --record results/benchmark.jsonl                # umaze, medium and large
    python scripts/benchmark.py --env maze2d-umaze --train-minutes-iql 2 --train-minutes-cql 2 \
        --train-minutes-diffuser 5                                                    # short training budgets
    python scripts/benchmark.py --env maze2d-large --df train --train-minutes-df 45  # DF trained from scratch
    python scripts/benchmark.py --env maze2d-large --df runs/<run>/agent.pt --iql runs/<run>/iql.pt   # checkpoints
    python scripts/benchmark.py --maze umaze --expert --random                         # just these two, for scale

Each maze has two tasks, the single-goal one and the multi-goal one (maze2d-<maze>-v1, maze2d-<maze>-multi-v1).
Methods (``--methods``, default all of them):

- ``df``: Diffusion Forcing, pure (goal hold off). ``--df pretrained`` (the default) takes the agent shipped with
  the package for the maze; ``--df train`` trains one with scripts/df_maze2d.py; a path takes that agent.
- ``df-hold``: the same agent holding the goal with a PD law within ``--df-goal-hold-radius`` (0.5): a labelled
  reference, not pure DF.
- ``diffuser``: Diffuser, in both execution modes (planned states tracked; diffused actions executed).
- ``iql``, ``cql``: offline RL, one model per task (a multi-goal model sees the goal, a single-goal one does not);
  each is evaluated on the task it was trained for.
- ``mppi``: MPPI on the true dynamics (no training); ``expert`` and ``random``: the waypoint expert and uniformly
  random actions, for scale.

A learned method without a checkpoint on the command line is trained first, by its own script called as a library
(``main(Args)`` of scripts/df_maze2d.py, baselines/diffuser.py, baselines/iql.py, baselines/cql.py), with the time
budget ``--train-minutes-<method>`` (training stops at the budget or at the script's ``--total-steps``, whichever
comes first; its other settings pass through as its own flags, ``--<method>-flags="..."``). DF and Diffuser train
once per maze and serve both tasks; IQL and CQL train once per task. The dataset is generated (or read) before
the clock starts.
Checkpoints given on the command line replace training for that method (IQL / CQL / Diffuser checkpoints are
matched to their maze and task; without ``--methods``, naming checkpoints or ``--mppi`` / ``--expert`` /
``--random`` runs exactly those methods, as before the benchmark trained anything).

Output: one markdown row per (method, task) on stdout; with ``--record``, one JSON record per row (envs.records:
metrics with standard errors, per-episode arrays, command, commit, machine, package versions) carrying
``method_id``, ``checkpoint``, ``train_budget_minutes`` (None: not trained by this command), ``train_minutes``
(wall-clock minutes of the training here) and ``train_steps`` (the model's gradient steps, also for a checkpoint).

TensorBoard (``tensorboard --logdir runs/benchmark``): one run per (task, method), ``runs/benchmark/<task>/<method>``,
each holding the shared evaluation tags ``eval/normalized_score``, ``eval/reach_stay_score``, ``eval/success_rate``,
... (``envs.evaluation.log_evaluation``) at step 0, plus ``train/minutes`` and ``train/steps``. TensorBoard draws
one chart per tag with every run in it, so the ``eval/normalized_score`` chart compares all methods (and tasks;
filter runs by ``maze2d-umaze-v1/`` to see one task). This beats ``eval/<method>/normalized_score`` inside one run
per task, which TensorBoard would draw as one chart per method. A re-run replaces the run's earlier value
(``purge_step=0``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, get_args

import tyro
from torch.utils.tensorboard import SummaryWriter

import envs
from baselines import cql, diffuser, iql
from envs.evaluation import EvalResult, evaluate, log_evaluation
from envs.records import append_record, make_record


def _load_df_script():
    """scripts/df_maze2d.py as a module (scripts/ is not a package)."""
    if "df_maze2d" not in sys.modules:
        path = Path(__file__).resolve().parent / "df_maze2d.py"
        spec = importlib.util.spec_from_file_location("df_maze2d", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["df_maze2d"] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules["df_maze2d"]


df_maze2d = _load_df_script()

Method = Literal["df", "df-hold", "diffuser", "iql", "cql", "mppi", "expert", "random"]
METHODS: tuple[str, ...] = get_args(Method)
MAZES = ("umaze", "medium", "large")
# Row names (method ids, TensorBoard run names) -> the method's name in tables and records.
LABELS = {
    "df": "Diffusion Forcing",
    "df-hold": "Diffusion Forcing + goal hold",
    "diffuser": "Diffuser",
    "diffuser-actions": "Diffuser, diffused actions",
    "iql": "IQL",
    "cql": "CQL",
    "mppi": "MPPI",
    "expert": "expert (waypoints + PD)",
    "random": "random",
}
OFFLINE = ("iql", "cql")  # trained per task
DIFFUSER_ROWS = {"pd": "diffuser", "actions": "diffuser-actions"}  # Diffuser's execution mode -> row


@dataclass
class Args:
    env: Annotated[str, tyro.conf.arg(aliases=("--maze",))] = "maze2d-large"
    """a task of the maze (maze2d-large, maze2d-large-multi, or just large): the maze's single-goal and multi-goal
    tasks are both evaluated"""
    all: bool = False
    """benchmark all three mazes (umaze, medium, large), each on its single- and multi-goal task (ignores --env)"""
    methods: tuple[Method, ...] | None = None
    """methods to run (default: all; but when checkpoints, --mppi, --expert or --random are given without
    --methods, exactly those)"""
    episodes: int = 100
    """episodes per method and task (episode i is seeded seed + i for every method)"""
    seed: int = 0
    """evaluation seed"""
    runs_dir: str = "runs"
    """folder of the training runs and of the TensorBoard runs runs_dir/benchmark/<task>/<method>"""

    # Training budgets (minutes of wall time) of the methods trained by this command
    train_minutes_df: float = 45.0
    """DF's budget per maze, with --df train"""
    train_minutes_diffuser: float = 15.0
    """Diffuser's budget per maze, when no --diffuser checkpoint is given"""
    train_minutes_iql: float = 10.0
    """IQL's budget per task (two per maze), when no --iql checkpoint is given"""
    train_minutes_cql: float = 10.0
    """CQL's budget per task (two per maze), when no --cql checkpoint is given"""

    # Checkpoints and methods without training
    df: str | None = None
    """DF agent: 'pretrained' (the default: the agent shipped for the maze), 'train' (train with
    scripts/df_maze2d.py) or an agent / training checkpoint path (one maze only)"""
    df_guidance_scale: float | None = None
    """override the DF agent's guidance scale"""
    df_mcg_samples: int | None = None
    """override the DF agent's Monte Carlo Guidance samples"""
    df_ddim_steps: int | None = None
    """override the DF agent's DDIM steps per token"""
    df_horizon_tokens: int | None = None
    """override the DF agent's plan length cap"""
    df_subgoal_distance: float | None = None
    """guide the DF agent toward data-graph subgoals this far ahead (scripts/df_maze2d.py --subgoal-distance; None:
    the maze's default, df_agent.presets.MAZE_SUBGOALS; 0: toward the goal itself)"""
    df_subgoal_line_of_sight: bool | None = None
    """take those subgoals in line of sight (scripts/df_maze2d.py --subgoal-line-of-sight; None: that script's
    per-maze default, df_agent.presets.MAZE_SUBGOALS)"""
    df_goal_hold_radius: float = 0.5
    """goal-hold radius of the df-hold rows (df rows are pure DF: no hold)"""
    diffuser: tuple[str, ...] = ()
    """Diffuser checkpoints (written by baselines/diffuser.py), each evaluated on both tasks of its maze"""
    iql: tuple[str, ...] = ()
    """IQL checkpoints (written by baselines/iql.py), each evaluated on the task it was trained on"""
    cql: tuple[str, ...] = ()
    """CQL checkpoints (written by baselines/cql.py), each evaluated on the task it was trained on"""
    mppi: bool = False
    """select MPPI on the true dynamics (baselines/mppi.py defaults)"""
    expert: bool = False
    """select D4RL's waypoint expert (envs.expert), for scale"""
    random: bool = False
    """select uniformly random actions, for scale"""

    # Output
    output: str | None = None
    """also write the results to this JSON file"""
    record: str | None = None
    """append each evaluation as a JSON record to this file (e.g. results/benchmark.jsonl; make_results.py reads it)"""
    table: str | None = None
    """RESULTS.md table of those records (default: maze2d-<maze>)"""

    # Settings of the training scripts, as their own flags in one string, given with '=' (--iql-flags="--hidden-dim
    # 128"); --env, --train-minutes, --runs-dir and --save-model are set by the benchmark, and the scripts' own
    # evaluations are off unless given here
    df_flags: str = ""
    """flags of scripts/df_maze2d.py for --df train, e.g. --df-flags="--total-steps 40000 --width 256" """
    diffuser_flags: str = ""
    """flags of baselines/diffuser.py, e.g. --diffuser-flags="--dim 32" (its --modes choose the Diffuser rows)"""
    iql_flags: str = ""
    """flags of baselines/iql.py, e.g. --iql-flags="--hidden-dim 128 --total-steps 200000" """
    cql_flags: str = ""
    """flags of baselines/cql.py, e.g. --cql-flags="--total-steps 200000" """


@dataclass
class Job:
    """One model to obtain (train, load or build) and the tasks it is evaluated on."""

    method: str  # df (for df and df-hold), diffuser, iql, cql, mppi, expert, random
    rows: tuple[str, ...]  # the rows it gives on each task (keys of LABELS)
    maze: str
    tasks: tuple[str, ...]  # env ids
    source: str | None  # 'train', 'pretrained', a checkpoint path, or None (nothing to train or load)


@dataclass
class Training:
    """Where a model came from, as its records say."""

    checkpoint: str | None = None  # path, or 'pretrained'
    budget_minutes: float | None = None  # the budget it was trained with by this command (None: not trained here)
    minutes: float | None = None  # wall-clock minutes of that training
    steps: int | None = None  # the model's gradient steps


@dataclass
class Entry:
    """One row: a method's policy on a task."""

    row: str
    env_id: str
    make_policy: Callable[[], object]  # built only when evaluated
    training: Training
    settings: dict = field(default_factory=dict)


# The training scripts' settings when the benchmark calls them: their own defaults, evaluations off.
SCRIPTS = {
    "df": (df_maze2d, dict(eval_episodes=0)),
    "diffuser": (diffuser, dict(eval_episodes=0)),
    "iql": (iql, dict(eval_every=0, final_eval_episodes=0)),
    "cql": (cql, dict(eval_every=0, final_eval_episodes=0)),
}


def script_args(method: str, args: Args):
    """The ``Args`` of ``method``'s training script: the benchmark's defaults, then ``--<method>-flags``."""
    module, defaults = SCRIPTS[method]
    flags = shlex.split(getattr(args, f"{method}_flags"))
    return tyro.cli(module.Args, args=flags, default=module.Args(**defaults), prog=f"--{method}-flags")


def selected_methods(args: Args) -> tuple[str, ...]:
    if args.methods is not None:
        return tuple(args.methods)
    named = {
        "df": args.df is not None,
        "df-hold": args.df is not None,
        "diffuser": bool(args.diffuser),
        "iql": bool(args.iql),
        "cql": bool(args.cql),
        "mppi": args.mppi,
        "expert": args.expert,
        "random": args.random,
    }
    return tuple(method for method in METHODS if named[method]) or METHODS


def maze_tasks(maze: str) -> tuple[str, str]:
    """The maze's single-goal and multi-goal task ids."""
    single = envs.resolve_env_id(f"maze2d-{maze}")
    return single, envs.twin_env_id(single)


def plan(args: Args) -> list[Job]:
    """What the benchmark does, in order: per maze, per method, the model to obtain and the tasks it serves."""
    methods = selected_methods(args)
    mazes = MAZES if args.all else (envs.get_task(args.env).maze,)
    if args.df not in (None, "pretrained", "train") and len(mazes) > 1:
        raise SystemExit("--df PATH is an agent of one maze: with --all, use --df pretrained or --df train")
    script_settings = {method: script_args(method, args) for method in SCRIPTS}  # flag errors before any training
    if unknown := set(script_settings["diffuser"].modes) - set(DIFFUSER_ROWS):
        raise SystemExit(f"unknown Diffuser modes {sorted(unknown)}; valid modes: {list(DIFFUSER_ROWS)}")
    # Checkpoints on the command line, with the task (IQL, CQL) or maze (Diffuser) they were trained for.
    checkpoints = {name: [(path, checkpoint_task(name, path)) for path in getattr(args, name)] for name in OFFLINE}
    diffusers = [(path, diffuser.load_checkpoint(path)[1].config.maze) for path in args.diffuser]
    for name, pairs in [*checkpoints.items(), ("diffuser", diffusers)]:
        for path, trained_on in pairs:
            maze = trained_on if name == "diffuser" else envs.get_task(trained_on).maze
            if maze not in mazes:
                raise SystemExit(f"{path} was trained on {trained_on}, not on the {' or '.join(mazes)} maze")

    jobs = []
    for maze in mazes:
        tasks = maze_tasks(maze)
        for method in methods:
            if method == "df-hold" and "df" in methods:
                continue  # one DF agent serves both
            if method in ("df", "df-hold"):
                rows = tuple(row for row in ("df", "df-hold") if row in methods)
                jobs.append(Job("df", rows, maze, tasks, args.df or "pretrained"))
            elif method == "diffuser":
                rows = tuple(DIFFUSER_ROWS[mode] for mode in script_settings["diffuser"].modes)
                paths = [path for path, trained_on in diffusers if trained_on == maze] if args.diffuser else ["train"]
                jobs += [Job("diffuser", rows, maze, tasks, path) for path in paths]
            elif method in ("iql", "cql"):
                if getattr(args, method):
                    pairs = [(path, env_id) for path, env_id in checkpoints[method] if env_id in tasks]
                else:
                    pairs = [("train", env_id) for env_id in tasks]
                jobs += [Job(method, (method,), maze, (env_id,), path) for path, env_id in pairs]
            else:
                jobs.append(Job(method, (method,), maze, tasks, None))
    return jobs


def planned_rows(args: Args) -> list[tuple[str, str]]:
    """The (method row, task) pairs the benchmark evaluates, in order, without running anything."""
    return [(row, env_id) for job in plan(args) for env_id in job.tasks for row in job.rows]


def checkpoint_task(algorithm: str, path: str) -> str:
    from baselines import common

    return envs.resolve_env_id(common.load_checkpoint(path, algorithm, "cpu")["args"]["env"])


def train(job: Job, args: Args) -> Training:
    """Train the job's method with its own script, within its budget; the checkpoint and what the training used."""
    from envs.datasets import load_transitions

    budget = getattr(args, f"train_minutes_{job.method}")
    env_id = job.tasks[0]  # DF and Diffuser: the single-goal task (its maze's dataset); IQL and CQL: their task
    load_transitions(env_id)  # generate or cache the dataset first: the budget is for training
    forced = dict(env=env_id, train_minutes=budget, runs_dir=args.runs_dir, save_model=True, resume=None)
    print(f"training {LABELS[job.rows[0]]} on {env_id} for at most {budget:g} minutes", flush=True)
    start = time.perf_counter()
    settings = dataclasses.replace(script_args(job.method, args), **forced, eval_only=False)
    out = SCRIPTS[job.method][0].main(dataclasses.replace(settings, record=None) if job.method == "df" else settings)
    if job.method == "df":
        checkpoint, steps = Path(args.runs_dir) / out["run"] / "agent.pt", out["train_steps"]
    else:
        checkpoint, steps = out["checkpoint"], out["step"]
    return Training(str(checkpoint), budget, (time.perf_counter() - start) / 60, steps)


def entries(job: Job, args: Args) -> Iterator[Entry]:
    """The job's rows on each of its tasks, training or loading its model first."""
    training = train(job, args) if job.source == "train" else Training(checkpoint=job.source)
    if job.method == "df":
        from df_agent.agent import Agent

        overrides = {
            "guidance_scale": args.df_guidance_scale,
            "mcg_samples": args.df_mcg_samples,
            "ddim_steps": args.df_ddim_steps,
            "horizon_tokens": args.df_horizon_tokens,
        }
        overrides = {key: value for key, value in overrides.items() if value is not None}
        hold = {"df": 0.0, "df-hold": args.df_goal_hold_radius}
        # the agent evaluated as scripts/df_maze2d.py evaluates it: its per-maze subgoals unless told otherwise
        script_settings = df_maze2d.Args(
            subgoal_distance=args.df_subgoal_distance, subgoal_line_of_sight=args.df_subgoal_line_of_sight
        )
        task = envs.get_task(job.tasks[0])
        distance = df_maze2d.subgoal_distance_for(script_settings, task)
        line_of_sight = df_maze2d.subgoal_line_of_sight_for(script_settings, task)
        graph = None
        if distance is not None:
            from df_agent.subgoals import SubgoalPolicy, TransitionGraph
            from envs.datasets import load_transitions

            cell = df_maze2d.subgoal_cell_for(script_settings, task)
            graph = TransitionGraph.from_transitions(load_transitions(job.tasks[0]), cell=cell)
        for env_id in job.tasks:
            for row in job.rows:
                agent = Agent.for_task(
                    training.checkpoint, env_id, seed=args.seed, goal_hold_radius=hold[row], **overrides
                )
                training.steps = agent.training.get("steps", training.steps)
                settings = dataclasses.asdict(agent.planner)
                policy = lambda agent=agent: agent  # noqa: E731
                if graph is not None:
                    policy = lambda agent=agent: SubgoalPolicy(agent, graph, distance, line_of_sight=line_of_sight)  # noqa: E731
                    settings |= policy().settings()
                yield Entry(row, env_id, policy, training, settings)
    elif job.method == "diffuser":
        _, ema, state = diffuser.load_checkpoint(training.checkpoint)
        training.steps = state["step"]
        a = script_args("diffuser", args)
        for env_id in job.tasks:
            for mode in a.modes:
                policy = lambda mode=mode: diffuser.DiffuserPlanner(  # noqa: E731
                    ema, mode, a.sampling_steps, a.eta, a.clip_denoised, seed=args.seed
                )
                yield Entry(DIFFUSER_ROWS[mode], env_id, policy, training, {"mode": mode})
    elif job.method in ("iql", "cql"):
        from baselines import common

        module = {"iql": iql, "cql": cql}[job.method]
        training.steps = common.load_checkpoint(training.checkpoint, job.method, "cpu")["step"]
        for env_id in job.tasks:
            yield Entry(job.method, env_id, lambda: module.load_policy(training.checkpoint), training)
    elif job.method == "mppi":
        from baselines import mppi

        for env_id in job.tasks:
            settings = dataclasses.asdict(mppi.Args(env=env_id, seed=args.seed))
            policy = lambda env_id=env_id: mppi.make_planner(mppi.Args(env=env_id, seed=args.seed))  # noqa: E731
            yield Entry("mppi", env_id, policy, training, settings)
    elif job.method == "expert":
        from envs.expert import WaypointExpert

        for env_id in job.tasks:
            yield Entry("expert", env_id, lambda: WaypointExpert(job.maze, seed=args.seed), training)
    elif job.method == "random":
        import numpy as np

        for env_id in job.tasks:
            rng = np.random.default_rng(args.seed)
            policy = lambda rng=rng: lambda obs: rng.uniform(-1, 1, (len(obs["observation"]), 2))  # noqa: E731
            yield Entry("random", env_id, policy, training)


def describe(training: Training) -> str:
    if training.budget_minutes is not None:
        return f"{training.minutes:.3g} of {training.budget_minutes:g} min, {training.steps:,} steps"
    if training.checkpoint is not None:
        steps = f" ({training.steps:,} steps)" if training.steps is not None else ""
        return f"{training.checkpoint}{steps}"
    return "-"


def row(entry: Entry, result: EvalResult) -> str:
    return (
        f"| {LABELS[entry.row]} | {entry.env_id} "
        f"| {result.normalized_score:.1f} ± {result.normalized_score_stderr:.1f} "
        f"| {result.reach_stay_score:.1f} ± {result.reach_stay_score_stderr:.1f} | {100 * result.success_rate:.0f}% "
        f"| {result.mean_time_to_goal:.0f} | {describe(entry.training)} | {result.seconds:.0f} s |"
    )


def main(args: Args) -> list[dict]:
    jobs = plan(args)
    if not any(job.rows for job in jobs):
        raise SystemExit(
            "nothing to evaluate: choose --methods, or pass --df, --iql, --cql, --diffuser checkpoints, --mppi, "
            "--expert or --random"
        )

    print(
        f"| method | task | normalized score | reach-then-stay | success | time to goal | training "
        f"| evaluation time ({args.episodes} episodes) |"
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)
    records = []
    for job in jobs:
        for entry in entries(job, args):
            result = evaluate(entry.make_policy(), entry.env_id, num_episodes=args.episodes, seed=args.seed)
            print(row(entry, result), flush=True)
            training = {
                "method_id": entry.row,
                "checkpoint": entry.training.checkpoint,
                "train_budget_minutes": entry.training.budget_minutes,
                "train_minutes": entry.training.minutes,
                "train_steps": entry.training.steps,
            }
            records.append(
                {"method": LABELS[entry.row], "task": entry.env_id, **result.metrics(), "seconds": result.seconds}
                | training
            )
            if args.record:
                table = args.table or f"maze2d-{job.maze}"
                record = make_record(LABELS[entry.row], result, entry.settings, table=table, **training)
                append_record(args.record, record)
            # TensorBoard: run <task>/<method>, the shared tags; purge_step=0 replaces an earlier run's value
            writer = SummaryWriter(str(Path(args.runs_dir) / "benchmark" / entry.env_id / entry.row), purge_step=0)
            log_evaluation(writer, result, 0)
            if entry.training.minutes is not None:
                writer.add_scalar("train/minutes", entry.training.minutes, 0)
            if entry.training.steps is not None:
                writer.add_scalar("train/steps", entry.training.steps, 0)
            writer.close()
    if args.output:
        Path(args.output).write_text(json.dumps(records, indent=2))
    return records


if __name__ == "__main__":
    main(tyro.cli(Args))
