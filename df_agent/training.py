"""Training Diffusion Forcing (paper Algorithm 1): windows of tokens, an independent noise level per token drawn
uniformly from {0, ..., K}, MSE on the clean-token target, AdamW with linear warm-up, optional EMA, checkpoints
that resume exactly.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from df_agent.checkpoints import read_checkpoint_file, save_atomically
from df_agent.diffusion import NoiseSchedule
from df_agent.model import CausalModel, ModelConfig, build_model
from df_agent.tokens import Tokenizer, TokenLayout

CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    window_tokens: int = 30
    """tokens per training window (each token is frame_stack steps)"""
    batch_size: int = 128
    learning_rate: float = 2e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    """0 disables EMA"""
    prediction: str = "x0"
    noise_schedule: str = "linear"
    num_levels: int = 1000


def window_starts(segment_ids, num_steps: int) -> np.ndarray:
    """Indices i where rows i .. i + num_steps - 1 all lie in one continuous segment (one window each)."""
    segment_ids = np.asarray(segment_ids)
    n = len(segment_ids)
    if n < num_steps:
        raise ValueError(f"the dataset has {n} steps, fewer than one window of {num_steps}")
    starts = np.flatnonzero(segment_ids[num_steps - 1 :] == segment_ids[: n - num_steps + 1])
    if len(starts) == 0:
        raise ValueError(f"no continuous stretch of the dataset is {num_steps} steps long; use shorter windows")
    return starts


def coverage_weights(
    positions: np.ndarray, starts: np.ndarray, num_steps: int, cell: float, power: float
) -> np.ndarray:
    """Sampling probabilities of windows (one per start) that favour the places the data visits rarely: each window
    weighs the mean over its ``num_steps`` rows of c^-power, c the number of rows of the dataset in the row's
    ``cell``-sized grid cell. Power 0 is uniform; with power 1 every grid cell gets about the same share of the rows
    trained on. A goal at the end of a dead end is reached only by the few trajectories that start or end there, and a
    model trained on uniform windows has seen too little of the way in to plan it (docs/ogbench.md).
    positions (N, 2) of the rows; returns (len(starts),) probabilities summing to 1."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError(f"positions must have shape (N, 2), got {positions.shape}")
    if not cell > 0 or not power >= 0:
        raise ValueError(f"cell must be > 0 and power >= 0, got {cell} and {power}")
    _, cell_of, counts = np.unique(
        np.floor(positions / cell).astype(np.int64), axis=0, return_inverse=True, return_counts=True
    )
    row_weights = counts[cell_of.reshape(-1)].astype(np.float64) ** -float(power)
    window_sums = np.convolve(row_weights, np.ones(num_steps), mode="valid")  # per possible start: rows i .. i + n - 1
    weights = window_sums[np.asarray(starts)]
    return weights / weights.sum()


class WindowSampler:
    """Random windows of ``num_steps`` consecutive steps from a dataset's continuous segments.

    ``observations``/``actions``/``next_observations``/``rewards`` are the flat arrays of ``envs.Transitions``;
    ``segment_ids`` marks stretches where each row follows the previous one in time. With ``goals`` (the goal each
    row's episode pursued), a batch also holds each window's goal: the one its first step pursued, for goal-conditioned
    models (``TokenLayout.goal_dim``). In maze2d's data an episode ends where it reaches its goal, so that goal is also
    a hindsight goal: a state the window's trajectory does reach. With ``hindsight_steps`` instead, each window's goal
    is the position (the first two entries of the observation) its trajectory reaches d steps after its start, d drawn
    uniformly from 1..hindsight_steps and cut at the end of the window's continuous segment: hindsight relabelling, for
    data whose goals are not kept or not reached (OGBench's). With ``balance_power`` > 0 windows are drawn with
    ``coverage_weights`` (the rarely visited places more often, grid cell ``balance_cell``) instead of uniformly. With
    ``device`` the arrays are held there as tensors
    and windows are gathered there (on a GPU, gathering a batch on the CPU and copying it over costs more than the
    training step); the windows drawn are the same either way, since ``rng`` picks them.
    """

    def __init__(
        self,
        observations,
        actions,
        next_observations,
        rewards,
        segment_ids,
        num_steps: int,
        device: torch.device | str | None = None,
        goals=None,
        hindsight_steps: int | None = None,
        balance_power: float = 0.0,
        balance_cell: float = 4.0,
    ):
        self.num_steps = num_steps
        self.starts = window_starts(segment_ids, num_steps)
        self._cumulative = None  # uniform windows
        if balance_power > 0:
            positions = np.asarray(observations)[:, :2]
            probabilities = coverage_weights(positions, self.starts, num_steps, balance_cell, balance_power)
            self._cumulative = np.cumsum(probabilities)
        if hindsight_steps is not None:
            if hindsight_steps < 1:
                raise ValueError(
                    f"hindsight_steps must be at least 1 (None: the episodes' goals), got {hindsight_steps}"
                )
            segment_ids = np.asarray(segment_ids)
            last_rows = np.r_[np.flatnonzero(np.diff(segment_ids) != 0), len(segment_ids) - 1]
            segment_index = np.r_[0, np.cumsum(np.diff(segment_ids) != 0)]
            self._start_last_rows = last_rows[segment_index[self.starts]]  # per start: its segment's last row
            goals = np.asarray(next_observations)[:, :2]  # row i: the position after step i
        self.hindsight_steps = hindsight_steps
        self.device = torch.device(device) if device is not None else None
        arrays = [np.asarray(a, dtype=np.float32) for a in (observations, actions, next_observations, rewards)]
        self.goals = None if goals is None else np.asarray(goals, dtype=np.float32)
        if self.device is not None:
            arrays = [torch.as_tensor(a, device=self.device) for a in arrays]
            self._offsets = torch.arange(num_steps, device=self.device)
            self.goals = None if self.goals is None else torch.as_tensor(self.goals, device=self.device)
        self.observations, self.actions, self.next_observations, self.rewards = arrays

    @classmethod
    def from_transitions(
        cls,
        data,
        num_steps: int,
        device: torch.device | str | None = None,
        with_goals: bool = False,
        hindsight_steps: int | None = None,
        balance_power: float = 0.0,
        balance_cell: float = 4.0,
    ) -> WindowSampler:
        """Windows of an ``envs.datasets.Transitions``; with ``with_goals`` each window also carries the goal of its
        episode, with ``hindsight_steps`` a hindsight goal (only goal-conditioned models read goals: an unconditioned
        one neither holds nor gathers them)."""
        return cls(
            data.observations,
            data.actions,
            data.next_observations,
            data.rewards,
            data.segment_ids,
            num_steps,
            device,
            goals=data.goals if with_goals else None,
            hindsight_steps=hindsight_steps,
            balance_power=balance_power,
            balance_cell=balance_cell,
        )

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict:
        """A batch of windows: numpy arrays, or tensors on ``device`` when the sampler has one; ``goals`` (B, 2)
        when the sampler has goals."""
        if self._cumulative is None:
            chosen = rng.integers(len(self.starts), size=batch_size)
        else:  # coverage-balanced windows (``coverage_weights``)
            drawn = rng.random(batch_size) * self._cumulative[-1]
            chosen = np.minimum(np.searchsorted(self._cumulative, drawn, side="right"), len(self.starts) - 1)
        starts = self.starts[chosen]
        goal_rows = starts
        if self.hindsight_steps is not None:  # drawn after the windows, which stay those drawn without it
            ahead = rng.integers(1, self.hindsight_steps + 1, size=batch_size)
            goal_rows = np.minimum(starts + ahead - 1, self._start_last_rows[chosen])
        if self.device is None:
            rows = starts[:, None] + np.arange(self.num_steps)[None, :]
        else:
            starts = torch.as_tensor(starts, device=self.device)
            goal_rows = torch.as_tensor(goal_rows, device=self.device)
            rows = starts[:, None] + self._offsets[None, :]
        batch = {
            "obs": self.observations[starts],
            "actions": self.actions[rows],
            "next_observations": self.next_observations[rows],
            "rewards": self.rewards[rows],
        }
        if self.goals is not None:
            batch["goals"] = self.goals[goal_rows]
        return batch


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter (both modules of the same architecture)."""
    for ema_parameter, parameter in zip(ema.parameters(), model.parameters(), strict=True):
        ema_parameter.lerp_(parameter, 1.0 - decay)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TrainingForward(torch.nn.Module):
    """The training forward pass as one module call: z_0 from the observation, then the roll-out over the noisy
    tokens. ``Trainer.loss`` goes through it so that a wrapper hooking ``forward`` (``DistributedDataParallel``)
    sees every parameter of the model in one call."""

    def __init__(self, model: CausalModel):
        super().__init__()
        self.model = model

    def forward(self, obs: torch.Tensor, noisy: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        output, _ = self.model(self.model.initial_latent(obs), noisy, levels)
        return output


class Trainer:
    """Owns the model, its EMA copy, the optimizer and the step count; ``save``/``load`` resume exactly.

    Two settings are not part of checkpoints, since they concern the hardware rather than the experiment:
    ``wrap`` (e.g. ``DistributedDataParallel``) and ``autocast_dtype`` (mixed precision of the training forward
    pass).
    """

    def __init__(
        self,
        model_config: ModelConfig,
        tokenizer: Tokenizer,
        config: TrainConfig,
        device: torch.device | str | None = None,
        seed: int = 0,
    ):
        if config.prediction not in ("x0", "epsilon", "v"):
            raise ValueError(f"prediction must be 'x0', 'epsilon' or 'v', got {config.prediction!r}")
        if model_config.token_dim != tokenizer.layout.token_dim:
            raise ValueError("model token_dim does not match the tokenizer's layout")
        if model_config.obs_dim != tokenizer.layout.condition_dim:
            raise ValueError(
                f"model obs_dim {model_config.obs_dim} does not match the layout's observation and goal "
                f"({tokenizer.layout.condition_dim})"
            )
        self.device = torch.device(device) if device is not None else default_device()
        self.config = config
        self.tokenizer = tokenizer
        with torch.random.fork_rng(devices=[]):  # the initial weights from ``seed``, the caller's RNG untouched
            torch.manual_seed(seed)
            self.model = build_model(model_config)
        self.model = self.model.to(self.device)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False) if config.ema_decay > 0 else None
        self.schedule = NoiseSchedule(config.num_levels, config.noise_schedule).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.step = 0
        self.train_seconds = 0.0
        """wall time spent training, over every session of this run (resumes add to it): each step counts from the
        previous step's end, so drawing batches, logging and checkpoints between steps count too"""
        self._previous_step_end: float | None = None
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.forward_module: torch.nn.Module = TrainingForward(self.model)
        """what ``loss`` calls: ``TrainingForward(model)``, or that module wrapped by ``wrap``"""
        self.autocast_dtype: torch.dtype | None = None
        """autocast the training forward pass to this dtype (e.g. ``torch.bfloat16``); None: float32 throughout.
        The loss, the optimizer, the EMA and planning stay float32 either way."""

    def wrap(self, wrapper: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Run the training forward pass through ``wrapper(forward_module)``, e.g.
        ``trainer.wrap(lambda m: DistributedDataParallel(m))``. The parameters, the optimizer, the EMA and the
        checkpoints stay those of the unwrapped ``model``, so checkpoints load without the wrapper."""
        self.forward_module = wrapper(self.forward_module)

    def unwrap(self) -> None:
        """Undo ``wrap``: back to the plain ``TrainingForward(model)``. A DistributedDataParallel wrapper holds its
        process group; dropping it before ``torch.distributed.destroy_process_group`` frees the group while Python is
        still running, rather than at interpreter exit, where gloo's teardown can abort the process."""
        self.forward_module = TrainingForward(self.model)

    def reseed(self, seed: int) -> None:
        """Restart the streams that draw windows (``rng``) and noise (``generator``) from ``seed``."""
        self.rng = np.random.default_rng(seed)
        self.generator.manual_seed(seed)

    @property
    def sampling_model(self) -> CausalModel:
        """The weights to plan with: the EMA copy when EMA is on."""
        return self.ema_model if self.ema_model is not None else self.model

    def learning_rate(self) -> float:
        warm = min(1.0, (self.step + 1) / max(1, self.config.warmup_steps))
        return self.config.learning_rate * warm

    def loss(self, batch: dict) -> torch.Tensor:
        """Algorithm 1 on one batch: noise every token to its own uniformly drawn level, predict, MSE."""
        device = self.device
        tokens = torch.as_tensor(
            self.tokenizer.encode(batch["actions"], batch["next_observations"], batch["rewards"], origin=batch["obs"]),
            device=device,
        )
        goals = batch.get("goals")
        if self.tokenizer.layout.goal_dim and goals is None:
            raise ValueError("a goal-conditioned model trains on batches with 'goals' (WindowSampler with goals)")
        obs = torch.as_tensor(self.tokenizer.condition(batch["obs"], goals), device=device)
        levels = torch.randint(0, self.config.num_levels + 1, tokens.shape[:2], device=device, generator=self.generator)
        noise = torch.randn(tokens.shape, device=device, generator=self.generator)
        noisy = self.schedule.add_noise(tokens, levels, noise)
        autocast = (
            torch.autocast(device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            output = self.forward_module(obs, noisy, levels)
        target = self.schedule.target(tokens, levels, noise, self.config.prediction)
        return torch.nn.functional.mse_loss(output.float(), target)

    def train_step(self, batch: dict) -> dict[str, float]:
        started = time.perf_counter()
        self.forward_module.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        loss = self.loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        if self.ema_model is not None:
            update_ema(self.ema_model, self.model, self.config.ema_decay)
        self.step += 1
        now = time.perf_counter()
        self.train_seconds += now - (self._previous_step_end if self._previous_step_end is not None else started)
        self._previous_step_end = now
        return {"loss": loss.item(), "grad_norm": float(grad_norm), "learning_rate": self.learning_rate()}

    # --- checkpoints ---
    def checkpoint(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "model_config": self.model.config.to_dict(),
            "train_config": asdict(self.config),
            "tokenizer": self.tokenizer.state_dict(),
            "model": self.model.state_dict(),
            "ema_model": self.ema_model.state_dict() if self.ema_model is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_generator": self.generator.get_state(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint atomically (a crash mid-write never leaves a truncated file under ``path``)."""
        return save_atomically(self.checkpoint(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None) -> Trainer:
        """Rebuild a trainer from a checkpoint and continue exactly where it stopped."""
        state = load_checkpoint(path, device)
        trainer = cls(
            ModelConfig(**state["model_config"]),
            Tokenizer.from_state_dict(state["tokenizer"]),
            TrainConfig(**state["train_config"]),
            device=device,
        )
        trainer.model.load_state_dict(state["model"])
        if trainer.ema_model is not None and state["ema_model"] is not None:
            trainer.ema_model.load_state_dict(state["ema_model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step = state["step"]
        trainer.train_seconds = float(state.get("train_seconds", 0.0))  # older checkpoints did not count it
        trainer.rng.bit_generator.state = state["numpy_rng"]
        trainer.generator.set_state(state["torch_generator"].cpu())  # a byte tensor on the host, for any device
        return trainer


def load_checkpoint(path: str | os.PathLike, device: torch.device | str | None = None) -> dict:
    """Read a df-agent checkpoint with clear errors for a missing, corrupt or foreign file."""
    state = read_checkpoint_file(path, device, "train one with `python scripts/df_maze2d.py`")
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "model_config" not in state:
        raise ValueError(f"{path} is not a df-agent checkpoint (version {CHECKPOINT_VERSION})")
    return state


def make_trainer(transitions, layout: TokenLayout, model_config: dict, config: TrainConfig, device=None, seed=0):
    """A fresh trainer whose tokenizer statistics come from a dataset (``envs.Transitions``-like)."""
    tokenizer = Tokenizer.fit(layout, transitions.actions, transitions.next_observations, transitions.rewards)
    model_config = ModelConfig(token_dim=layout.token_dim, obs_dim=layout.condition_dim, **model_config)
    return Trainer(model_config, tokenizer, config, device=device, seed=seed)
