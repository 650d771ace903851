"""Diffuser (Janner et al., 2022) on maze2d: full-sequence diffusion over [a_t, o_t] rows with a temporal U-Net.

Training: windows of ``horizon`` consecutive rows [a_t, o_t] (action, then x, y, vx, vy) cut from continuous stretches
of the dataset's run (``Transitions.segment_ids``, so a window may cross the dataset's own goal changes, as in
Diffuser's maze2d data), each dimension min-max normalized to [-1, 1] over the dataset; the network predicts the
clean window (x0) from a noisy one at a noise level drawn uniformly from {1, ..., K} (cosine schedule), every row at
the same level. Start and end observations are inpainted into the noisy input and the prediction, as in Diffuser.

Planning: DDPM ancestral sampling (DDIM with eta = 1 through every level; fewer ``--sampling-steps`` stride DDIM),
with the first row's observation set to the current state and the last row's to [goal, 0, 0] at every denoising
step (inpainting). Two ways to act on a plan, both evaluated:
  * "Diffuser" (``pd``): plan once at t = 0 and track the planned states with
    action = (next_xy - xy) + (next_v - v); after the plan ends, hold its last waypoint (velocity 0).
  * "Diffuser, diffused actions" (``actions``): execute the planned actions a_0, ..., a_{H-1} open loop; when they
    run out, plan again from the current state (Diffuser's code does not say what comes after the plan here).

    python baselines/diffuser.py --env maze2d-umaze --total-steps 20000
    python baselines/diffuser.py --env maze2d-umaze --eval-only --checkpoint runs/<run>/diffuser.pt
    python baselines/diffuser.py --env maze2d-large --dim 32 --dim-mults 1 4 8 --total-steps 2000000 \
        --gradient-accumulation 2 --eval-episodes 100   # Diffuser's own settings and budget (a GPU's job)
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Annotated

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

import envs
from df_agent.checkpoints import read_checkpoint_file, save_atomically
from df_agent.diffusion import NoiseSchedule
from df_agent.schedules import full_sequence, to_noise_levels
from df_agent.training import update_ema, window_starts
from envs.datasets import load_transitions
from envs.evaluation import evaluate, log_evaluation

ACTION_DIM, OBS_DIM = 2, 4
# Diffuser's maze2d configs (jannerm/diffuser, config/maze2d.py): horizon and diffusion steps per maze.
PAPER_HORIZON = {"umaze": 128, "medium": 256, "large": 384}
PAPER_DIFFUSION_STEPS = {"umaze": 64, "medium": 256, "large": 256}
MODES = {"pd": "eval", "actions": "eval_diffused_actions"}  # execution mode -> TensorBoard prefix


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the experiment (training and the sampler's noise)"""
    eval_seed: int = 0
    """seed of the first evaluation episode (episode i: eval_seed + i; the test episodes are seeds 0-99, as for
    every method)"""
    torch_deterministic: bool = True
    """torch.backends.cudnn.deterministic"""
    device: str = "auto"
    """'auto' (the GPU when there is one), 'cpu' or 'cuda'"""
    env: Annotated[str, tyro.conf.arg(aliases=("--env-id",))] = "maze2d-umaze-v1"
    """the maze2d task (single- and multi-goal tasks of a maze share the same dataset and model)"""

    # data and model
    horizon: int | None = None
    """planning horizon in rows (default: Diffuser's 128 / 256 / 384 for umaze / medium / large; multiple of 4)"""
    diffusion_steps: int | None = None
    """K, noise levels of the cosine schedule (default: Diffuser's 64 / 256 / 256 for umaze / medium / large)"""
    dim: int = 16
    """base channels of the temporal U-Net (Diffuser: 32; 16 fits a CPU)"""
    dim_mults: tuple[int, ...] = (1, 2, 4)
    """channel multipliers per resolution (Diffuser: 1 4 8, i.e. 32-128-256, 3.7M parameters; 1 2 4 fits a CPU)"""
    kernel_size: int = 5
    """Conv1d kernel size (Diffuser: 5)"""

    # training
    total_steps: int = 10_000
    """optimizer steps (Diffuser: 2e6; the default fits a CPU)"""
    train_minutes: float | None = None
    """stop training after this many minutes of wall time, even before --total-steps (None: no time limit)"""
    batch_size: int = 32
    """windows per gradient step (Diffuser: 32)"""
    gradient_accumulation: int = 1
    """batches accumulated per optimizer step (Diffuser: 2)"""
    learning_rate: float = 2e-4
    """Adam learning rate (Diffuser: 2e-4)"""
    ema_decay: float = 0.995
    """decay of the exponential moving average of the weights used for planning (Diffuser: 0.995)"""
    ema_every: int = 10
    """optimizer steps between EMA updates (Diffuser: 10)"""
    ema_start: int = 2000
    """before this step the EMA copies the weights (Diffuser: 2000)"""
    log_every: int = 100
    """steps between loss logs"""
    checkpoint_every: int = 5000
    """steps between checkpoints written to runs/<run>/diffuser.pt (0: only at the end, with --save-model)"""
    save_model: bool = True
    """save the final checkpoint to runs/<run>/diffuser.pt (--no-save-model: not)"""
    resume: str | None = None
    """continue training from this checkpoint (model, EMA, optimizer, step, normalizer, random states)"""
    dataset_source: str = "auto"
    """'auto' (public Minari data if on disk, else local, generated on first use), 'public' or 'local'"""

    # planning and evaluation
    sampling_steps: int | None = None
    """denoising steps per plan (default: every level, Diffuser's DDPM sampling; fewer: strided DDIM)"""
    eta: float = 1.0
    """DDIM eta (1: ancestral DDPM sampling as in Diffuser; 0: deterministic DDIM)"""
    clip_denoised: bool = True
    """clip each x0 estimate to [-1, 1] (Diffuser: True)"""
    modes: tuple[str, ...] = ("pd", "actions")
    """execution modes to evaluate: pd ("Diffuser", tracks planned states) and actions ("diffused actions")"""
    eval_every: int = 0
    """steps between evaluations during training (0: only at the end)"""
    eval_episodes: int = 20
    """evaluation episodes per mode (the papers: 100)"""
    eval_num_envs: int | None = None
    """episodes run (and planned) side by side (default: all of them, at most 100)"""
    eval_only: bool = False
    """only evaluate --checkpoint"""
    checkpoint: str | None = None
    """checkpoint to evaluate with --eval-only"""
    progress: bool = True
    """show tqdm progress bars"""
    runs_dir: str = "runs"
    """folder of the TensorBoard runs and checkpoints (runs/{run_name})"""


# ---------------------------------------------------------------------------------------------------------------------
# The temporal U-Net (Diffuser's TemporalUnet: Conv1d residual blocks, GroupNorm, Mish, two down/up-samplings).


class SinusoidalEmbedding(nn.Module):
    """Diffuser's own time embedding, as in jannerm/diffuser: frequencies spaced by log(10000) / (half - 1), not
    df_agent.model.sinusoidal_embedding's / half; kept apart so Diffuser matches its reference and its checkpoints."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=levels.device) * (-math.log(10000.0) / (half - 1)))
        angles = levels.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Conv1dBlock(nn.Sequential):
    def __init__(self, channels_in: int, channels_out: int, kernel_size: int, groups: int = 8):
        super().__init__(
            nn.Conv1d(channels_in, channels_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(groups, channels_out),
            nn.Mish(),
        )


class ResidualTemporalBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, embed_dim: int, kernel_size: int):
        super().__init__()
        self.block1 = Conv1dBlock(channels_in, channels_out, kernel_size)
        self.block2 = Conv1dBlock(channels_out, channels_out, kernel_size)
        self.level_mlp = nn.Sequential(nn.Mish(), nn.Linear(embed_dim, channels_out))
        self.residual = nn.Conv1d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        out = self.block1(x) + self.level_mlp(embedding)[:, :, None]
        return self.block2(out) + self.residual(x)


class TemporalUnet(nn.Module):
    """x (B, H, D) and noise levels (B,) -> x0 estimate (B, H, D); H must be divisible by 2^(len(dim_mults) - 1)."""

    def __init__(self, transition_dim: int, dim: int = 32, dim_mults=(1, 4, 8), kernel_size: int = 5):
        super().__init__()
        dims = [transition_dim, *[dim * m for m in dim_mults]]
        in_out = list(zip(dims[:-1], dims[1:], strict=True))
        self.level_mlp = nn.Sequential(
            SinusoidalEmbedding(dim), nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim)
        )
        self.downs, self.ups = nn.ModuleList(), nn.ModuleList()
        for i, (c_in, c_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.downs.append(
                nn.ModuleList(
                    [
                        ResidualTemporalBlock(c_in, c_out, dim, kernel_size),
                        ResidualTemporalBlock(c_out, c_out, dim, kernel_size),
                        nn.Conv1d(c_out, c_out, 3, 2, 1) if not last else nn.Identity(),
                    ]
                )
            )
        mid = dims[-1]
        self.mid1 = ResidualTemporalBlock(mid, mid, dim, kernel_size)
        self.mid2 = ResidualTemporalBlock(mid, mid, dim, kernel_size)
        for c_in, c_out in reversed(in_out[1:]):
            self.ups.append(
                nn.ModuleList(
                    [
                        ResidualTemporalBlock(c_out * 2, c_in, dim, kernel_size),
                        ResidualTemporalBlock(c_in, c_in, dim, kernel_size),
                        nn.ConvTranspose1d(c_in, c_in, 4, 2, 1),
                    ]
                )
            )
        self.final = nn.Sequential(Conv1dBlock(dim, dim, kernel_size), nn.Conv1d(dim, transition_dim, 1))
        self.downsamplings = len(in_out) - 1

    def forward(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, D, H): channels are the row's dimensions, length is time
        embedding = self.level_mlp(levels)
        skips = []
        for block1, block2, down in self.downs:
            x = block2(block1(x, embedding), embedding)
            skips.append(x)
            x = down(x)
        x = self.mid2(self.mid1(x, embedding), embedding)
        for block1, block2, up in self.ups:
            x = block2(block1(torch.cat([x, skips.pop()], dim=1), embedding), embedding)
            x = up(x)
        return self.final(x).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------------
# Diffuser: normalization, the training loss, and inpainted sampling.


@dataclass
class DiffuserConfig:
    """Everything needed to rebuild a trained Diffuser (stored in its checkpoints)."""

    maze: str
    horizon: int
    diffusion_steps: int
    dim: int = 32
    dim_mults: tuple[int, ...] = (1, 4, 8)
    kernel_size: int = 5
    mins: list[float] = field(default_factory=list)  # per-dimension min of [a, o] over the dataset
    maxs: list[float] = field(default_factory=list)


class Diffuser(nn.Module):
    def __init__(self, config: DiffuserConfig):
        super().__init__()
        multiple = 2 ** (len(config.dim_mults) - 1)
        if config.horizon % multiple:
            raise ValueError(f"horizon must be a multiple of {multiple} for dim_mults {config.dim_mults}")
        self.config = config
        self.model = TemporalUnet(ACTION_DIM + OBS_DIM, config.dim, config.dim_mults, config.kernel_size)
        self.schedule = NoiseSchedule(config.diffusion_steps, kind="cosine")
        self.register_buffer("mins", torch.tensor(config.mins, dtype=torch.float32))
        self.register_buffer("maxs", torch.tensor(config.maxs, dtype=torch.float32))

    # min-max normalization of rows [a, o] (or of observations only, with obs_only) to [-1, 1]
    def normalize(self, x: torch.Tensor, obs_only: bool = False) -> torch.Tensor:
        lo, hi = (self.mins[ACTION_DIM:], self.maxs[ACTION_DIM:]) if obs_only else (self.mins, self.maxs)
        return 2 * (x - lo) / (hi - lo).clamp(min=1e-6) - 1

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1) / 2 * (self.maxs - self.mins).clamp(min=1e-6) + self.mins

    @staticmethod
    def inpaint(x: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """Set the first row's observation to ``start`` and the last row's to ``end`` (normalized, (B, 4))."""
        x = x.clone()
        x[:, 0, ACTION_DIM:] = start
        x[:, -1, ACTION_DIM:] = end
        return x

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        """Diffuser's x0-prediction loss on normalized windows (B, H, 6), all rows at one noise level."""
        start, end = x0[:, 0, ACTION_DIM:], x0[:, -1, ACTION_DIM:]
        levels = torch.randint(1, self.schedule.num_levels + 1, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        x_noisy = self.inpaint(self.schedule.add_noise(x0, levels, noise), start, end)
        prediction = self.inpaint(self.model(x_noisy, levels), start, end)
        return F.mse_loss(prediction, self.schedule.target(x0, levels, noise, "x0"))

    @torch.no_grad()
    def plan(
        self,
        states: torch.Tensor,
        goals: torch.Tensor,
        sampling_steps: int | None = None,
        eta: float = 1.0,
        clip_denoised: bool = True,
        generator: torch.Generator | None = None,
        return_chain: bool = False,
    ):
        """Plans from states (B, 4) to goals (B, 2): (actions (B, H, 2), observations (B, H, 4)) unnormalized.

        The first planned observation is the state and the last is [goal, 0, 0], exactly. With ``return_chain``,
        also the normalized sample after every denoising step (S + 1, B, H, 6), the initial noise first.
        """
        k_total = self.schedule.num_levels
        steps = k_total if sampling_steps is None else min(sampling_steps, k_total)
        device = self.mins.device
        states = states.to(device=device, dtype=torch.float32)
        goals = goals.to(device=device, dtype=torch.float32)
        ends = torch.cat([goals, torch.zeros_like(goals)], dim=-1)
        start, end = self.normalize(states, obs_only=True), self.normalize(ends, obs_only=True)
        b, h = len(states), self.config.horizon
        levels = torch.as_tensor(to_noise_levels(full_sequence(1, steps)[:, 0], steps, k_total), device=device)
        x = torch.randn((b, h, ACTION_DIM + OBS_DIM), generator=generator, device=device)
        x = self.inpaint(x, start, end)
        chain = [x]
        for level, next_level in zip(levels[:-1], levels[1:], strict=True):
            level_batch, next_batch = level.expand(b), next_level.expand(b)
            x0 = self.model(x, level_batch)
            if clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
            x0 = self.inpaint(x0, start, end)
            x = self.inpaint(self.schedule.ddim_step(x, level_batch, next_batch, x0, eta, generator), start, end)
            if return_chain:
                chain.append(x)
        out = self.unnormalize(x)
        actions, observations = out[..., :ACTION_DIM], out[..., ACTION_DIM:].clone()
        observations[:, 0], observations[:, -1] = states, ends  # exact, without the float round trip
        if return_chain:
            return actions, observations, torch.stack(chain)
        return actions, observations


class DiffuserPlanner:
    """A trained Diffuser as a policy for ``envs.evaluation.evaluate``.

    mode ``pd``: plan once at the start of each episode and track the planned states (Diffuser's controller);
    mode ``actions``: execute the planned actions open loop, planning again whenever they run out.
    Plans for all environments of a batch at once; each observation's ``desired_goal`` is its goal.
    """

    def __init__(self, diffuser: Diffuser, mode: str = "pd", sampling_steps=None, eta=1.0, clip_denoised=True, seed=0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        self.diffuser, self.mode = diffuser, mode
        self.sampling_kwargs = dict(sampling_steps=sampling_steps, eta=eta, clip_denoised=clip_denoised)
        self.generator = torch.Generator(device=diffuser.mins.device)
        self.generator.manual_seed(seed)
        self.actions = self.observations = None
        self.t = 0  # steps since the current plan was made
        self.num_plans = 0

    def reset(self, num_envs: int | None = None) -> None:
        self.actions = self.observations = None
        self.t = 0

    def _plan(self, state: np.ndarray, goal: np.ndarray) -> None:
        actions, observations = self.diffuser.plan(
            torch.as_tensor(state), torch.as_tensor(goal), generator=self.generator, **self.sampling_kwargs
        )
        self.actions, self.observations = actions.cpu().numpy(), observations.cpu().numpy()
        self.t = 0
        self.num_plans += 1

    def __call__(self, obs: dict) -> np.ndarray:
        state, goal, _ = envs.split_observation(obs)
        horizon = self.diffuser.config.horizon
        if self.observations is None or len(self.observations) != len(state):
            self._plan(state, goal)
        elif self.mode == "actions" and self.t >= horizon:
            self._plan(state, goal)
        t = self.t
        self.t += 1
        if self.mode == "actions":
            return np.clip(self.actions[:, t], -1.0, 1.0)
        if t + 1 < horizon:
            waypoint = self.observations[:, t + 1]
        else:
            waypoint = self.observations[:, -1].copy()
            waypoint[:, 2:] = 0.0
        action = (waypoint[:, :2] - state[:, :2]) + (waypoint[:, 2:] - state[:, 2:])
        return np.clip(action, -1.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Data, checkpoints, training.


class StateActionWindows:
    """Random windows of ``horizon`` consecutive rows [a_t, o_t], each inside one continuous segment of the run
    (Diffuser's trajectory layout; DF's ``df_agent.training.WindowSampler`` gives [a_t, o_{t+1}] steps instead, and
    both find their windows with ``window_starts``)."""

    def __init__(self, transitions, horizon: int, device: torch.device):
        rows = np.concatenate([transitions.actions, transitions.observations], axis=-1).astype(np.float32)
        try:
            self.starts = window_starts(transitions.segment_ids, horizon)
        except ValueError as error:
            raise ValueError(f"{error} (Diffuser's windows are --horizon steps: lower it)") from None
        self.mins, self.maxs = rows.min(axis=0), rows.max(axis=0)
        self.rows = torch.as_tensor(rows, device=device)
        self.offsets = torch.arange(horizon, device=device)
        self.horizon = horizon

    def sample(self, batch_size: int, rng: np.random.Generator) -> torch.Tensor:
        starts = torch.as_tensor(self.starts[rng.integers(len(self.starts), size=batch_size)], device=self.rows.device)
        return self.rows[starts[:, None] + self.offsets]  # (B, H, 6), unnormalized


def save_checkpoint(path: str, diffuser: Diffuser, ema: Diffuser, optimizer, step: int, rng, args: Args) -> None:
    state = {
        "config": asdict(diffuser.config),
        "model": diffuser.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "numpy_rng": rng.bit_generator.state if rng is not None else None,
        "torch_rng": torch.get_rng_state(),
        "args": asdict(args),
    }
    save_atomically(state, path)  # an interrupted save never leaves a half-written checkpoint


def load_checkpoint(
    path: str, device: torch.device | str = "cpu", maze: str | None = None
) -> tuple[Diffuser, Diffuser, dict]:
    """(model, EMA model, the raw checkpoint dict) from a file written by ``save_checkpoint``; with ``maze``, raises
    unless the checkpoint was trained on that maze."""
    remedy = "pass the diffuser.pt that a training run wrote"
    state = read_checkpoint_file(path, device, remedy, kind="a Diffuser")
    try:
        config = DiffuserConfig(**{**state["config"], "dim_mults": tuple(state["config"]["dim_mults"])})
    except Exception as error:  # another algorithm's checkpoint, ...
        raise ValueError(f"{path} is corrupt or not a Diffuser checkpoint ({error}); {remedy}") from error
    if maze is not None and config.maze != maze:
        raise ValueError(f"checkpoint is for maze {config.maze!r}, not for the task's maze {maze!r}")
    diffuser, ema = Diffuser(config).to(device), Diffuser(config).to(device)
    diffuser.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    return diffuser, ema, state


def evaluate_modes(ema: Diffuser, args: Args, writer: SummaryWriter | None, step: int) -> dict:
    results = {}
    for mode in args.modes:
        planner = DiffuserPlanner(ema, mode, args.sampling_steps, args.eta, args.clip_denoised, seed=args.seed)
        result = evaluate(
            planner, args.env, args.eval_episodes, seed=args.eval_seed, num_envs=args.eval_num_envs,
            progress=args.progress,
        )  # fmt: skip
        name = "Diffuser" if mode == "pd" else "Diffuser, diffused actions"
        print(f"[step {step}] {name}: {result}")
        if writer is not None:
            log_evaluation(writer, result, step, prefix=MODES[mode])
        results[mode] = result
    return results


def main(args: Args) -> dict:
    """Train Diffuser on the task's maze dataset, evaluating its EMA model in every execution mode and checkpointing
    as ``args`` says; or, with --eval-only, evaluate --checkpoint. Returns the run name, the last evaluation per mode
    and the last step; after training also the model, its EMA and the checkpoint path (None with --no-save-model).

    A resumed run (--resume) is a new run that goes on from the checkpoint's step with its model, EMA, optimizer,
    normalization and random states, under this command line's arguments."""
    task = envs.get_task(args.env)
    args = replace(args, env=task.env_id)
    if unknown := set(args.modes) - set(MODES):
        raise ValueError(f"unknown execution modes {sorted(unknown)}; valid modes: {list(MODES)}")
    if args.train_minutes is not None and args.train_minutes <= 0:
        raise ValueError(f"--train-minutes must be positive, got {args.train_minutes}; leave it out for no time limit")
    if args.eval_only and args.checkpoint is None:
        raise ValueError("--eval-only needs --checkpoint PATH")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    run_name = f"{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}"
    writer = SummaryWriter(f"{args.runs_dir}/{run_name}")
    table = "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")

    # Seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    rng = np.random.default_rng(args.seed)  # draws the training windows

    # Evaluation only: the checkpoint's EMA model in every mode, logged at its step
    if args.eval_only:
        _, ema, state = load_checkpoint(args.checkpoint, device, maze=task.maze)
        results = evaluate_modes(ema.eval(), args, writer, state["step"])
        writer.close()
        return {"results": results, "step": state["step"], "run_name": run_name}

    # Resume: the model and its EMA (with their configuration and normalization) come from the checkpoint
    resumed = None
    if args.resume is not None:
        diffuser, ema, resumed = load_checkpoint(args.resume, device, maze=task.maze)
        config = diffuser.config
    else:
        horizon = args.horizon or PAPER_HORIZON[task.maze]
        config = DiffuserConfig(
            task.maze, horizon, args.diffusion_steps or PAPER_DIFFUSION_STEPS[task.maze], args.dim,
            tuple(args.dim_mults), args.kernel_size,
        )  # fmt: skip

    # Data: windows of --horizon rows [a_t, o_t] of the maze's dataset
    transitions = load_transitions(args.env, source=args.dataset_source, progress=args.progress)
    sampler = StateActionWindows(transitions, config.horizon, device)

    # Networks: the temporal U-Net normalized by the data's bounds, its EMA copy (which plans) and the optimizer;
    # a resumed run's optimizer, step and random states as its checkpoint left them
    if resumed is None:
        config.mins, config.maxs = sampler.mins.tolist(), sampler.maxs.tolist()
        diffuser = Diffuser(config).to(device)
        ema = copy.deepcopy(diffuser)
    ema.eval()
    optimizer = torch.optim.Adam(diffuser.model.parameters(), lr=args.learning_rate)
    start_step = 0
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        start_step = resumed["step"]
        if resumed["numpy_rng"] is not None:
            rng.bit_generator.state = resumed["numpy_rng"]
        torch.set_rng_state(resumed["torch_rng"])
    num_params = sum(p.numel() for p in diffuser.model.parameters())
    print(
        f"Diffuser on {args.env}: {num_params / 1e6:.2f}M parameters, horizon {config.horizon}, "
        f"{config.diffusion_steps} diffusion steps, {len(sampler.starts):,} windows, device {device}"
    )
    writer.add_scalar("charts/num_parameters", num_params, start_step)

    # Training loop; the last step is --total-steps or the one where --train-minutes runs out
    checkpoint_path = f"{args.runs_dir}/{run_name}/diffuser.pt"
    results, losses = {}, []
    start_time = time.time()
    step = start_step
    bar = tqdm(range(start_step + 1, args.total_steps + 1), desc="train diffuser", disable=not args.progress)
    for step in bar:
        # One optimizer step on --gradient-accumulation batches of normalized windows
        optimizer.zero_grad(set_to_none=True)
        for _ in range(args.gradient_accumulation):
            batch = diffuser.normalize(sampler.sample(args.batch_size, rng))
            loss = diffuser.loss(batch) / args.gradient_accumulation
            loss.backward()
            losses.append(loss.item())
        optimizer.step()

        # EMA: a copy of the weights before --ema-start, then a moving average every --ema-every steps
        if step < args.ema_start:
            ema.load_state_dict(diffuser.state_dict())
        elif step % args.ema_every == 0:
            update_ema(ema, diffuser, args.ema_decay)

        # Logging: the mean loss per optimizer step since the last log
        if step % args.log_every == 0 or step == args.total_steps:
            steps_per_second = (step - start_step) / (time.time() - start_time)
            mean_loss = float(np.sum(losses) / max(len(losses) / args.gradient_accumulation, 1))
            writer.add_scalar("losses/diffusion_loss", mean_loss, step)
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], step)
            writer.add_scalar("charts/steps_per_second", steps_per_second, step)
            bar.set_postfix(loss=f"{mean_loss:.4f}", sps=f"{steps_per_second:.1f}")
            losses = []

        # Intermediate checkpoints and evaluations (the last step's are the final ones, below)
        if args.checkpoint_every and step % args.checkpoint_every == 0 and step < args.total_steps:
            save_checkpoint(checkpoint_path, diffuser, ema, optimizer, step, rng, args)
        if args.eval_every and step % args.eval_every == 0 and step < args.total_steps:
            results = evaluate_modes(ema, args, writer, step)

        # Time budget
        if args.train_minutes is not None and time.time() - start_time > 60 * args.train_minutes:
            print(f"time budget of {args.train_minutes} minutes reached at step {step}")
            break
    bar.close()
    final_step = step
    writer.add_scalar("charts/train_minutes", (time.time() - start_time) / 60, final_step)

    # The final checkpoint
    if args.save_model:
        save_checkpoint(checkpoint_path, diffuser, ema, optimizer, final_step, rng, args)
        print(f"model saved to {checkpoint_path}")

    # The final evaluation
    if args.eval_episodes > 0:
        results = evaluate_modes(ema, args, writer, final_step)
    writer.close()
    return {
        "results": results,
        "run_name": run_name,
        "checkpoint": checkpoint_path if args.save_model else None,
        "diffuser": diffuser,
        "ema": ema,
        "step": final_step,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
