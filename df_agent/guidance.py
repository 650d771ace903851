"""Guidance costs for planning (paper Section 3.4, Appendix B.5). Each takes decoded, unnormalized steps and
returns one cost per plan (lower is better); the sampler differentiates it through the model.
"""

from __future__ import annotations

import torch

from df_agent.tokens import Tokenizer


def goal_distance_cost(positions: torch.Tensor, goal: torch.Tensor, step_mask: torch.Tensor | None = None):
    """Sum over every planned step of the distance to the goal (Appendix B.5): any step may be the one that
    reaches it, so the plan needs no fixed arrival time. positions (B, L, 2), goal (B, 2), step_mask (B, L)."""
    distance = torch.linalg.vector_norm(positions - goal[:, None, :], dim=-1)
    if step_mask is not None:
        distance = distance * step_mask
    return distance.sum(dim=-1)


def predicted_reward_cost(rewards: torch.Tensor, step_mask: torch.Tensor | None = None):
    """Negative sum of the predicted rewards (needs the reward slot in the tokens). rewards (B, L)."""
    if step_mask is not None:
        rewards = rewards * step_mask
    return -rewards.sum(dim=-1)


class GoalCost:
    """Token-space cost for the sampler: decode the clean-token prediction, then ``goal_distance_cost``."""

    def __init__(self, tokenizer: Tokenizer, goal: torch.Tensor, step_mask: torch.Tensor | None = None):
        self.tokenizer = tokenizer
        self.goal = goal
        self.step_mask = step_mask

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = self.tokenizer.decode(tokens)["next_observations"][..., :2]
        goal, mask = self.goal, self.step_mask
        if len(tokens) != len(goal):  # Monte Carlo Guidance stacks several futures per plan
            repeats = len(tokens) // len(goal)
            goal = goal.repeat(repeats, 1)
            mask = mask.repeat(repeats, 1) if mask is not None else None
        return goal_distance_cost(positions, goal, None if mask is None else mask[:, : positions.shape[1]])


class RewardCost:
    """Token-space cost: decode, then ``predicted_reward_cost``."""

    def __init__(self, tokenizer: Tokenizer, step_mask: torch.Tensor | None = None):
        if not tokenizer.layout.use_reward:
            raise ValueError("reward guidance needs tokens with the reward slot (use_reward=True)")
        self.tokenizer = tokenizer
        self.step_mask = step_mask

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        rewards = self.tokenizer.decode(tokens)["rewards"]
        mask = self.step_mask
        if mask is not None and len(mask) != len(rewards):
            mask = mask.repeat(len(rewards) // len(mask), 1)
        return predicted_reward_cost(rewards, None if mask is None else mask[:, : rewards.shape[1]])
