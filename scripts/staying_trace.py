"""Diagnostic: where a maze2d agent loses its staying score.

After the point first comes within the goal radius (0.5), every step it spends outside costs a reward. This script
runs the shipped agent (its planner and data-graph subgoals, as ``df_maze2d.py --eval-only --checkpoint pretrained``
runs it) on held-out episodes through the shared evaluation, records every position, and counts per episode the steps
outside the radius after the first arrival: in all, and those spent beside a wall (within ``--wall-margin`` of a wall
cell's edge, the point's own radius of 0.1 included). Then it replans, unguided, from up to ``--states`` states of each
kind (beside a wall after arrival, at the goal after arrival, circling it 0.5-1.0 away after arrival, and on the way,
over 2.0 from the goal before arrival) and measures how far the model's first predicted position lies from the point
and its first predicted velocity from the point's (one control step changes the velocity by under 0.1): a model that
imagines the point elsewhere, or moving otherwise, plans actions for that other state. For a goal-conditioned model
it measures the states at and around the goal again with the model's goal input moved ``--goal-input-distance`` from
the point along its ray through the goal, which tells whether a goal input beside the point is what misleads it. One
record, ``"benchmark": "diagnostic"``.

    python scripts/staying_trace.py --env maze2d-umaze-multi --seed 100 --episodes 200 \
        --record results/staying_trace.jsonl
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import tyro

import envs
from df_agent import Agent
from df_agent.agent import goal_input_along_ray
from df_agent.presets import maze_planner
from df_agent.subgoals import SubgoalPolicy
from envs.evaluation import evaluate
from envs.mazes import Maze
from envs.records import append_record, provenance
from envs.tasks import GOAL_RADIUS


@dataclass
class Args:
    env: str = "maze2d-umaze-multi"
    """maze2d task id (short forms work)"""
    checkpoint: str = "pretrained"
    """agent file or training checkpoint, or 'pretrained' for the packaged agent; planned with the maze's
    planner and subgoals (df_agent.presets)"""
    episodes: int = 200
    """episodes traced"""
    seed: int = 100
    """seed of the first episode (held out: >= 100)"""
    wall_margin: float = 0.05
    """a position is beside a wall when the point's edge (radius 0.1) is within this of a wall cell's edge"""
    states: int = 64
    """states replanned from, per kind, to measure the first predicted position and velocity"""
    goal_input_distance: float = 2.5
    """goal-conditioned models: how far from the point the moved goal input lies (on its ray through the goal)"""
    num_threads: int = 1
    """torch threads"""
    record: str | None = None
    """append the record to this file"""


def beside_wall(maze: Maze, xy: np.ndarray, margin: float) -> np.ndarray:
    """(...,) bool: positions (..., 2) whose point (radius 0.1) comes within ``margin`` of the edge of a wall cell
    next to its own cell (cells are 1 unit wide; row 0 is the top, at positive y)."""
    xy = np.asarray(xy, dtype=np.float64)
    cells = maze.xy_to_cell(xy)
    centres = maze.cell_to_xy(cells)
    offset = xy - centres  # in [-0.5, 0.5] per axis
    reach = 0.5 - 0.1 - margin  # how far from its cell's centre the point may go before it is beside the edge
    walls = maze.walls
    height, width = walls.shape
    near = np.zeros(xy.shape[:-1], dtype=bool)
    # (row step, col step, axis of the offset, sign): left, right, up (+y, row - 1), down (-y, row + 1)
    for d_row, d_col, axis, sign in ((0, -1, 0, -1), (0, 1, 0, 1), (-1, 0, 1, 1), (1, 0, 1, -1)):
        row = np.clip(cells[..., 0] + d_row, 0, height - 1)
        col = np.clip(cells[..., 1] + d_col, 0, width - 1)
        near |= walls[row, col] & (sign * offset[..., axis] > reach)
    return near


def after_arrival(distance: np.ndarray, radius: float = GOAL_RADIUS) -> np.ndarray:
    """(episodes, steps) bool: the steps after an episode's first step within ``radius`` of its goal (all False for
    an episode that never arrives)."""
    inside = distance <= radius
    first = np.where(inside.any(axis=1), inside.argmax(axis=1), distance.shape[1])
    return np.arange(distance.shape[1])[None] > first[:, None]


def outside_after_arrival(distance: np.ndarray, radius: float = GOAL_RADIUS) -> np.ndarray:
    """(episodes, steps) bool: the steps after the first arrival at which the point is outside ``radius`` again."""
    return after_arrival(distance, radius) & (distance > radius)


def first_step_errors(agent: Agent, observations: np.ndarray, goals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B,) each: the distance from each point to its unguided plan's first predicted position, and from the point's
    velocity to the plan's first predicted velocity. ``goals`` only condition a goal-conditioned model (unguided)."""
    if len(observations) == 0:
        return np.zeros(0), np.zeros(0)
    plan = agent.plan(observations, goals, guidance_scale=0.0)
    offset = np.linalg.norm(plan.positions[:, 0] - observations[:, :2], axis=-1)
    velocity = np.linalg.norm(plan.observations[:, 0, 2:4] - observations[:, 2:4], axis=-1)
    return offset, velocity


def main(args: Args) -> dict:
    torch.set_num_threads(args.num_threads)
    task = envs.get_task(args.env)
    maze = Maze.from_name(task.maze)
    # the maze's planner and subgoals (a training checkpoint carries no planner; a shipped agent's is the same)
    planner = maze_planner(task.maze, episode_length=task.max_episode_steps, seed=1)
    agent = Agent.for_task(args.checkpoint, task.env_id, **asdict(planner))
    policy = SubgoalPolicy.for_task(agent, task.env_id)
    batches: list[list[tuple[np.ndarray, np.ndarray]]] = []

    class Recorder:  # the policy, recording each step's observation and goal
        def reset(self, num_envs):
            batches.append([])
            policy.reset(num_envs)

        def __call__(self, obs):
            batches[-1].append((np.array(obs["observation"]), np.array(obs["desired_goal"])))
            return policy(obs)

    started = time.perf_counter()
    result = evaluate(Recorder(), task.env_id, num_episodes=args.episodes, seed=args.seed)
    # (episodes, steps, ·): the observation each step acted on, and its goal; a last batch may carry padding envs
    observations = np.concatenate([np.stack([o for o, _ in batch], axis=1) for batch in batches])[: args.episodes]
    goals = np.concatenate([np.stack([g for _, g in batch], axis=1) for batch in batches])[: args.episodes]
    distance = np.linalg.norm(observations[..., :2] - goals, axis=-1)
    outside = outside_after_arrival(distance)
    at_goal_after = after_arrival(distance) & (distance <= GOAL_RADIUS)
    walled = outside & beside_wall(maze, observations[..., :2], args.wall_margin)
    rng = np.random.default_rng(args.seed)

    def pick(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        episode, step = np.nonzero(mask)
        chosen = rng.permutation(len(episode))[: args.states]
        return observations[episode[chosen], step[chosen]].astype(np.float32), goals[episode[chosen], step[chosen]]

    kinds = {
        "beside_wall": walled,
        "at_goal": at_goal_after & ~beside_wall(maze, observations[..., :2], 0.0),
        "circling": after_arrival(distance) & (distance > GOAL_RADIUS) & (distance < 2 * GOAL_RADIUS),
        "on_the_way": ~after_arrival(distance) & (distance > 4 * GOAL_RADIUS),
    }

    def mean(values: np.ndarray) -> float | None:
        return float(values.mean()) if len(values) else None

    estimates = {}
    for kind, mask in kinds.items():
        states, state_goals = pick(mask)
        offset, velocity = first_step_errors(agent, states, state_goals)
        estimates[f"first_step_offset_{kind}"] = mean(offset)
        estimates[f"first_step_velocity_error_{kind}"] = mean(velocity)
        estimates[f"states_{kind}"] = len(states)
        if agent.tokenizer.layout.goal_dim and kind in ("at_goal", "circling"):
            moved = goal_input_along_ray(states[:, :2], state_goals, args.goal_input_distance)
            offset, velocity = first_step_errors(agent, states, moved)
            estimates[f"first_step_offset_{kind}_goal_input_moved"] = mean(offset)
            estimates[f"first_step_velocity_error_{kind}_goal_input_moved"] = mean(velocity)
    outside_steps, walled_steps = outside.sum(axis=1), walled.sum(axis=1)
    metrics = {
        "normalized_score": float(result.normalized_scores.mean()),
        "steps_outside_after_arrival": float(outside_steps.mean()),
        "steps_outside_beside_wall": float(walled_steps.mean()),
        "share_outside_beside_wall": float(walled_steps.sum() / max(1, outside_steps.sum())),
        "episodes_over_20_steps_outside": int((outside_steps > 20).sum()),
        **estimates,
    }
    record = {
        "benchmark": "diagnostic",
        "kind": "staying_trace",
        "method": "Diffusion Forcing",
        "env_id": task.env_id,
        "metrics": metrics,
        "episodes": {
            "seeds": result.seeds,
            "steps_outside_after_arrival": outside_steps.tolist(),
            "steps_outside_beside_wall": walled_steps.tolist(),
            "goals": goals[:, 0].round(3).tolist(),
        },
        "settings": {
            "checkpoint": args.checkpoint,
            "wall_margin": args.wall_margin,
            "states": args.states,
            "goal_input_distance": args.goal_input_distance,
            **asdict(agent.planner),
            **policy.settings(),
        },
        "seconds": time.perf_counter() - started,
        "model": agent.training,
        **provenance(),
    }
    print(
        f"{task.env_id}: {metrics['steps_outside_after_arrival']:.1f} steps outside the goal after arrival per "
        f"episode, {100 * metrics['share_outside_beside_wall']:.0f}% of them beside a wall"
    )
    for kind in kinds:
        offset, velocity = metrics[f"first_step_offset_{kind}"], metrics[f"first_step_velocity_error_{kind}"]
        if offset is None:  # no state of this kind
            continue
        line = (
            f"  {kind.replace('_', ' ')} ({metrics[f'states_{kind}']} states): first predicted position "
            f"{offset:.2f} from the point, first predicted velocity {velocity:.2f} from its velocity"
        )
        if metrics.get(f"first_step_offset_{kind}_goal_input_moved") is not None:
            line += (
                f"; goal input moved out: {metrics[f'first_step_offset_{kind}_goal_input_moved']:.2f} / "
                f"{metrics[f'first_step_velocity_error_{kind}_goal_input_moved']:.2f}"
            )
        print(line)
    if args.record:
        append_record(args.record, record)
    return record


if __name__ == "__main__":
    main(tyro.cli(Args))
