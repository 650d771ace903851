"""Guidance costs for planning (paper Section 3.4, Appendix B.5). Each takes decoded, unnormalized steps and
returns one cost per plan (lower is better); the sampler differentiates it through the model.
"""

from __future__ import annotations

import numpy as np
import torch

from df_agent.tokens import Tokenizer


def goal_distance_cost(positions: torch.Tensor, goal: torch.Tensor, step_mask: torch.Tensor | None = None):
    """Sum over every planned step of the distance to the goal (Appendix B.5): any step may be the one that
    reaches it, so the plan needs no fixed arrival time. positions (B, L, 2), goal (B, 2), step_mask (B, L)."""
    distance = torch.linalg.vector_norm(positions - goal[:, None, :], dim=-1)
    if step_mask is not None:
        distance = distance * step_mask
    return distance.sum(dim=-1)


def goal_state_cost(
    positions: torch.Tensor,
    velocities: torch.Tensor,
    actions: torch.Tensor,
    goal: torch.Tensor,
    step_mask: torch.Tensor | None = None,
    velocity_weight: float = 0.0,
    action_weight: float = 0.0,
    stay_radius: float = 1.0,
):
    """``goal_distance_cost`` plus a pull toward the goal *state*, at rest with no force, near the goal.

    Per step: d + g * (velocity_weight * |v| + action_weight * |a|), with d the distance to the goal and the gate
    g = exp(-(d / stay_radius)^2) held constant in the gradient. The data never stays at a goal (each goal is
    redrawn on arrival), so the distance alone makes a plan pass through it; the gated terms ask the steps that are
    already close to stop there, without slowing the way there (an ungated speed cost would) and without pushing a
    step away from the goal to open the gate. With both weights 0 this is ``goal_distance_cost``.
    positions, velocities, actions (B, L, 2); goal (B, 2); step_mask (B, L); the weights are numbers or one per
    plan (B,).
    """
    distance = torch.linalg.vector_norm(positions - goal[:, None, :], dim=-1)
    per_step = distance
    velocity_weight = torch.as_tensor(velocity_weight, dtype=distance.dtype, device=distance.device).reshape(-1, 1)
    action_weight = torch.as_tensor(action_weight, dtype=distance.dtype, device=distance.device).reshape(-1, 1)
    if bool((velocity_weight != 0).any() or (action_weight != 0).any()):
        gate = torch.exp(-((distance.detach() / stay_radius) ** 2))
        speed = torch.linalg.vector_norm(velocities, dim=-1)
        force = torch.linalg.vector_norm(actions, dim=-1)
        per_step = per_step + gate * (velocity_weight * speed + action_weight * force)
    if step_mask is not None:
        per_step = per_step * step_mask
    return per_step.sum(dim=-1)


def route_distance_cost(positions: torch.Tensor, route: torch.Tensor, step_mask: torch.Tensor | None = None):
    """Sum over every planned step of its distance to the nearest point of a route (B, K, 2): a corridor around
    the way the data took toward the goal (``df_agent.subgoals.TransitionGraph.routes``). The goal cost pulls every
    step toward the goal in a straight line, through a wall where the way bends; this cost asks each step to stay
    on the way instead, wherever along it. positions (B, L, 2), step_mask (B, L)."""
    distance = torch.cdist(positions, route).amin(dim=-1)
    if step_mask is not None:
        distance = distance * step_mask
    return distance.sum(dim=-1)


def implied_positions(start: torch.Tensor, actions: torch.Tensor, action_step: float) -> torch.Tensor:
    """The positions a plan's actions lead to from ``start`` (B, 2) for a point moved kinematically, each step
    adding ``action_step`` times the action (OGBench's pointmaze: 0.2, ``fit_action_step``), walls ignored:
    (B, L, 2) for actions (B, L, 2).

    A goal cost on the model's predicted positions can move them to the goal while the actions, which are what is
    executed, stay on the data's own course: from a spot beside a medium-stitch goal in a dead end, unguided plans
    end 0.5 units from where their actions lead, plans guided at scale 16-64 7.5-8 units (``scripts/plan_continuity.py
    --action-step``, results/plan_continuity.jsonl), and the point hovers beside the goal (docs/ogbench.md). A goal
    cost on these positions pulls the actions themselves. Walls are ignored, so it is meant for the last stretch,
    where nothing lies between the point and its goal."""
    return start[:, None, :] + action_step * torch.cumsum(actions, dim=1)


def fit_action_step(positions: np.ndarray, next_positions: np.ndarray, actions: np.ndarray) -> float:
    """The least-squares s of next_position - position = s * action over a dataset's rows (N, 2): how far one unit
    of action moves the point in one step (OGBench's pointmaze: 0.2, a little less where walls stop the point)."""
    displacement = np.asarray(next_positions, np.float64) - np.asarray(positions, np.float64)
    actions = np.asarray(actions, np.float64)
    return float((displacement * actions).sum() / max((actions * actions).sum(), 1e-12))


def start_cost(first_observations: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Distance of each plan's first predicted observation from the observation it starts at (B,).

    A plan is conditioned on the current observation only through the model's initial state, so a strong goal
    pull can move its first predicted steps toward the goal, away from where the point is and how fast it moves:
    the plan then believes it is closer and slower than it is, and its actions overshoot (near a goal the point
    circles it). One control step moves the point by at most a few hundredths, so the first predicted observation
    should be the current one; weighting this distance keeps the guided plan consistent with the present.
    first_observations, current (B, obs_dim), unnormalized."""
    return torch.linalg.vector_norm(first_observations - current, dim=-1)


def predicted_reward_cost(rewards: torch.Tensor, step_mask: torch.Tensor | None = None):
    """Negative sum of the predicted rewards (needs the reward slot in the tokens). rewards (B, L)."""
    if step_mask is not None:
        rewards = rewards * step_mask
    return -rewards.sum(dim=-1)


class GoalCost:
    """Token-space cost for the sampler: decode the clean-token prediction, then ``goal_state_cost`` (which is
    ``goal_distance_cost`` while ``velocity_weight`` and ``action_weight`` are 0), plus ``start_weight`` times
    ``start_cost`` from ``start`` (B, obs_dim), the observations the plans start at, when both are given.
    ``origin`` (B, obs_dim): the observations the plans start from, which a relative token layout decodes with.
    ``route`` (B, K, 2) with ``route_weight`` > 0 adds ``route_weight`` times ``route_distance_cost``.
    ``implied_step`` (a number, or one per plan (B,) with NaN for the plans that keep their predicted positions):
    the goal-distance term measures the positions the actions lead to from ``origin`` (``implied_positions``)
    instead of the predicted ones."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        goal: torch.Tensor,
        step_mask: torch.Tensor | None = None,
        velocity_weight: float = 0.0,
        action_weight: float = 0.0,
        stay_radius: float = 1.0,
        start: torch.Tensor | None = None,
        start_weight: float = 0.0,
        origin: torch.Tensor | None = None,
        route: torch.Tensor | None = None,
        route_weight: float = 0.0,
        implied_step: float | torch.Tensor | None = None,
    ):
        if implied_step is not None and origin is None:
            raise ValueError("implied_step measures positions from the plans' start: pass origin")
        if route_weight < 0 or (route_weight > 0 and route is None):
            raise ValueError(f"route_weight must be >= 0 and needs the route, got {route_weight}")
        if np.any(np.asarray(velocity_weight) < 0) or np.any(np.asarray(action_weight) < 0) or stay_radius <= 0:
            raise ValueError(
                f"velocity_weight and action_weight must be >= 0 and stay_radius > 0, got {velocity_weight}, "
                f"{action_weight}, {stay_radius}"
            )
        if start_weight < 0 or (start_weight > 0 and start is None):
            raise ValueError(f"start_weight must be >= 0 and needs the start observations, got {start_weight}")
        self.tokenizer = tokenizer
        self.goal = goal
        self.step_mask = step_mask
        self.velocity_weight = velocity_weight
        self.action_weight = action_weight
        self.stay_radius = stay_radius
        self.start = start
        self.start_weight = start_weight
        self.origin = origin
        self.route = route
        self.route_weight = route_weight
        self.implied_step = implied_step

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        goal, mask, start, origin, route = self.goal, self.step_mask, self.start, self.origin, self.route
        velocity_weight, action_weight, implied_step = self.velocity_weight, self.action_weight, self.implied_step
        if len(tokens) != len(goal):  # Monte Carlo Guidance stacks several futures per plan
            repeats = len(tokens) // len(goal)
            goal = goal.repeat(repeats, 1)
            mask = mask.repeat(repeats, 1) if mask is not None else None
            start = start.repeat(repeats, 1) if start is not None else None
            origin = origin.repeat(repeats, 1) if origin is not None else None
            route = route.repeat(repeats, 1, 1) if route is not None else None
            velocity_weight, action_weight = _repeat(velocity_weight, repeats), _repeat(action_weight, repeats)
            implied_step = _repeat(implied_step, repeats)
        steps = self.tokenizer.decode(tokens, origin)
        observations = steps["next_observations"]
        positions = observations[..., :2]
        if implied_step is not None:
            step = torch.as_tensor(implied_step, dtype=positions.dtype, device=positions.device).reshape(-1, 1, 1)
            implied = implied_positions(origin[:, :2], steps["actions"], torch.nan_to_num(step))
            positions = torch.where(torch.isnan(step), positions, implied)
        cost = goal_state_cost(
            positions,
            observations[..., 2:4],
            steps["actions"],
            goal,
            None if mask is None else mask[:, : observations.shape[1]],
            velocity_weight,
            action_weight,
            self.stay_radius,
        )
        if self.start_weight > 0:
            cost = cost + self.start_weight * start_cost(observations[:, 0], start)
        if self.route_weight > 0:
            route_mask = None if mask is None else mask[:, : observations.shape[1]]
            cost = cost + self.route_weight * route_distance_cost(observations[..., :2], route, route_mask)
        return cost


def _repeat(weight, repeats: int):
    """A per-plan weight (B,) repeated for the stacked MCG futures; a plain number as it is."""
    return weight.repeat(repeats) if isinstance(weight, torch.Tensor) and weight.dim() > 0 else weight


class RewardCost:
    """Token-space cost: decode, then ``predicted_reward_cost``. ``origin`` as in ``GoalCost``."""

    def __init__(self, tokenizer: Tokenizer, step_mask: torch.Tensor | None = None, origin: torch.Tensor | None = None):
        if not tokenizer.layout.use_reward:
            raise ValueError("reward guidance needs tokens with the reward slot (use_reward=True)")
        self.tokenizer = tokenizer
        self.step_mask = step_mask
        self.origin = origin

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        origin = self.origin
        if origin is not None and len(origin) != len(tokens):
            origin = origin.repeat(len(tokens) // len(origin), 1)
        rewards = self.tokenizer.decode(tokens, origin)["rewards"]
        mask = self.step_mask
        if mask is not None and len(mask) != len(rewards):
            mask = mask.repeat(len(rewards) // len(mask), 1)
        return predicted_reward_cost(rewards, None if mask is None else mask[:, : rewards.shape[1]])
