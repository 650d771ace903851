"""Tokens for decision making (paper Section 3.4, Appendix D.6): each step is [a_t, r_t, o_{t+1}], the reward slot
optional, ``frame_stack`` consecutive steps stacked into one token, every dimension z-scored with dataset
statistics. The inverse maps tokens back to actions, rewards and next observations exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TokenLayout:
    """Shape of a token: ``frame_stack`` steps of [action, (reward), next observation]."""

    action_dim: int = 2
    obs_dim: int = 4
    frame_stack: int = 10
    use_reward: bool = False
    goal_dim: int = 0
    """size of the goal the model is conditioned on, appended to the observation its initial state is encoded from
    (0: not goal-conditioned, the paper's model; 2: the goal position, scaled like the observation's position)"""
    relative_positions: bool = False
    """store each next observation's position (its first two entries) relative to the *origin*, the observation the
    token sequence starts from (a training window's first observation, a plan's current one), so a plan starts where
    the point is by construction; the model still sees the origin's absolute position through its initial state.
    ``encode`` and ``decode`` then need the origin"""

    @property
    def condition_dim(self) -> int:
        """size of the vector the model's initial state is encoded from: the observation, then the goal"""
        return self.obs_dim + self.goal_dim

    @property
    def step_dim(self) -> int:
        return self.action_dim + int(self.use_reward) + self.obs_dim

    @property
    def token_dim(self) -> int:
        return self.frame_stack * self.step_dim


class Tokenizer:
    """Builds normalized tokens from steps and decodes them back; holds the dataset statistics.

    Works on numpy arrays and on torch tensors (differentiably, for guidance costs).
    """

    def __init__(self, layout: TokenLayout, step_mean: np.ndarray, step_std: np.ndarray):
        self.layout = layout
        self.step_mean = np.asarray(step_mean, dtype=np.float32)
        self.step_std = np.asarray(step_std, dtype=np.float32)
        if self.step_mean.shape != (layout.step_dim,) or self.step_std.shape != (layout.step_dim,):
            raise ValueError(f"statistics must have shape ({layout.step_dim},) for {layout}")
        if not np.all(self.step_std > 0):
            raise ValueError("every standard deviation must be positive")

    @classmethod
    def fit(cls, layout: TokenLayout, actions, next_observations, rewards=None) -> Tokenizer:
        """Per-dimension mean and std of the steps in a dataset (std floored to avoid dividing by ~0)."""
        steps = cls._concat(layout, np.asarray(actions), np.asarray(next_observations), rewards)
        return cls(layout, steps.mean(axis=0), np.maximum(steps.std(axis=0), 1e-3))

    @staticmethod
    def _concat(layout: TokenLayout, actions, next_observations, rewards):
        lib = torch if isinstance(actions, torch.Tensor) else np
        parts = [actions]
        if layout.use_reward:
            if rewards is None:
                raise ValueError("this layout has a reward slot: pass rewards")
            parts.append(rewards[..., None])
        parts.append(next_observations)
        return lib.concatenate(parts, axis=-1) if lib is np else torch.cat(parts, dim=-1)

    # --- observations (the current observation feeds the z0 encoder with the same statistics as o_{t+1}) ---
    def _obs_stats(self, like):
        mean, std = self.step_mean[-self.layout.obs_dim :], self.step_std[-self.layout.obs_dim :]
        if isinstance(like, torch.Tensor):
            return torch.as_tensor(mean, device=like.device), torch.as_tensor(std, device=like.device)
        return mean, std

    def normalize_obs(self, obs):
        mean, std = self._obs_stats(obs)
        return (obs - mean) / std

    def condition(self, obs, goal=None):
        """What the model's initial state is encoded from: the normalized observation (B, obs_dim), followed for a
        goal-conditioned layout by the goal (B, goal_dim) normalized with the statistics of the observation's first
        ``goal_dim`` entries (the position), (B, condition_dim)."""
        normalized = self.normalize_obs(obs)
        goal_dim = self.layout.goal_dim
        if goal_dim == 0:
            return normalized
        if goal is None:
            raise ValueError(f"this model is goal-conditioned: pass the goal ({goal_dim} values per observation)")
        if goal.shape[-1] != goal_dim or goal.shape[:-1] != obs.shape[:-1]:
            raise ValueError(f"goal must have shape {(*obs.shape[:-1], goal_dim)}, got {tuple(goal.shape)}")
        mean, std = self._obs_stats(obs)
        goal = (goal - mean[:goal_dim]) / std[:goal_dim]
        return (
            torch.cat([normalized, goal], dim=-1)
            if isinstance(obs, torch.Tensor)
            else np.concatenate([normalized, goal.astype(normalized.dtype)], axis=-1)
        )

    # --- steps <-> tokens ---
    def _origin_shift(self, origin, steps):
        """What ``decode`` adds to the unnormalized steps (..., L, step_dim) of a relative layout, (..., 1, step_dim):
        the origin's position minus the dataset's mean position on the position slots, 0 elsewhere. ``encode``
        subtracts it, so a relative position is normalized with the absolute positions' std, centred on 0."""
        if origin is None:
            raise ValueError(
                "this layout stores positions relative to the origin: pass origin (the observations "
                "the token sequences start from)"
            )
        layout = self.layout
        first = layout.action_dim + int(layout.use_reward)
        if isinstance(steps, torch.Tensor):
            origin = torch.as_tensor(origin, dtype=steps.dtype, device=steps.device)
            shift = torch.zeros((*origin.shape[:-1], 1, layout.step_dim), dtype=steps.dtype, device=steps.device)
        else:
            origin = np.asarray(origin, dtype=steps.dtype)
            shift = np.zeros((*origin.shape[:-1], 1, layout.step_dim), dtype=steps.dtype)
        if origin.shape[:-1] != steps.shape[:-2]:
            raise ValueError(f"origin must have shape {(*steps.shape[:-2], layout.obs_dim)}, got {tuple(origin.shape)}")
        mean = self._stats(steps)[0][first : first + 2]
        shift[..., 0, first : first + 2] = origin[..., :2] - mean
        return shift

    def encode(self, actions, next_observations, rewards=None, origin=None):
        """Steps (..., L, ·) with L a multiple of ``frame_stack`` -> normalized tokens (..., L / F, token_dim).
        ``origin`` (..., obs_dim): the observations the sequences start from (relative layouts only)."""
        steps = self._concat(self.layout, actions, next_observations, rewards)
        length = steps.shape[-2]
        if length % self.layout.frame_stack:
            raise ValueError(f"{length} steps do not fill tokens of {self.layout.frame_stack} steps")
        mean, std = self._stats(steps)
        if self.layout.relative_positions:
            steps = steps - self._origin_shift(origin, steps)
        steps = (steps - mean) / std
        return steps.reshape(*steps.shape[:-2], length // self.layout.frame_stack, self.layout.token_dim)

    def decode(self, tokens, origin=None) -> dict:
        """Normalized tokens (..., T, token_dim) -> dict of actions, next_observations (and rewards), (..., T*F, ·).
        ``origin`` (..., obs_dim): the observations the sequences start from (relative layouts only)."""
        layout = self.layout
        steps = tokens.reshape(*tokens.shape[:-2], tokens.shape[-2] * layout.frame_stack, layout.step_dim)
        mean, std = self._stats(steps)
        steps = steps * std + mean
        if layout.relative_positions:
            steps = steps + self._origin_shift(origin, steps)
        out = {"actions": steps[..., : layout.action_dim], "next_observations": steps[..., -layout.obs_dim :]}
        if layout.use_reward:
            out["rewards"] = steps[..., layout.action_dim]
        return out

    def reorigin(self, tokens, origin, new_origin):
        """Normalized tokens (..., T, token_dim) of a relative layout, relative to ``origin`` (..., obs_dim), as
        tokens relative to ``new_origin``: the same absolute plan seen from another start (a warm start's)."""
        if not self.layout.relative_positions:
            raise ValueError("reorigin is for layouts with relative positions; absolute tokens need no change")
        out = self.decode(tokens, origin)
        return self.encode(out["actions"], out["next_observations"], out.get("rewards"), origin=new_origin)

    def _stats(self, like):
        if isinstance(like, torch.Tensor):
            return (
                torch.as_tensor(self.step_mean, device=like.device, dtype=like.dtype),
                torch.as_tensor(self.step_std, device=like.device, dtype=like.dtype),
            )
        return self.step_mean, self.step_std

    def action_mask(self) -> np.ndarray:
        """(token_dim,) 1.0 on the action slots of every step of a token, 0.0 elsewhere."""
        layout = self.layout
        step = np.zeros(layout.step_dim, dtype=np.float32)
        step[: layout.action_dim] = 1.0
        return np.tile(step, layout.frame_stack)

    # --- persistence (travels inside checkpoints) ---
    def state_dict(self) -> dict:
        return {"layout": asdict(self.layout), "step_mean": self.step_mean.tolist(), "step_std": self.step_std.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict) -> Tokenizer:
        return cls(TokenLayout(**state["layout"]), np.asarray(state["step_mean"]), np.asarray(state["step_std"]))
