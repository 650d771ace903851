"""Benchmark of Diffusion Forcing on maze2d: training throughput, time to one replanning, and (given a checkpoint)
the score for a grid of planner settings.

    python scripts/benchmark_df.py --env maze2d-large                              # throughput and replan time
    python scripts/benchmark_df.py --env maze2d-large --checkpoint runs/<run>/agent.pt --eval-episodes 20 \
        --guidance-scales 1 3 --mcg-samples 1 4 --goal-hold-radius 0 0.5
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import tyro

import envs
from df_agent.agent import Agent, PlannerConfig
from df_agent.subgoals import SubgoalPolicy, TransitionGraph
from df_agent.tokens import TokenLayout
from df_agent.training import TrainConfig, WindowSampler, make_trainer
from envs.datasets import load_transitions
from envs.evaluation import evaluate
from envs.records import append_record, make_record, make_speed_record


@dataclass
class Args:
    env: str = "maze2d-large"
    """task whose dataset and episode length are used"""
    width: int = 128
    """model width (throughput and replan timing without a checkpoint)"""
    latent_dim: int = 128
    """model latent size"""
    depth: int = 1
    """residual blocks per MLP"""
    batch_size: int = 64
    """training windows per batch"""
    window_tokens: int = 60
    """tokens per training window"""
    train_steps: int = 30
    """timed training steps"""
    plan_batch: int = 100
    """episodes planned together in the replan timing"""
    horizon_tokens: tuple[int, ...] = (30,)
    """plan lengths (tokens) to time"""
    ddim_steps: tuple[int, ...] = (10, 20)
    """DDIM steps to time"""
    mcg_samples: tuple[int, ...] = (1, 4)
    """Monte Carlo Guidance samples to time"""
    checkpoint: str | None = None
    """agent or training checkpoint ('pretrained': the packaged one): time it and evaluate the planner grid"""
    eval_episodes: int = 0
    """episodes per planner setting (0: no evaluation)"""
    guidance_scales: tuple[float, ...] = (1.0,)
    """guidance scales of the evaluation grid"""
    replan_every: tuple[int, ...] = (1,)
    """replanning intervals (tokens) of the evaluation grid"""
    goal_hold_radius: tuple[float, ...] = (0.0,)
    """goal-hold radii of the evaluation grid (0: pure DF; see PlannerConfig.goal_hold_radius)"""
    schedules: tuple[str, ...] = ("pyramid",)
    """scheduling matrices of the evaluation grid"""
    stay_velocity_weights: tuple[float, ...] = (0.0,)
    """goal-state guidance: speed weights of the evaluation grid (PlannerConfig.stay_velocity_weight)"""
    stay_action_weights: tuple[float, ...] = (0.0,)
    """goal-state guidance: force weights of the evaluation grid (PlannerConfig.stay_action_weight)"""
    stay_radius: tuple[float, ...] = (1.0,)
    """goal-state guidance: gate radii of the evaluation grid (PlannerConfig.stay_radius)"""
    near_goal_scales: tuple[float, ...] = (0.0,)
    """guidance scales near the goal of the evaluation grid (PlannerConfig.near_goal_guidance_scale; 0: off)"""
    near_goal_radius: float = 1.0
    """PlannerConfig.near_goal_radius"""
    stay_near_goal_only: bool = False
    """PlannerConfig.stay_near_goal_only"""
    shrink_horizon: tuple[bool, ...] = (True,)
    """PlannerConfig.shrink_horizon values of the evaluation grid"""
    warm_start_levels: tuple[float, ...] = (0.0,)
    """warm-start levels of the evaluation grid (PlannerConfig.warm_start_level; 0: off)"""
    record: str | None = "results/df_planner_grid.jsonl"
    """append one JSON record per evaluated setting to this file (none: don't)"""
    table: str | None = None
    """RESULTS.md table the records belong to (scripts/make_results.py)"""
    seed: int = 0
    """evaluation seed"""
    act_steps: int = 0
    """also time ``agent.act`` in one Gymnasium env for this many control steps (real time needs >= 100 steps/s)"""
    act_subgoal_distance: float = 0.0
    """time ``agent.act`` guided toward data-graph subgoals this far ahead (``SubgoalPolicy``, as
    ``scripts/df_maze2d.py --subgoal-distance``; its lookup is timed with it; 0: toward the goal)"""
    act_subgoal_cell: float = 0.25
    """grid cell of that graph's nodes (maze units)"""
    act_subgoal_line_of_sight: bool = False
    """take those subgoals in line of sight (``scripts/df_maze2d.py --subgoal-line-of-sight``)"""
    act_with_saved_planner: bool = False
    """time ``agent.act`` with the planner saved in the checkpoint (a shipped agent: the script's defaults) instead
    of the grid's first setting"""
    eval_multi: bool = True
    """also evaluate the planner grid on the multi-goal task"""
    speed_record: str | None = None
    """append the timings (each replan of the batch; agent.act in one env, overall and split by the point's
    distance to the goal) as one speed record to this file (e.g. results/speed.jsonl; make_results.py tables it)"""


def grid_planners(args: Args, episode_length: int) -> Iterator[PlannerConfig]:
    """Every planner setting of the evaluation grid (the product of the grid flags), in flag order."""
    grid = itertools.product(
        args.guidance_scales,
        args.mcg_samples,
        args.ddim_steps,
        args.horizon_tokens,
        args.replan_every,
        args.goal_hold_radius,
        args.schedules,
        args.stay_velocity_weights,
        args.stay_action_weights,
        args.stay_radius,
        args.near_goal_scales,
        args.shrink_horizon,
        args.warm_start_levels,
    )
    for scale, mcg, steps, horizon, every, hold, schedule, velocity, action, radius, near, shrink, warm in grid:
        yield PlannerConfig(
            ddim_steps=steps,
            schedule=schedule,
            guidance_scale=scale,
            mcg_samples=mcg,
            stay_velocity_weight=velocity,
            stay_action_weight=action,
            stay_radius=radius,
            near_goal_guidance_scale=near or None,
            near_goal_radius=args.near_goal_radius,
            stay_near_goal_only=args.stay_near_goal_only,
            horizon_tokens=horizon,
            replan_every=every,
            shrink_horizon=shrink,
            warm_start_level=warm,
            goal_hold_radius=hold,
            episode_length=episode_length,
            seed=args.seed,
        )


def main(args: Args) -> None:
    task = envs.get_task(args.env)
    if args.checkpoint:
        agent = Agent.for_task(args.checkpoint, task.env_id)
    else:
        data = load_transitions(task.env_id, progress=False)
        model = {"width": args.width, "latent_dim": args.latent_dim, "depth": args.depth}
        config = TrainConfig(window_tokens=args.window_tokens, batch_size=args.batch_size)
        layout = TokenLayout()
        trainer = make_trainer(data, layout, model, config)
        sampler = WindowSampler.from_transitions(data, args.window_tokens * layout.frame_stack)
        trainer.train_step(sampler.sample(args.batch_size, trainer.rng))  # warm-up
        start = time.perf_counter()
        for _ in range(args.train_steps):
            trainer.train_step(sampler.sample(args.batch_size, trainer.rng))
        seconds = (time.perf_counter() - start) / args.train_steps
        tokens = args.batch_size * args.window_tokens
        print(
            f"training ({trainer.model.num_parameters():,} parameters, {trainer.device}): {1 / seconds:.1f} steps/s, "
            f"{tokens / seconds:,.0f} tokens/s (batch {args.batch_size} x {args.window_tokens} tokens)"
        )
        agent = Agent.from_trainer(trainer)

    rng = np.random.default_rng(0)
    layout = envs.Maze.from_name(task.maze)
    cells = layout.free_cells[rng.integers(len(layout.free_cells), size=args.plan_batch)]
    obs = np.concatenate([layout.cell_to_xy(cells), np.zeros((args.plan_batch, 2))], axis=1).astype(np.float32)
    goal = np.tile(layout.cell_to_xy(layout.goal_cell), (args.plan_batch, 1)).astype(np.float32)
    frame_stack = agent.tokenizer.layout.frame_stack  # steps per token
    timings: dict = {"replans": []}
    for horizon, steps, mcg in itertools.product(args.horizon_tokens, args.ddim_steps, args.mcg_samples):
        start = time.perf_counter()
        plan = agent.plan(obs, goal, horizon=horizon * frame_stack, ddim_steps=steps, mcg_samples=mcg)
        seconds = time.perf_counter() - start
        timings["replans"].append(
            {"batch": args.plan_batch, "horizon_tokens": horizon, "ddim_steps": steps, "mcg_samples": mcg,
             "schedule": agent.planner.schedule, "rows": len(plan.level_history) - 1, "seconds": seconds}
        )  # fmt: skip
        print(
            f"replan of {args.plan_batch} episodes, {horizon} tokens, {steps} DDIM steps, MCG {mcg}: "
            f"{seconds:.2f} s ({len(plan.level_history) - 1} rows)",
            flush=True,
        )

    if args.checkpoint and args.act_steps:
        # the first value of each grid; the random draws go on from the timed plans
        if args.act_with_saved_planner:
            timed = agent.with_planner(episode_length=task.max_episode_steps, keep_random_state=True)
        else:
            timed = agent.with_planner(next(grid_planners(args, task.max_episode_steps)), keep_random_state=True)
        policy = timed
        if args.act_subgoal_distance > 0:
            graph = TransitionGraph.from_transitions(load_transitions(task.env_id), cell=args.act_subgoal_cell)
            policy = SubgoalPolicy(
                timed, graph, args.act_subgoal_distance, line_of_sight=args.act_subgoal_line_of_sight
            )
        env = envs.make(task.env_id)
        obs, _ = env.reset(seed=args.seed)
        policy.act(obs)  # the first plan includes one-off warm-up costs
        step_seconds, near = np.zeros(args.act_steps), np.zeros(args.act_steps, dtype=bool)
        for i in range(args.act_steps):
            near[i] = np.linalg.norm(obs["observation"][:2] - obs["desired_goal"]) <= timed.planner.near_goal_radius
            start = time.perf_counter()
            obs, _, terminated, truncated, _ = env.step(policy.act(obs))
            step_seconds[i] = time.perf_counter() - start
            if terminated or truncated:  # a new episode: longer timings span several
                obs, _ = env.reset()
                policy.reset()
        seconds = step_seconds.sum()
        timings["act"] = {
            "steps": args.act_steps,
            "steps_per_second": args.act_steps / seconds,
            "near_goal_steps": int(near.sum()),
            "steps_per_second_near_goal": float(near.sum() / step_seconds[near].sum()) if near.any() else None,
            "steps_per_second_far": float((~near).sum() / step_seconds[~near].sum()) if (~near).any() else None,
        }
        p = timed.planner
        print(
            f"agent.act in one env ({p.schedule}, MCG {p.mcg_samples}, DDIM {p.ddim_steps}, horizon "
            f"{p.horizon_tokens} tokens, near the goal every {p.near_goal_execute_steps or 'token'} steps with "
            f"{p.near_goal_horizon_tokens or p.horizon_tokens} tokens, warm start {p.warm_start_level}, "
            f"subgoals {args.act_subgoal_distance or 'off'}{' in sight' if args.act_subgoal_line_of_sight else ''}, "
            f"{torch.get_num_threads()} threads): {args.act_steps / seconds:.0f} control "
            f"steps/s ({1000 * seconds / args.act_steps * 10:.0f} ms per 10 steps, simulator included)",
            flush=True,
        )

    if args.speed_record:
        settings = asdict(timed.planner) if args.checkpoint and args.act_steps else asdict(agent.planner)
        if args.checkpoint and args.act_steps and args.act_subgoal_distance > 0:
            settings |= policy.settings()
        model = {"checkpoint": args.checkpoint, **agent.training} if args.checkpoint else {}
        append_record(args.speed_record, make_speed_record(task.env_id, timings, settings, model=model))
        print(f"speed record appended to {args.speed_record}")

    if args.checkpoint and args.eval_episodes:
        single = envs.twin_env_id(task.env_id) if task.multi_goal else task.env_id
        for env_id in [single, envs.twin_env_id(single)] if args.eval_multi else [single]:
            for planner in grid_planners(args, envs.get_task(env_id).max_episode_steps):
                evaluated = agent.with_planner(planner)  # its generator seeded from planner.seed (args.seed)
                result = evaluate(evaluated, env_id, num_episodes=args.eval_episodes, seed=args.seed, progress=False)
                p = planner
                print(
                    f"{env_id} {p.schedule} scale {p.guidance_scale} mcg {p.mcg_samples} ddim {p.ddim_steps} horizon "
                    f"{p.horizon_tokens} replan {p.replan_every} hold {p.goal_hold_radius} stay v "
                    f"{p.stay_velocity_weight} a {p.stay_action_weight} r {p.stay_radius} near "
                    f"{p.near_goal_guidance_scale or 0.0} shrink {p.shrink_horizon} warm {p.warm_start_level}: "
                    f"{result} [{result.seconds:.0f} s]",
                    flush=True,
                )
                if args.record:
                    settings = {**asdict(planner), "checkpoint": args.checkpoint}
                    method = "Diffusion Forcing + goal hold" if planner.goal_hold_radius else "Diffusion Forcing"
                    append_record(args.record, make_record(method, result, settings, table=args.table))


if __name__ == "__main__":
    main(tyro.cli(Args))
