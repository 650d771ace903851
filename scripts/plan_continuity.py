"""Diagnostic: how well a Diffusion Forcing plan holds together in space.

A token holds ``frame_stack`` steps, predicted together. Within a token consecutive predicted positions lie a step
apart; between tokens, and between the current observation and the plan's first step, nothing but the model ties
them. This script plans from held-out starts toward their goals at several guidance scales and measures, per plan,
the distance between consecutive predicted positions: inside tokens, at token boundaries, and from the current
position to the first predicted one. A boundary or first step much longer than an inside step means the plan
jumps (and may cross walls), so its first actions belong to a path the point is not on. With ``--action-step`` (a
point moved kinematically, OGBench: 0.2) it also measures how far the plan's last predicted position lies from the
position its own actions lead to (``df_agent.guidance.implied_positions``): guidance can move the one without the
other. One record per guidance scale, ``"benchmark": "diagnostic"``.

    python scripts/plan_continuity.py --env maze2d-large --guidance-scales 0 1 --record results/plan_continuity.jsonl
    python scripts/plan_continuity.py --env pointmaze-giant-navigate-v0 --checkpoint runs/<run>/agent.pt \
        --guidance-scales 0 0.25 1 --record results/plan_continuity.jsonl
    python scripts/plan_continuity.py --env pointmaze-medium-stitch-v0 --checkpoint runs/<run>/agent.pt --starts 64 \
        --start 21 17.4 --goal 20 20 --horizon-tokens 10 --guidance-scales 0 4 16 --action-step 0.2 \
        [--guide-implied-positions]
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import tyro

import envs
from df_agent import Agent
from df_agent.guidance import implied_positions
from envs.ogbench_tasks import get_ogbench_task, is_ogbench_id
from envs.records import append_record, provenance


@dataclass
class Args:
    env: str = "maze2d-large"
    """task: a maze2d id or an OGBench pointmaze dataset id"""
    checkpoint: str = "pretrained"
    """agent file, or 'pretrained' for the packaged agent (maze2d only)"""
    starts: int = 10
    """plans measured (OGBench: spread evenly over the five test goals)"""
    seed: int = 100
    """first episode seed of the starts (held out: maze2d >= 100, OGBench >= 1000 by our convention)"""
    guidance_scales: tuple[float, ...] = (0.0, 1.0)
    """guidance scales measured, one record each (0: unguided)"""
    guide_actions_only: bool = False
    """guide only the plans' action components (PlannerConfig.guide_actions_only)"""
    guide_implied_positions: bool = False
    """measure the goal cost on the positions the actions lead to (PlannerConfig.guide_implied_positions; needs
    --action-step)"""
    action_step: float | None = None
    """displacement per unit of action in one step (OGBench: 0.2): also measure the gap between each plan's last
    predicted position and the one its actions lead to, and that position's distance to the goal"""
    start: tuple[float, float] | None = None
    """OGBench only: plan from this (x, y) instead of the episodes' starts, e.g. where an evaluation episode stalls"""
    goal: tuple[float, float] | None = None
    """OGBench only: plan toward this (x, y) instead of the episodes' goals"""
    horizon_tokens: int | None = None
    """plan length in tokens (default: the agent's planner's)"""
    num_threads: int = 1
    """torch threads"""
    record: str | None = None
    """append one JSON record per guidance scale to this file"""


def continuity(start: np.ndarray, positions: np.ndarray, frame_stack: int) -> dict[str, np.ndarray]:
    """Per-plan distances between consecutive predicted positions. ``start`` (B, 2) is the current position,
    ``positions`` (B, L, 2) the plan's predicted positions after each of its L steps. Returns (B,) arrays: the first
    step's length (from ``start``), the median step inside tokens, and the median step across token boundaries."""
    path = np.concatenate([start[:, None], positions], axis=1)
    steps = np.linalg.norm(np.diff(path, axis=1), axis=-1)  # (B, L): step i ends at predicted position i
    boundary = np.arange(steps.shape[1]) % frame_stack == 0  # step 0 enters token 0, step k * frame_stack token k
    boundary[0] = False  # the first step is reported on its own
    inside = np.arange(steps.shape[1]) % frame_stack != 0
    return {
        "first_step": steps[:, 0],
        "inside_step": np.median(steps[:, inside], axis=1),
        "boundary_step": np.median(steps[:, boundary], axis=1) if boundary.any() else np.full(len(steps), np.nan),
    }


def starts_and_goals(args: Args) -> tuple[Agent, np.ndarray, np.ndarray, np.ndarray]:
    """The agent, its observations (B, obs_dim), positions (B, 2) and goals (B, 2) at the held-out starts."""
    if is_ogbench_id(args.env):
        from envs.ogbench_datasets import position_observation
        from envs.ogbench_eval import make_eval_env, reset_episode

        task = get_ogbench_task(args.env)
        if args.checkpoint == "pretrained":
            raise SystemExit("OGBench has no packaged agent: pass --checkpoint runs/<run>/agent.pt")
        agent = Agent.load(args.checkpoint, episode_length=task.max_episode_steps)
        env = make_eval_env(task.env_id)
        positions, goals = [], []
        for i in range(args.starts):
            position, info = reset_episode(env, 1 + i % task.num_eval_tasks, args.seed + i)
            positions.append(position)
            goals.append(info["goal"])
        positions = np.asarray(positions, dtype=np.float32)
        if args.start is not None:
            positions[:] = args.start
        goals = np.asarray(goals)
        if args.goal is not None:
            goals[:] = args.goal
        return agent, position_observation(positions, agent.tokenizer.layout.obs_dim), positions, goals
    if args.start is not None or args.goal is not None:
        raise SystemExit("--start and --goal are for OGBench ids (a maze2d state has a velocity too)")
    task = envs.get_task(args.env)
    agent = Agent.for_task(args.checkpoint, task.env_id)
    env = envs.make(task.env_id)
    observations, goals = [], []
    for i in range(args.starts):
        obs, _ = env.reset(seed=args.seed + i)
        observations.append(obs["observation"])
        goals.append(obs["desired_goal"])
    observations = np.asarray(observations, dtype=np.float32)
    return agent, observations, observations[:, :2].copy(), np.asarray(goals)


def main(args: Args) -> list[dict]:
    torch.set_num_threads(args.num_threads)
    agent, observations, positions, goals = starts_and_goals(args)
    frame_stack = agent.tokenizer.layout.frame_stack
    tokens = args.horizon_tokens or agent.planner.horizon_tokens or 30
    if args.guide_implied_positions and args.action_step is None:
        raise SystemExit("--guide-implied-positions needs --action-step (OGBench: 0.2)")
    results = []
    for scale in args.guidance_scales:
        started = time.perf_counter()
        planner = agent.with_planner(
            guidance_scale=float(scale),
            guide_actions_only=args.guide_actions_only,
            guide_implied_positions=args.guide_implied_positions,
            action_step=args.action_step,
            near_goal_guidance_scale=None,  # the scale measured applies everywhere
            route_weight=0.0,  # plans toward the goal itself, with no data-graph route
        )
        plan = planner.plan(observations, goals, horizon=tokens * frame_stack)
        stats = continuity(positions, plan.positions, frame_stack)
        metrics = {f"{name}_median": float(np.median(value)) for name, value in stats.items()}
        metrics["boundary_to_inside"] = metrics["boundary_step_median"] / metrics["inside_step_median"]
        metrics["final_distance_to_goal_median"] = float(
            np.median(np.linalg.norm(plan.positions[:, -1] - goals, axis=-1))
        )
        if args.action_step is not None:
            reached = implied_positions(  # where the actions lead, walls ignored: the guidance's own definition
                torch.as_tensor(positions), torch.as_tensor(plan.actions), args.action_step
            )[:, -1].numpy()
            stats["action_gap"] = np.linalg.norm(plan.positions[:, -1] - reached, axis=-1)
            stats["implied_final_distance"] = np.linalg.norm(reached - goals, axis=-1)
            metrics["action_gap_median"] = float(np.median(stats["action_gap"]))
            metrics["implied_final_distance_to_goal_median"] = float(np.median(stats["implied_final_distance"]))
        record = {
            "benchmark": "diagnostic",
            "kind": "plan_continuity",
            "env_id": args.env,
            "method": "Diffusion Forcing",
            "metrics": metrics,
            "plans": {name: value.tolist() for name, value in stats.items()},
            "settings": {
                "checkpoint": args.checkpoint,
                "guidance_scale": float(scale),
                "guide_actions_only": args.guide_actions_only,
                "guide_implied_positions": args.guide_implied_positions,
                "action_step": args.action_step,
                "start": list(args.start) if args.start is not None else None,
                "goal": list(args.goal) if args.goal is not None else None,
                "horizon_tokens": tokens,
                "frame_stack": frame_stack,
                "schedule": agent.planner.schedule,
                "mcg_samples": agent.planner.mcg_samples,
                "starts": args.starts,
                "seed": args.seed,
            },
            "seconds": time.perf_counter() - started,
            **provenance(),
        }
        line = (
            f"{args.env} guidance {scale:g}: first step {metrics['first_step_median']:.3f}, inside tokens "
            f"{metrics['inside_step_median']:.3f}, at token boundaries {metrics['boundary_step_median']:.3f} "
            f"({metrics['boundary_to_inside']:.1f}x), final distance to the goal "
            f"{metrics['final_distance_to_goal_median']:.2f}"
        )
        if args.action_step is not None:
            line += (
                f"; actions lead {metrics['action_gap_median']:.2f} from the last predicted position, "
                f"{metrics['implied_final_distance_to_goal_median']:.2f} from the goal"
            )
        print(line)
        if args.record:
            append_record(args.record, record)
        results.append(record)
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
