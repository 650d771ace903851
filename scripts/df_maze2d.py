"""Diffusion Forcing on D4RL maze2d: train on the offline dataset, then plan with the pyramid schedule and Monte
Carlo Guidance, evaluated on the single-goal and the multi-goal task with the shared evaluation.

    python scripts/df_maze2d.py --env maze2d-large
    python scripts/df_maze2d.py --env maze2d-large --eval-only --checkpoint runs/<run>/agent.pt
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import tyro
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

import envs
from df_agent.agent import Agent, PlannerConfig
from df_agent.presets import MAZE_PLANNER_DEFAULTS, MAZE_SUBGOALS
from df_agent.subgoals import SubgoalPolicy, TransitionGraph
from df_agent.tokens import TokenLayout
from df_agent.training import TrainConfig, Trainer, WindowSampler, make_trainer
from envs.datasets import load_transitions
from envs.evaluation import evaluate, log_evaluation
from envs.records import append_record, make_record

# Gradient steps per maze (--total-steps), each trained in about an hour or less on one CPU thread. Medium's
# goal-conditioned model trained 58 minutes (34,375 of 35,000 steps, stopped by --train-minutes 58) scored 150.8 /
# 159.4 on held-out seeds 100-149 / 150-199 against the 20,000-step model's 147.8 / 149.8 (multi-goal: 152.6 / 161.9
# against 154.3 / 160.3), with the same planner; large keeps 20,000 (they take about an hour). Umaze's model trains
# 46,694 steps, where a 58-minute run on one thread of a 2-core AMD EPYC stopped, beside other jobs (13 steps/s on
# average; the AMD machine of the earlier records trained umaze at 8). Training is deterministic: the run's step-20,000
# checkpoint equals the previous 20,000-step agent, trained on another machine, bit for bit. Held-out, paired against
# the 20,000-step model with the same planner (single / multi-goal, results/probes_models.jsonl): +0.8 +- 1.1 / +2.1
# +- 1.2 over seeds 100-299 and +0.8 +- 0.7 / +2.7 +- 1.4 over seeds 300-499, the gain in staying; the run's 28,000 /
# 36,000-step checkpoints scored +0.1 / +1.8 and +1.4 / -0.7 over seeds 100-299. On the test episodes the gain did not
# carry over (+0.2 +- 0.9 / -0.6 +- 1.4; docs/diffusion_forcing.md).
MAZE_TOTAL_STEPS = {"umaze": 46_694, "medium": 35_000, "large": 20_000}
# Training window per maze, in tokens of frame_stack steps (the paper cuts 300 / 600 / 600 steps).
DEFAULT_WINDOW_TOKENS = {"umaze": 30, "medium": 60, "large": 60}
# Goal-conditioned models per maze (--goal-conditioned). On large (held-out seeds 100-149, the same training recipe)
# the goal-conditioned model scored 172.1 against 141.5 (paired difference +30.6 +- 9.5; success 92% against 90%),
# and it stays at the goal better (score / reach-then-stay 0.99 against 0.87). On medium, the goal-conditioned model
# of the CPU recipe, with its planner re-chosen (guidance 1, cold replans, near-goal scale 8), scored 141.6 / 155.8
# single / multi-goal against the previous H200-trained unconditioned model's 124.8 / 145.6 on the same seeds
# (paired +16.8 +- 5.9 / +10.1 +- 5.3; 100% success, 192 steps to the goal against 238); with the unconditioned
# planner (guidance 4, warm start) it had failed (46.3, 74% success). On umaze it reached the goal later (143 steps
# against 85; 74.0 / 97.4 with near-goal scale 16 / 85.5 with guidance 2, against 138.0), so umaze stays unconditioned.
GOAL_CONDITIONED = {"umaze": False, "medium": True, "large": True}
# Settings that PlannerConfig turns off with None: a 0 on the command line turns them off.
OFF_BY_ZERO = ("near_goal_guidance_scale", "near_goal_execute_steps", "near_goal_horizon_tokens", "horizon_tokens")


@dataclass
class Args:
    env: str = "maze2d-large"
    """task id (short forms like maze2d-large work); its single- and multi-goal versions are both evaluated"""
    exp_name: str = "df"
    """name of this experiment, part of the run name"""
    seed: int = 1
    """seed of training, planning and evaluation"""
    torch_deterministic: bool = True
    """make torch's CPU kernels deterministic"""
    device: str = "auto"
    """'auto' (the GPU when there is one), 'cpu' or 'cuda'"""
    num_threads: int | None = None
    """torch CPU threads (default: torch's choice, all cores)"""
    dataset_source: str = "auto"
    """'auto' (the public Minari dataset if on disk, else the local one, generated on first use), 'public', 'local'"""
    preset: Literal["paper"] | None = None
    """a configuration for users with a GPU, set in the fields left at their defaults (a flag given with another
    value wins). 'paper': the paper's maze2d setting (Appendix D): latent 128, width 384, depth 4 (4.1M parameters;
    the paper's model has about 4.33M), batch 4096 windows in all (the authors' code; split evenly over the torchrun
    processes), learning rate 2e-4, 120,000 steps, 50 DDIM steps. Windows keep the paper's 300 / 600 steps"""

    # model and tokens
    frame_stack: int = 10
    """steps per token"""
    use_reward: bool = False
    """keep the reward slot in tokens (maze2d guides by goal, so the paper drops it)"""
    relative_positions: bool = False
    """tokens hold each planned position relative to the observation the plan starts from (``TokenLayout.
    relative_positions``), so a plan starts where the point is by construction"""
    goal_conditioned: bool | None = None
    """condition the model on the goal (encoded with the observation into the initial state; trained on the goal
    each window's episode pursued, which it reaches), as well as guiding the plan toward it (the paper's model is not
    goal-conditioned; default per maze: on for medium and large)"""
    hindsight_goal_steps: int | None = None
    """goal-conditioned training on hindsight goals instead: each window's goal is the position reached d steps after
    its start, d uniform in 1..this (None: the goal its episode pursued)"""
    backbone: Literal["rnn", "transformer"] = "rnn"
    """'rnn': the ResMLP-GRU; 'transformer': causal self-attention (depth layers of width, heads heads)"""
    latent_dim: int = 128
    """size of the GRU latent z_t (rnn only)"""
    width: int = 128
    """width of the residual MLPs (and of the transformer)"""
    depth: int = 1
    """residual blocks per MLP (rnn); attention blocks (transformer)"""
    heads: int = 4
    """attention heads (transformer only)"""

    # training
    total_steps: int | None = None
    """gradient steps (default per maze: MAZE_TOTAL_STEPS)"""
    train_minutes: float | None = None
    """stop training after this many minutes even if total_steps is not reached"""
    batch_size: int = 64
    """windows per batch"""
    window_tokens: int | None = None
    """tokens per training window (default: 30 on umaze, 60 on medium and large)"""
    learning_rate: float = 3e-4
    """AdamW learning rate"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    warmup_steps: int = 500
    """linear learning-rate warm-up"""
    ema_decay: float = 0.999
    """EMA of the weights used for planning (0: off)"""
    prediction: str = "x0"
    """network output: x0 (the paper's choice for planning), epsilon or v"""
    noise_schedule: str = "linear"
    """linear (the paper's for mazes) or cosine"""
    log_every: int = 100
    """steps between TensorBoard scalars"""
    checkpoint_every: int = 2000
    """steps between checkpoints (written atomically; resume with --resume)"""
    resume: str | None = None
    """training checkpoint to continue from (under torchrun every process loads it; see train())"""
    mixed_precision: bool = True
    """bf16 autocast of the training forward pass on a GPU that supports it (never on CPU); the loss, the optimizer,
    the EMA and planning (guidance gradients included) stay float32"""
    print_weight_checksums: bool = False
    """debug: every process prints checksums of its batch's windows and of its weights and EMA weights after each
    step (under torchrun the weights must agree and the windows differ; tests/test_distributed.py compares them)"""

    # planning and evaluation
    schedule: str | None = None
    """scheduling matrix (PlannerConfig.schedule; the noise levels are --noise-schedule): pyramid, full_sequence,
    autoregressive, stabilized_autoregressive (default: per maze)"""
    uncertainty_scale: float = 1.0
    """pyramid: extra denoising steps by which each token lags the previous one"""
    ddim_steps: int = 10
    """DDIM steps per token (10 scored as well as 20 on held-out episodes, in half the time)"""
    guidance_scale: float | None = None
    """goal guidance step size (default: 8 on umaze, 3 on medium and large; 0: unguided)"""
    mcg_samples: int | None = None
    """Monte Carlo Guidance futures per plan (default: per maze)"""
    no_mcg: bool = False
    """plain guidance (same as --mcg-samples 1)"""
    min_guidance_weight: float | None = None
    """skip the guidance gradient on sampling rows whose largest guidance weight is below this fraction of the
    plan's largest (default: 0, every row guided). Plans near the goal follow --near-goal-min-guidance-weight where
    a maze sets it (medium and large: 0.2), so turning the floor off everywhere there takes both flags at 0"""
    stay_velocity_weight: float = 0.0
    """goal-state guidance: weight of the planned speed near the goal, so the plan stops there (0: off; measured
    on held-out episodes, it slowed the way to the goal more than it helped staying)"""
    stay_action_weight: float = 0.0
    """goal-state guidance: weight of the planned force near the goal (0: off)"""
    stay_near_goal_only: bool = False
    """apply the goal-state terms only to plans that start within --near-goal-radius of the goal"""
    stay_radius: float = 1.0
    """goal-state guidance: distance scale of the gate exp(-(d / radius)^2) that turns the stay terms on"""
    stay_start_radius: float | None = None
    """with --stay-near-goal-only, the distance to the goal within which a plan's start turns the stay terms on
    (default: --near-goal-radius; 0.5, the goal's radius: only after arrival; measured, it did not help staying)"""
    start_weight: float = 0.0
    """weight of the pull of each plan's first predicted observation toward the current observation, so a guided
    plan starts where the point is and as fast as it moves (PlannerConfig.start_weight; 0: off; measured on held-out
    episodes, it did not help staying)"""
    near_goal_guidance_scale: float | None = None
    """guidance scale for plans that start within --near-goal-radius of the goal (0: the maze's scale everywhere;
    default per maze: 64 on umaze, chosen on its held-out episodes; 8 on medium and large, whose
    goal-conditioned models stay with a gentler pull, and whose positions spread 2-3x wider than umaze's, so that
    one scale pulls harder in the model's normalized units)"""
    near_goal_radius: float | None = None
    """distance to the goal within which --near-goal-guidance-scale and the other near-goal settings apply (default
    per maze: 2.0 on umaze, 1.0 on medium and large)"""
    near_goal_execute_steps: int | None = None
    """control steps executed between replans within --near-goal-radius of the goal (default: 3 on every maze; 0:
    whole tokens, as far from it)"""
    near_goal_schedule: str | None = None
    """scheduling matrix within --near-goal-radius of the goal (default: pyramid on every maze)"""
    near_goal_mcg_samples: int | None = None
    """Monte Carlo Guidance futures within --near-goal-radius of the goal (default per maze: 2 on umaze, as far from it
    on medium and large)"""
    near_goal_ddim_steps: int | None = None
    """DDIM steps per token within --near-goal-radius of the goal (default per maze: --ddim-steps)"""
    near_goal_min_guidance_weight: float | None = None
    """--min-guidance-weight within --near-goal-radius of the goal (default per maze: 0.2 on medium and large, for act
    speed; as far from it on umaze)"""
    near_goal_horizon_tokens: int | None = None
    """plan length in tokens within --near-goal-radius of the goal (default per maze: 4 on umaze, 5 on medium and large;
    0: --horizon-tokens)"""
    near_goal_warm_start_level: float | None = None
    """--warm-start-level within --near-goal-radius of the goal (default: as far from it; measured, it did not help
    staying)"""
    near_goal_start_weight: float | None = None
    """--start-weight within --near-goal-radius of the goal (default: --start-weight; measured, it did not help
    staying)"""
    near_goal_guide_actions_only: bool = False
    """guide only the tokens' action slots within --near-goal-radius of the goal (measured, it did not help staying)"""
    near_goal_condition_distance: float | None = None
    """goal-conditioned models: within --near-goal-radius of the goal, the model's goal input lies this far from the
    point on its ray through the goal, the guidance still pulling toward the goal (default: the goal itself;
    PlannerConfig.near_goal_condition_distance; measured, it did not help staying)"""
    shrink_horizon: bool = True
    """plan only to the episode's end, as the paper (planning past it scored lower on held-out episodes)"""
    horizon_tokens: int | None = None
    """longest plan in tokens (default per maze: 10 on umaze, 30 on medium and large; 0: to the episode's end, as in
    the paper, which scored lower and plans several times slower)"""
    replan_every: int = 1
    """tokens executed between replans"""
    execute_steps: int | None = None
    """steps executed between replans on the way, if fewer than --replan-every tokens (None: the whole tokens)"""
    warm_start_level: float | None = None
    """warm start each replan from the previous plan, shifted by the steps executed and noised to this fraction of
    the noise scale (0: off, every plan from pure noise; default per maze: 0.75 on umaze, off on medium and large),
    see PlannerConfig.warm_start_level"""
    history_tokens: int = 0
    """plan from the observation this many tokens back with the steps executed since as clean tokens ahead of the
    plan (the latent summarises the past; 0: off, plans start from the current observation), see
    PlannerConfig.history_tokens"""
    stall_steps: int = 0
    """with warm start: replan cold when the point moved less than --stall-distance in this many steps, away from
    the goal (0: off), see PlannerConfig.stall_steps"""
    stall_distance: float = 0.5
    """net displacement that counts as no progress for --stall-steps"""
    subgoal_distance: float | None = None
    """guide each plan toward a subgoal this far ahead (maze units) on the training data's own shortest way to the
    goal, a graph of its transitions (df_agent.subgoals; no map), instead of toward the goal itself (default per
    maze: df_agent.presets.MAZE_SUBGOALS; 0: off, guided toward the goal)"""
    subgoal_cell: float | None = None
    """grid cell of that graph's nodes (maze units; default per maze: df_agent.presets.MAZE_SUBGOALS, 0.25 on every
    maze)"""
    subgoal_line_of_sight: bool | None = None
    """where the way bends around a wall, guide toward the farthest point of the way in sight instead of one behind
    the wall (TransitionGraph.subgoals(line_of_sight=True); True / False; default per maze:
    df_agent.presets.MAZE_SUBGOALS, on for umaze)"""
    goal_hold_radius: float = 0.0
    """hold the goal with a PD law within this distance of it (0: off, pure DF; the paper's agent leaves the goal)"""
    eval_episodes: int = 100
    """episodes per evaluated task (0: skip evaluation)"""
    eval_seed: int = 0
    """seed of the first evaluation episode (episode i: eval_seed + i; the test episodes are seeds 0-99, choose
    settings on seeds >= 100)"""
    eval_multi: bool = True
    """also evaluate the multi-goal version of the task"""
    eval_only: bool = False
    """skip training: evaluate --checkpoint"""
    checkpoint: str | None = None
    """agent or training checkpoint for --eval-only ('pretrained': the agent shipped with the package)"""
    save_model: bool = True
    """save the agent (with this command's planner settings, also after --eval-only) to runs/<run name>/agent.pt"""
    runs_dir: str = "runs"
    """folder of TensorBoard runs and checkpoints"""
    record: str | None = None
    """also append each evaluation as a JSON record to this file (e.g. results/df.jsonl; see make_results.py)"""
    table: str | None = None
    """RESULTS.md table of those records"""


PRESETS = {
    "paper": {
        "latent_dim": 128,
        "width": 384,
        "depth": 4,
        "batch_size": 4096,
        "learning_rate": 2e-4,
        "total_steps": 120_000,
        "ddim_steps": 50,
    },
}


def apply_preset(args: Args, world_size: int = 1) -> Args:
    """``args`` with ``args.preset``'s values in the fields still at their defaults. The preset's batch is the global
    batch: each of ``world_size`` processes takes an equal share."""
    if args.preset is None:
        return args
    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
    defaults = Args()
    values = {k: v for k, v in PRESETS[args.preset].items() if getattr(args, k) == getattr(defaults, k)}
    if "batch_size" in values:
        if values["batch_size"] % world_size:
            raise ValueError(f"the preset's batch of {values['batch_size']} does not split over {world_size} processes")
        values["batch_size"] //= world_size
    return dataclasses.replace(args, **values)


def planner_config(args: Args, task: envs.TaskSpec) -> PlannerConfig:
    def per_maze(name: str):
        """The command line's value, or the maze's default where it gives none."""
        value = getattr(args, name)
        if value is None:
            return MAZE_PLANNER_DEFAULTS[task.maze][name]
        return (value or None) if name in OFF_BY_ZERO else value

    return PlannerConfig(
        ddim_steps=args.ddim_steps,
        schedule=per_maze("schedule"),
        uncertainty_scale=args.uncertainty_scale,
        guidance_scale=per_maze("guidance_scale"),
        mcg_samples=1 if args.no_mcg else per_maze("mcg_samples"),
        stay_velocity_weight=args.stay_velocity_weight,
        stay_action_weight=args.stay_action_weight,
        stay_radius=args.stay_radius,
        stay_near_goal_only=args.stay_near_goal_only,
        stay_start_radius=args.stay_start_radius,
        start_weight=args.start_weight,
        near_goal_start_weight=args.near_goal_start_weight,
        near_goal_warm_start_level=args.near_goal_warm_start_level,
        near_goal_guide_actions_only=args.near_goal_guide_actions_only or None,
        near_goal_condition_distance=args.near_goal_condition_distance,
        near_goal_guidance_scale=per_maze("near_goal_guidance_scale"),
        near_goal_radius=per_maze("near_goal_radius"),
        near_goal_execute_steps=per_maze("near_goal_execute_steps"),
        near_goal_schedule=per_maze("near_goal_schedule"),
        near_goal_horizon_tokens=per_maze("near_goal_horizon_tokens"),
        near_goal_mcg_samples=1 if args.no_mcg else per_maze("near_goal_mcg_samples"),
        near_goal_ddim_steps=per_maze("near_goal_ddim_steps"),
        min_guidance_weight=per_maze("min_guidance_weight"),
        near_goal_min_guidance_weight=per_maze("near_goal_min_guidance_weight"),
        shrink_horizon=args.shrink_horizon,
        horizon_tokens=per_maze("horizon_tokens"),
        replan_every=args.replan_every,
        execute_steps=args.execute_steps,
        warm_start_level=per_maze("warm_start_level"),
        stall_steps=args.stall_steps,
        stall_distance=args.stall_distance,
        history_tokens=args.history_tokens,
        goal_hold_radius=args.goal_hold_radius,
        episode_length=task.max_episode_steps,
        seed=args.seed,
    )


def subgoal_distance_for(args: Args, task: envs.TaskSpec) -> float | None:
    """The distance ahead of the data-graph subgoals the agent is guided toward (None: toward the goal itself)."""
    if args.subgoal_distance is None:
        return MAZE_SUBGOALS[task.maze].distance
    if not args.subgoal_distance >= 0:
        raise SystemExit(f"--subgoal-distance must be >= 0 (0: off), got {args.subgoal_distance}")
    return args.subgoal_distance or None


def subgoal_cell_for(args: Args, task: envs.TaskSpec) -> float:
    """The cell of the subgoal graph's nodes (the command line's, or the maze's)."""
    return MAZE_SUBGOALS[task.maze].cell if args.subgoal_cell is None else args.subgoal_cell


def subgoal_line_of_sight_for(args: Args, task: envs.TaskSpec) -> bool:
    """Whether the data-graph subgoals are taken in line of sight (the command line's choice, or the maze's)."""
    if args.subgoal_line_of_sight is None:
        return MAZE_SUBGOALS[task.maze].line_of_sight
    return args.subgoal_line_of_sight


def weight_checksum(module: torch.nn.Module) -> str:
    """A short hash of a module's weights, bit for bit."""
    digest = hashlib.sha256()
    for tensor in module.state_dict().values():
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def from_rank_zero(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank, for a decision all ranks must take together (e.g. stopping)."""
    if not dist.is_initialized():
        return flag
    tensor = torch.tensor([float(flag)], device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def mean_over_ranks(value: float, device: torch.device) -> float:
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def train(
    args: Args, task: envs.TaskSpec, writer: SummaryWriter | None, run_dir: Path, device: torch.device
) -> Trainer:
    """Train on one process, or on each of torchrun's processes when main() has joined them in a process group.

    Data parallel (``torchrun --nproc_per_node N scripts/df_maze2d.py ...``): every rank holds the same weights and
    draws its own batch of ``batch_size`` windows (the global batch is ``batch_size`` x N; the learning rate is not
    rescaled); DistributedDataParallel averages the gradients, so the optimizer steps and the EMA stay identical
    across ranks. Rank r draws windows and noise from seeds derived from (seed, r, first step), so a resumed run
    does not replay the draws it made before its checkpoint; rank 0 alone logs, prints and writes checkpoints
    (``writer`` is None on the other ranks). ``--resume``: every rank loads the same checkpoint (weights, EMA,
    optimizer, step); the random streams saved in it are rank 0's, used as they are by a single-process resume
    (which continues exactly) and replaced by the per-rank seeds above in a distributed one.
    """
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    main_process = rank == 0
    data = load_transitions(task.env_id, source=args.dataset_source, progress=main_process)
    goal_conditioned = GOAL_CONDITIONED[task.maze] if args.goal_conditioned is None else args.goal_conditioned
    layout = TokenLayout(
        frame_stack=args.frame_stack,
        use_reward=args.use_reward,
        goal_dim=2 * goal_conditioned,
        relative_positions=args.relative_positions,
    )
    window = args.window_tokens or DEFAULT_WINDOW_TOKENS[task.maze]
    if args.resume:
        trainer = Trainer.load(args.resume, device=device)
        if main_process:
            print(f"resumed from {args.resume} at step {trainer.step}")
    else:
        config = TrainConfig(
            window_tokens=window,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps,
            ema_decay=args.ema_decay,
            prediction=args.prediction,
            noise_schedule=args.noise_schedule,
        )
        model_config = {"latent_dim": args.latent_dim, "width": args.width, "depth": args.depth}
        model_config |= {"backbone": args.backbone, "heads": args.heads}
        trainer = make_trainer(data, layout, model_config, config, device=device, seed=args.seed)
    if world_size > 1:
        trainer.reseed(int(np.random.SeedSequence([args.seed, rank, trainer.step]).generate_state(1)[0]))
        device_ids = [trainer.device.index] if trainer.device.type == "cuda" else None
        trainer.wrap(lambda module: DistributedDataParallel(module, device_ids=device_ids))
    if args.mixed_precision and trainer.device.type == "cuda" and torch.cuda.is_bf16_supported():
        trainer.autocast_dtype = torch.bfloat16
    config = trainer.config
    sampler = WindowSampler.from_transitions(
        data,
        config.window_tokens * trainer.tokenizer.layout.frame_stack,
        device=trainer.device,
        with_goals=trainer.tokenizer.layout.goal_dim > 0,
        hindsight_steps=args.hindsight_goal_steps,
    )
    global_batch = config.batch_size * world_size
    setup = (
        f"device {trainer.device} x {world_size} process{'es' if world_size > 1 else ''}; "
        f"batch {config.batch_size} windows per process x {world_size} = {global_batch} windows (global) "
        f"of {config.window_tokens} tokens; learning rate {config.learning_rate}; "
        f"forward pass in {str(trainer.autocast_dtype or torch.float32).removeprefix('torch.')}"
    )
    if main_process:
        print(f"model: {trainer.model.num_parameters():,} parameters; {len(sampler.starts):,} training windows")
        print(setup)
        writer.add_text("training", setup)
    checkpoint_path = run_dir / "checkpoint.pt"
    start, last_log, last_log_step = time.perf_counter(), time.perf_counter(), trainer.step
    bar = tqdm(total=args.total_steps, initial=trainer.step, desc="train", unit="step", disable=not main_process)
    while trainer.step < args.total_steps:
        batch = sampler.sample(config.batch_size, trainer.rng)
        metrics = trainer.train_step(batch)
        if args.print_weight_checksums:
            windows = hashlib.sha256(torch.as_tensor(batch["obs"]).cpu().numpy().tobytes()).hexdigest()[:16]
            ema = weight_checksum(trainer.ema_model) if trainer.ema_model is not None else None
            line = (
                f"rank {rank} step {trainer.step} windows {windows} weights {weight_checksum(trainer.model)} ema {ema}"
            )
            print(line + "\n", end="", flush=True)  # one write: the ranks share stdout, unbuffered under -u
        bar.update(1)
        if trainer.step % args.log_every == 0:
            loss = mean_over_ranks(metrics["loss"], trainer.device)  # the global batch's loss
            now = time.perf_counter()
            # steps since the last log: fewer than log_every after a resume from a step between two logs
            steps_per_second = (trainer.step - last_log_step) / (now - last_log)
            last_log, last_log_step = now, trainer.step
            if main_process:
                writer.add_scalar("losses/loss", loss, trainer.step)
                writer.add_scalar("losses/grad_norm", metrics["grad_norm"], trainer.step)
                writer.add_scalar("charts/learning_rate", metrics["learning_rate"], trainer.step)
                writer.add_scalar("charts/SPS", steps_per_second, trainer.step)
                writer.add_scalar(
                    "charts/tokens_per_second", steps_per_second * global_batch * config.window_tokens, trainer.step
                )
                bar.set_postfix(loss=f"{loss:.4f}")
        if main_process and trainer.step % args.checkpoint_every == 0:
            trainer.save(checkpoint_path)
        if args.train_minutes is not None and from_rank_zero(
            time.perf_counter() - start > 60 * args.train_minutes, trainer.device
        ):
            if main_process:
                print(f"time budget of {args.train_minutes} minutes reached at step {trainer.step}")
            break
    bar.close()
    if main_process:
        trainer.save(checkpoint_path)
        writer.add_scalar("charts/train_minutes", trainer.train_seconds / 60, trainer.step)  # resumes included
    if world_size > 1:
        # Release DDP (and its hold on the process group) and wait for rank 0's checkpoint, so that every rank tears
        # the group down together: a rank that left early aborted in gloo's teardown now and then (CI, 2026-12-06).
        trainer.unwrap()
        dist.barrier()
    return trainer


def main(args: Args) -> dict:
    # torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; a plain `python` run is one process, as before
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if rank > 0 and args.eval_only:
        return {}  # evaluation runs on rank 0 alone
    distributed = world_size > 1 and not args.eval_only
    args = apply_preset(args, world_size if distributed else 1)
    task = envs.get_task(args.env)
    if args.total_steps is None:
        args = dataclasses.replace(args, total_steps=MAZE_TOTAL_STEPS[task.maze])
    run_name = f"{task.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = Path(args.runs_dir) / run_name
    writer = SummaryWriter(str(run_dir)) if rank == 0 else None  # rank 0 alone logs, evaluates and saves
    if writer is not None:
        writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
        )

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if args.device == "auto"
        else torch.device(args.device)
    )
    if distributed:  # one process per GPU (LOCAL_RANK picks it), NCCL between GPUs, gloo between CPU processes
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    planner = planner_config(args, task)
    step = 0
    if args.eval_only:
        if not args.checkpoint:
            raise SystemExit("--eval-only needs --checkpoint PATH")
        agent = Agent.for_task(args.checkpoint, task.env_id, device=device, **asdict(planner))
        if args.save_model:  # the checkpoint's weights with this command's planner settings
            print(f"saved agent to {agent.save(run_dir / 'agent.pt')}")
    else:
        try:
            trainer = train(args, task, writer, run_dir, device)
        finally:
            if distributed:
                dist.destroy_process_group()
        step = trainer.step
        if rank > 0:
            return {"rank": rank, "train_steps": step}
        agent = Agent.from_trainer(trainer, planner)
        if args.save_model:
            print(f"saved agent to {agent.save(run_dir / 'agent.pt')}")

    graph = None
    subgoal_distance = subgoal_distance_for(args, task)
    line_of_sight = subgoal_line_of_sight_for(args, task)
    if subgoal_distance is not None and args.eval_episodes > 0:
        data = load_transitions(task.env_id, source=args.dataset_source)
        graph = TransitionGraph.from_transitions(data, cell=subgoal_cell_for(args, task))
        print(f"subgoal graph: {graph.num_nodes:,} nodes, {graph.num_edges:,} edges from {len(data):,} transitions")
    summary = {"run": run_name, "train_steps": step}
    tasks = [task.env_id]
    if args.eval_multi:
        tasks.append(envs.twin_env_id(task.env_id))
    for env_id in tasks if args.eval_episodes > 0 else []:
        # the task's episode length; the random draws go on from one task's evaluation to the next
        agent = agent.with_planner(episode_length=envs.get_task(env_id).max_episode_steps, keep_random_state=True)
        policy = agent
        if graph is not None:
            policy = SubgoalPolicy(agent, graph, subgoal_distance, line_of_sight=line_of_sight)
        result = evaluate(policy, env_id, num_episodes=args.eval_episodes, seed=args.eval_seed)
        log_evaluation(writer, result, step, prefix="eval_multi" if envs.get_task(env_id).multi_goal else "eval")
        print(result)
        summary[env_id] = {**result.metrics(), "seconds": result.seconds}
        if args.record:
            settings = {**asdict(agent.planner), "checkpoint": args.checkpoint or str(run_dir / "agent.pt")}
            settings["goal_conditioned"] = agent.tokenizer.layout.goal_dim > 0
            settings["relative_positions"] = agent.tokenizer.layout.relative_positions
            if graph is not None:
                settings |= policy.settings()
            record = make_record(
                "Diffusion Forcing", result, settings, table=args.table, train_steps=step, model=agent.training
            )
            append_record(args.record, record)
    writer.close()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
