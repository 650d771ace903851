"""Diffusion Forcing on OGBench's pointmaze tasks: train on the locally regenerated dataset, then plan toward the
test goal ('desired_goal') with guided sampling and execute the plan's own diffused actions, evaluated by OGBench's
protocol (five test goals x N episodes, success rate; ``envs.ogbench_eval``).

    python scripts/df_ogbench.py --env pointmaze-medium-navigate-v0 --train-minutes 60
    python scripts/df_ogbench.py --env pointmaze-medium-navigate-v0 --eval-only --checkpoint runs/<run>/agent.pt

The same library as maze2d (``scripts/df_maze2d.py``): ``df_agent``'s trainer, windows, tokens, sampler and Agent.
The defaults below are set by analogy with maze2d, except the plan length and the navigate and stitch planners,
chosen on held-out episodes (see docs/ogbench.md):

* observation: OGBench's (x, y). The point's velocity is zeroed at every step, so (x, y) is the whole state. By default
  it is padded to (x, y, 0, 0), maze2d's layout (the measured runs use it); --no-zero-velocity trains and acts on
  (x, y) alone (not measured yet).
* frame stack 10 steps per token (a step moves the point by 0.2 * action, so a token spans at most 2 of a cell's 4
  units). Training windows: 30 tokens on navigate (1000-step episodes), 18 on stitch (200-step episodes).
* planner: pyramid schedule, 10 DDIM steps, Monte Carlo Guidance with 4 futures, guidance scale 1, plans of 30
  tokens on medium and 60 on large and giant (HORIZON_TOKENS) replanned every token, cold starts, no PD hold;
  episode length 1000 (the evaluation's time limit). That is plain DF, guided toward the goal itself.
* training: 55 minutes (--train-minutes; at most 200,000 steps), the budget of every measured run.
* navigate datasets (NAVIGATE_PLANNER, NAVIGATE_SUBGOAL_DISTANCE): the plain model, guided with scale 4 toward a
  subgoal 8 ahead on the shortest way to the goal through the training data's own transitions (--subgoal-distance 8;
  ``df_agent.subgoals``), with plans of 10 tokens (--planner.horizon-tokens 10). Test success rose from 89.2% to
  98.0% on medium-navigate, from 68.0% to 99.2% on large-navigate and from 15.2% to 90.4% on giant-navigate
  (docs/ogbench.md). Plain DF on navigate:
  --subgoal-distance None --planner.horizon-tokens <30 | 60> --planner.guidance-scale 1.
* giant-stitch (STITCH_TRAINING, STITCH_PLANNER): a goal-conditioned model (--goal-conditioned
  --hindsight-goal-steps 200), guided with scale 2 toward a subgoal 8 ahead on the shortest way to the goal through
  the training data's own transitions (--subgoal-distance 8; ``df_agent.subgoals``), with 10-token plans
  (STITCH_SHORT_PLANS). Test success 6.8% (plain DF) -> 76.4% -> 97.6% (docs/ogbench.md). Large-stitch took the
  same recipe (guidance 8, coverage-balanced windows) to 67.2% before the plain model below.
* medium- and large-stitch (STITCH_PLAIN_MAZES, since 2026-12-08): the plain model on coverage-balanced windows
  (--window-balance 1, STITCH_WINDOW_BALANCE: every maze cell about an equal share of the rows trained on) with the
  navigate planner; near the subgoal (within 4 on medium, 6 on large) 3-token plans replanned every 2 steps at
  guidance 16 whose goal cost is measured on where the actions lead (STITCH_NEAR_GOAL_ACTIONS;
  --planner.near-goal-guide-implied-positions True); a route pull (STITCH_ROUTE_WEIGHT: 0.25 on medium, 1 on large);
  each plan carries the last 2 executed tokens as its history (--planner.history-tokens 2; STITCH_PLAIN_PER_MAZE).
  Test success: medium 31.6% (plain DF) -> 69.6% (the recipe) -> 86.0% (without history) -> 99.2%; large 16.8% ->
  67.2% (the recipe) -> 98.4%. The actions stay the plan's own. Plain DF on stitch:
  --no-goal-conditioned --subgoal-distance None --planner.route-weight 0 --planner.guidance-scale 1
  --planner.near-goal-guidance-scale None --planner.horizon-tokens <30 | 60> --window-balance 0
  (on medium and large also --planner.near-goal-guide-implied-positions None --planner.near-goal-execute-steps None
  --planner.near-goal-horizon-tokens None --planner.near-goal-radius 1 --planner.history-tokens 0).
* --relative-positions (off by default): tokens hold positions relative to the plan's start; fixes where plans
  start, did not change success on large-stitch (docs/ogbench.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from df_agent.agent import Agent, PlannerConfig
from df_agent.guidance import fit_action_step
from df_agent.subgoals import SubgoalPolicy, TransitionGraph
from df_agent.tokens import TokenLayout
from df_agent.training import TrainConfig, Trainer, WindowSampler, make_trainer
from envs.datasets import Transitions
from envs.evaluation import log_evaluation
from envs.ogbench_datasets import load_ogbench_transitions, position_observation
from envs.ogbench_eval import DEFAULT_EPISODES_PER_GOAL, OGBenchEvalResult, evaluate_ogbench
from envs.ogbench_tasks import OGBENCH_TASKS, OGBenchTask, get_ogbench_task
from envs.records import append_record, make_record

# Training window per dataset kind, in tokens (provisional): navigate episodes hold 1000 transitions, stitch episodes
# 200, and windows never cross an episode; 18 tokens (180 steps) leave each stitch episode 21 window starts.
DEFAULT_WINDOW_TOKENS = {"navigate": 30, "stitch": 18}


# Plan length per maze, in tokens of 10 steps, chosen on held-out episodes (seeds >= 1000; records in
# results/df_ogbench.jsonl): medium 30; large 60 (10 episodes per goal: 30 / 60 / 100 tokens reached 40 / 68 / 62%,
# the far goals 4 and 5 need plans past 300 steps); giant: large's, not chosen on giant (test 15.2% with it).
HORIZON_TOKENS = {"medium": 30, "large": 60, "giant": 60}

# The navigate datasets' planner, chosen on held-out episodes (seeds 1000-1049, 10 per goal, 2026-12-07; records in
# results/df_ogbench.jsonl): the plain model (not goal-conditioned), guided toward a subgoal 8 ahead on the data's own
# graph (as on stitch) with 10-token plans and guidance 4. Toward the far goal itself, the goal cost pulls every
# planned step through the walls in between; toward a subgoal two cells ahead, a 10-token plan can reach it and stay,
# which is a plan the model can draw. Giant: plain 12%; subgoals with 60 / 20 / 10 / 5-token plans 20 / 26 / 82 / 64%;
# with 10-token plans, guidance 0.5 / 1 / 2 / 4 / 8: 74 / 82 / 86 / 90 / 80%, subgoals 4 / 6 / 8 / 12 ahead (guidance
# 1-2) 20 / 88 / 86 / 72%. Medium: plain 90%, guidance 2 / 4: 100 / 100% (subgoals 4 ahead: 56%); large (checked
# after the choice): 100%. Test: giant 15.2% -> 90.4%, medium 89.2% -> 98.0%, large 68.0% -> 99.2%.
NAVIGATE_PLANNER = {"horizon_tokens": 10, "guidance_scale": 4.0}
NAVIGATE_SUBGOAL_DISTANCE = 8.0


# The stitch datasets' recipe, chosen on held-out episodes (seeds >= 1000; docs/ogbench.md): a goal-conditioned model
# trained on hindsight goals up to 200 steps ahead, guided (gently) toward a subgoal on the data's own shortest way,
# and strongly within 3 units of the point it is guided to. Test success: medium-stitch 31.6% -> 52.4% (59.2% with the
# route pull below), large-stitch 16.8% -> 42.4%, giant-stitch 6.8% -> 76.4%. The subgoal distance is the
# maze's: 4 on medium (4 / 8 / none: 40 / 38 / 20% held out), 8 on large (held out: 8 ahead 34%, 4 ahead 32%); giant
# takes large's, not chosen on giant.
STITCH_TRAINING = {"goal_conditioned": True, "hindsight_goal_steps": 200}
STITCH_PLANNER = {"guidance_scale": 0.25, "near_goal_guidance_scale": 8.0, "near_goal_radius": 3.0}
STITCH_SUBGOAL_DISTANCE = {"medium": 8.0, "large": 8.0, "giant": 8.0}  # medium: 4 with the recipe, 8 since 2026-12-08
# Route pull (--planner.route-weight: every planned step pulled toward the data's way to the subgoal), per maze, chosen
# on held-out episodes (seeds 1000-1049, the retrained models of 2026-12-06): medium 4 (route 0 / 1 / 4 / 16: 48 / 56 /
# 60 / 30%); large 0 (route 0 / 0.25 / 1: 46 / 42 / 38%); giant 0 (route 0 / 0.25 / 1: 78 / 76 / 52%). The pull is
# weighted under the guidance scale, so medium's 2 at its short plans' guidance 0.5 (STITCH_SHORT_PLANS) is the same
# pull as 4 at the recipe's 0.25.
# medium: 2 with the recipe, 0.25 since 2026-12-08; large: 0 with the recipe, 1 since 2026-12-08 (STITCH_PLAIN_MAZES)
STITCH_ROUTE_WEIGHT = {"medium": 0.25, "large": 1.0, "giant": 0.0}
# Coverage-balanced training windows (--window-balance: every maze cell about an equal share of the rows trained on),
# per maze, chosen on held-out episodes (seeds 1000-1049; one 55-minute model each, docs/ogbench.md): large 1 (60%
# against 46% held out; test 56.8% against 42.4 and 39.2% for two unbalanced models); medium 1 (64% against 60 / 56%
# held out, within noise; test 61.2% against 59.2%, also within noise, the rare goals 2 and 5 up); giant 0 (64%
# against 78%).
STITCH_WINDOW_BALANCE = {"medium": 1.0, "large": 1.0, "giant": 0.0}
# Short plans on stitch, per maze (2026-12-07, as on navigate: NAVIGATE_PLANNER), chosen on held-out episodes (seeds
# 1000-1049, the models of the tests above): 10-token plans with a stronger guidance and no near-goal boost. Giant
# (guidance 2): 78% -> 98%, goal 3 reached for the first time (test 76.4% -> 97.6%); large (guidance 2 / 4 / 8 / 16:
# 60 / 66 / 70 / 70%, against 60% with 60-token plans; test 56.8% -> 67.2%); medium keeps the near-goal boost and its
# route pull (guidance 0.25 / 0.5 with route pull 1: 68 / 72%, against 64% with 30-token plans; guidance 1-2 without
# the boost 16-46%; test 61.2% -> 69.6%).
STITCH_SHORT_PLANS = {  # medium's was {"horizon_tokens": 10, "guidance_scale": 0.5}, large's
    # {"horizon_tokens": 10, "guidance_scale": 8.0, "near_goal_guidance_scale": None} until STITCH_PLAIN_MAZES
    "giant": {"horizon_tokens": 10, "guidance_scale": 2.0, "near_goal_guidance_scale": None},
}

# Medium- and large-stitch since 2026-12-08 (STITCH_PLAIN_MAZES): the plain model (no goal conditioning, balanced
# windows) with the navigate planner (NAVIGATE_PLANNER: subgoals 8 ahead, 10-token plans, guidance 4); near the
# subgoal, 3-token plans replanned every 2 steps at guidance 16 with the goal cost measured on where the actions lead
# (STITCH_NEAR_GOAL_ACTIONS; PlannerConfig.near_goal_guide_implied_positions, the step per unit of action fitted on
# the data), and a route pull (STITCH_ROUTE_WEIGHT). Guided plans near a goal in a dead end reach it with their
# predicted positions while their actions stay on the data's way out; measuring the cost on where the actions lead
# moves the actions, and the route pull takes the point round the last bend. Chosen on held-out episodes, rules fixed
# in advance (docs/ogbench.md). Medium (within 4, route 0.25): seeds 1000-1049 40% (navigate planner alone) -> 74%
# (near-goal cost) -> 96% (with the route pull); seeds 1250-1499 83.2%, against the recipe's 72% (seeds 1000-1049).
# Large (within 6, route 1): 80% / 77.2%, goal 2 never reached: from the cell before its dead end no unguided plan
# heads up the corridor (the data's moves there: 32% up) and guidance could not turn them. With the last two tokens
# executed as the plan's history (PlannerConfig.history_tokens: the latent summarises the past, paper Section 3), the
# model sees the point coming up the corridor and plans on: 98% (goal 2: 90%) on seeds 1000-1049, 99.6% on seeds
# 1250-1499. Medium with the same history: 98% / 97.6% (from 96% / 83.2%), in 277 steps instead of 418.
STITCH_PLAIN_MAZES = ("medium", "large")
STITCH_NEAR_GOAL_ACTIONS = {
    "near_goal_guidance_scale": 16.0,
    "near_goal_horizon_tokens": 3,
    "near_goal_execute_steps": 2,
    "near_goal_guide_implied_positions": True,
}
STITCH_PLAIN_PER_MAZE = {
    "medium": {"near_goal_radius": 4.0, "history_tokens": 2},
    "large": {"near_goal_radius": 6.0, "history_tokens": 2},
}


def default_planner(maze: str = "medium") -> PlannerConfig:
    """The planner for OGBench (provisional: maze2d-medium's choices, cold starts), with the maze's plan length
    (``HORIZON_TOKENS``). Guidance 1: the goal cost's gradient with respect to the normalized tokens grows with the
    positions' spread, which is about 4x maze2d medium's in OGBench's units (maze cells of 4), so 1 here is roughly
    maze2d medium's 4."""
    return PlannerConfig(
        ddim_steps=10,
        schedule="pyramid",
        guidance_scale=1.0,
        mcg_samples=4,
        horizon_tokens=HORIZON_TOKENS[maze],
        replan_every=1,
        episode_length=1000,
        warm_start_level=0.0,
        goal_hold_radius=0.0,
    )


@dataclass
class Args:
    env: str = "pointmaze-medium-navigate-v0"
    """OGBench task: pointmaze-<medium|large|giant>-<navigate|stitch>-v0 (the dataset kind picks the training data;
    both kinds evaluate on the maze's five test goals)"""
    exp_name: str = "df"
    """name of this experiment, part of the run name"""
    seed: int = 1
    """seed of training and planning (the evaluation episodes are fixed by --eval-seed)"""
    torch_deterministic: bool = True
    """make torch's CPU kernels deterministic"""
    device: str = "auto"
    """'auto' (the GPU when there is one), 'cpu' or 'cuda'"""
    num_threads: int | None = None
    """torch CPU threads (default: torch's choice, all cores)"""
    dataset_dir: str | None = None
    """folder of the OGBench .npz files (default: OGBench's ~/.ogbench/data; `python -m envs.ogbench_datasets`
    generates them)"""
    zero_velocity: bool = True
    """observations (x, y, 0, 0) instead of OGBench's (x, y): the velocity entering every OGBench step is 0, so both
    carry the same information; the padding is maze2d's layout, which the measured runs use"""

    # model and tokens
    frame_stack: int = 10
    """steps per token"""
    relative_positions: bool = False
    """tokens hold each planned position relative to the observation the plan starts from (``TokenLayout.
    relative_positions``), so a plan starts where the point is by construction"""
    goal_conditioned: bool = False
    """condition the model on the goal (encoded with the observation into the initial state), as well as guiding the
    plan toward it; trained on hindsight goals (--hindsight-goal-steps)"""
    hindsight_goal_steps: int | None = None
    """goal-conditioned training: each window's goal is the position reached d steps after its start, d uniform in
    1..this (None: the position where its episode ends)"""
    backbone: Literal["rnn", "transformer"] = "rnn"
    """'rnn': the ResMLP-GRU; 'transformer': causal self-attention"""
    latent_dim: int = 128
    """size of the GRU latent z_t (rnn only)"""
    width: int = 128
    """width of the residual MLPs (and of the transformer)"""
    depth: int = 1
    """residual blocks per MLP (rnn); attention blocks (transformer)"""
    heads: int = 4
    """attention heads (transformer only)"""

    # training
    total_steps: int = 200_000
    """gradient steps (at most: --train-minutes usually ends training first on a CPU)"""
    train_minutes: float | None = 55.0
    """stop training after this many minutes even if total_steps is not reached (None: no time limit); every
    measured run trained 55 minutes (docs/ogbench.md)"""
    batch_size: int = 64
    """windows per batch"""
    window_tokens: int | None = None
    """tokens per training window (default: 30 on navigate, 18 on stitch)"""
    window_balance: float = 0.0
    """draw training windows with weight the mean over their rows of c^-this, c the dataset's rows in the row's grid
    cell (``df_agent.training.coverage_weights``; 0: uniform, 1: about equal shares per cell), so that the model sees
    the rarely visited dead ends where test goals lie more often"""
    window_balance_cell: float = 4.0
    """grid cell of --window-balance's counts (maze units; OGBench's maze cell is 4)"""
    learning_rate: float = 3e-4
    """AdamW learning rate"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    warmup_steps: int = 500
    """linear learning-rate warm-up"""
    ema_decay: float = 0.999
    """EMA of the weights used for planning (0: off)"""
    prediction: str = "x0"
    """network output: x0, epsilon or v"""
    noise_schedule: str = "linear"
    """linear or cosine"""
    log_every: int = 100
    """steps between TensorBoard scalars"""
    checkpoint_every: int = 2000
    """steps between training checkpoints (written atomically; continue with --resume)"""
    resume: str | None = None
    """training checkpoint to continue from"""
    mixed_precision: bool = True
    """bf16 autocast of the training forward pass on a GPU that supports it (never on CPU)"""

    # planning and evaluation
    planner: PlannerConfig = field(default_factory=default_planner)
    """planner settings (--planner.guidance-scale, --planner.mcg-samples, ...); the plan length defaults to the
    maze's (HORIZON_TOKENS: medium 30, large and giant 60); episode_length and seed are set from the evaluation's
    time limit and --seed"""
    eval_episodes_per_goal: int = DEFAULT_EPISODES_PER_GOAL
    """evaluation episodes per test goal (OGBench's 50; 5 goals; 0: skip evaluation)"""
    eval_seed: int = 0
    """seed of the evaluation's first episode (goal k's episodes: eval_seed + (k - 1) * N + i)"""
    eval_num_envs: int | None = None
    """episodes stepped (and planned) together (default: all episodes of a goal)"""
    eval_max_steps: int | None = None
    """time limit of an evaluation episode (default: the task's, 1000; shorter only for quick checks)"""
    eval_task_ids: tuple[int, ...] | None = None
    """evaluate only these test goals, 1..5 (default: all five; their episodes keep the full evaluation's seeds), to
    look into one goal; a record of fewer goals shows '-' for the others"""
    eval_plan_ended: bool = False
    """keep planning for the episodes that ended while their batch runs on in lockstep, as the evaluation did before
    2026-12-06 (slower; reproduces the records of then exactly)"""
    subgoal_distance: float | None = None
    """guide each plan toward a subgoal this far ahead (maze units; a cell is 4) on the shortest way to the goal
    through the training data's own transitions (``df_agent.subgoals``, search on the replay buffer) instead of the
    goal itself; None: toward the goal (plain Diffusion Forcing). The actions stay the plan's own"""
    subgoal_cell: float = 0.5
    """grid cell of the subgoal graph's nodes (maze units)"""
    eval_only: bool = False
    """skip training: evaluate --checkpoint"""
    checkpoint: str | None = None
    """agent (agent.pt) or training checkpoint (checkpoint.pt, planned with its EMA weights) for --eval-only"""
    save_model: bool = True
    """save the agent (with this command's planner settings, also after --eval-only) to runs/<run name>/agent.pt"""
    runs_dir: str = "runs"
    """folder of TensorBoard runs and checkpoints"""
    record: str | None = None
    """also append the evaluation as a JSON record to this file (e.g. results/df_ogbench.jsonl)"""


class AgentPolicy:
    """The agent as an ``evaluate_ogbench`` policy: OGBench's (x, y) observation in the layout the agent was trained
    on (``position_observation``), guided toward ``desired_goal``, or toward the subgoals of ``subgoals`` (a
    ``SubgoalPolicy`` around the agent) when given."""

    def __init__(self, agent: Agent, subgoals: SubgoalPolicy | None = None, plan_ended: bool = False):
        self.agent = agent
        self.policy = subgoals or agent
        self.plan_ended = plan_ended

    def reset(self, num_envs: int) -> None:
        self.policy.reset(num_envs)

    def act(self, obs: dict, active: np.ndarray | None = None) -> np.ndarray:
        """Actions for OGBench's observation dict; ``active``: the episodes of the batch that go on (``Agent.act``:
        the ended ones do not plan, unless ``plan_ended``)."""
        observation = position_observation(obs["observation"], self.agent.tokenizer.layout.obs_dim)
        return self.policy.act(observation, obs["desired_goal"], active=None if self.plan_ended else active)

    def __call__(self, obs: dict) -> np.ndarray:
        return self.act(obs)


@functools.lru_cache(maxsize=1)
def training_transitions(env_id: str, dataset_dir: str | None) -> Transitions:
    """The task's training transitions in OGBench's (x, y) layout, read once per process: the subgoal graph and the
    fitted action step both need them."""
    return load_ogbench_transitions(env_id, dataset_dir)


def subgoal_policy(args: Args, task: OGBenchTask, agent: Agent) -> SubgoalPolicy | None:
    """``args.subgoal_distance``'s ``SubgoalPolicy`` over the graph of the task's training transitions, or None."""
    if args.subgoal_distance is None:
        if args.planner.route_weight > 0:
            raise SystemExit(
                "--planner.route-weight follows the data's way to a subgoal: set --subgoal-distance too, or turn the "
                f"route pull off with --planner.route-weight 0 (the stitch defaults per maze: {STITCH_ROUTE_WEIGHT})"
            )
        return None
    data = training_transitions(task.env_id, args.dataset_dir)
    graph = TransitionGraph.from_transitions(data, cell=args.subgoal_cell)
    print(f"subgoal graph: {graph.num_nodes:,} nodes, {graph.num_edges:,} edges from {len(data):,} transitions")
    return SubgoalPolicy(agent, graph, args.subgoal_distance, route=args.planner.route_weight > 0)


def planner_config(args: Args, task: OGBenchTask) -> PlannerConfig:
    """``args.planner`` with the episode length of the evaluation and the run's seed, and, when the goal cost is to
    be measured on the positions the actions lead to without an ``action_step``, the step fitted on the task's
    training data (``fit_action_step``)."""
    episode_length = args.eval_max_steps or task.max_episode_steps
    planner = replace(args.planner, episode_length=int(episode_length), seed=args.seed)
    implied = planner.guide_implied_positions or planner.near_goal_guide_implied_positions
    if implied and planner.action_step is None:
        data = training_transitions(task.env_id, args.dataset_dir)
        planner = replace(planner, action_step=fit_action_step(data.observations, data.next_observations, data.actions))
        print(f"action step fitted on the training data: {planner.action_step:.4f}")
    return planner


def train(args: Args, task: OGBenchTask, writer: SummaryWriter, run_dir: Path, device: torch.device) -> Trainer:
    """Diffusion Forcing's training (``df_agent.training``) on the task's dataset, single process."""
    data = load_ogbench_transitions(task.env_id, args.dataset_dir, zero_velocity=args.zero_velocity)
    if args.resume:
        trainer = Trainer.load(args.resume, device=device)
        if trainer.tokenizer.layout.obs_dim != data.observations.shape[1]:
            flag = "--no-zero-velocity" if args.zero_velocity else "--zero-velocity"
            dims = trainer.tokenizer.layout.obs_dim
            raise ValueError(f"{args.resume} was trained on {dims}-D observations; run with {flag}")
        print(f"resumed from {args.resume} at step {trainer.step}")
    else:
        layout = TokenLayout(
            action_dim=2,
            obs_dim=data.observations.shape[1],
            frame_stack=args.frame_stack,
            goal_dim=2 * args.goal_conditioned,
            relative_positions=args.relative_positions,
        )
        config = TrainConfig(
            window_tokens=args.window_tokens or DEFAULT_WINDOW_TOKENS[task.dataset_kind],
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
    if args.mixed_precision and trainer.device.type == "cuda" and torch.cuda.is_bf16_supported():
        trainer.autocast_dtype = torch.bfloat16
    config = trainer.config
    sampler = WindowSampler.from_transitions(
        data,
        config.window_tokens * trainer.tokenizer.layout.frame_stack,
        device=trainer.device,
        with_goals=trainer.tokenizer.layout.goal_dim > 0,
        hindsight_steps=args.hindsight_goal_steps,
        balance_power=args.window_balance,
        balance_cell=args.window_balance_cell,
    )
    setup = (
        f"{len(data):,} transitions in {len(data.episode_lengths):,} episodes, {len(sampler.starts):,} windows of "
        f"{config.window_tokens} tokens x {trainer.tokenizer.layout.frame_stack} steps; observation "
        f"{trainer.tokenizer.layout.obs_dim}-D; {trainer.model.num_parameters():,} parameters; device "
        f"{trainer.device}; batch {config.batch_size}; learning rate {config.learning_rate}"
    )
    print(setup)
    writer.add_text("training", setup)
    checkpoint_path = run_dir / "checkpoint.pt"
    start, last_log, last_log_step = time.perf_counter(), time.perf_counter(), trainer.step
    bar = tqdm(total=args.total_steps, initial=trainer.step, desc="train", unit="step")
    while trainer.step < args.total_steps:
        metrics = trainer.train_step(sampler.sample(config.batch_size, trainer.rng))
        bar.update(1)
        if trainer.step % args.log_every == 0:
            now = time.perf_counter()
            steps_per_second = (trainer.step - last_log_step) / (now - last_log)
            last_log, last_log_step = now, trainer.step
            writer.add_scalar("losses/loss", metrics["loss"], trainer.step)
            writer.add_scalar("losses/grad_norm", metrics["grad_norm"], trainer.step)
            writer.add_scalar("charts/learning_rate", metrics["learning_rate"], trainer.step)
            writer.add_scalar("charts/SPS", steps_per_second, trainer.step)
            tokens_per_second = steps_per_second * config.batch_size * config.window_tokens
            writer.add_scalar("charts/tokens_per_second", tokens_per_second, trainer.step)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if trainer.step % args.checkpoint_every == 0:
            trainer.save(checkpoint_path)
        if args.train_minutes is not None and time.perf_counter() - start > 60 * args.train_minutes:
            print(f"time budget of {args.train_minutes} minutes reached at step {trainer.step}")
            break
    bar.close()
    trainer.save(checkpoint_path)
    train_minutes = trainer.train_seconds / 60  # resumes included
    writer.add_scalar("charts/train_minutes", train_minutes, trainer.step)
    print(f"trained {trainer.step} steps in {train_minutes:.2f} minutes")
    return trainer


def main(args: Args) -> dict:
    task = get_ogbench_task(args.env)
    run_name = f"{task.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = Path(args.runs_dir) / run_name
    writer = SummaryWriter(str(run_dir))
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

    planner = planner_config(args, task)
    step = 0
    if args.eval_only:
        if not args.checkpoint:
            raise SystemExit("--eval-only needs --checkpoint PATH")
        agent = Agent.load(args.checkpoint, device=device, **asdict(planner))
    else:
        trainer = train(args, task, writer, run_dir, device)
        step = trainer.step
        agent = Agent.from_trainer(trainer, planner)
        if args.window_balance > 0:  # provenance of the weights, copied into every record of the agent
            agent.training["window_balance"] = {"power": args.window_balance, "cell": args.window_balance_cell}
    if args.save_model:
        print(f"saved agent to {agent.save(run_dir / 'agent.pt')}")

    summary = {"run": run_name, "train_steps": step}
    if args.eval_episodes_per_goal > 0:
        result: OGBenchEvalResult = evaluate_ogbench(
            AgentPolicy(agent, subgoal_policy(args, task, agent), plan_ended=args.eval_plan_ended),
            task.env_id,
            episodes_per_goal=args.eval_episodes_per_goal,
            seed=args.eval_seed,
            num_envs=args.eval_num_envs,
            max_episode_steps=args.eval_max_steps,
            task_ids=args.eval_task_ids,
        )
        log_evaluation(writer, result, step, prefix="eval")
        print(result)
        summary[task.env_id] = {**result.metrics(), "seconds": result.seconds}
        if args.record:
            settings = {
                **asdict(agent.planner),
                "checkpoint": args.checkpoint or str(run_dir / "agent.pt"),
                "observation": "x, y, 0, 0" if agent.tokenizer.layout.obs_dim == 4 else "x, y",
                "goal_conditioned": agent.tokenizer.layout.goal_dim > 0,
                "relative_positions": agent.tokenizer.layout.relative_positions,
                "episodes_per_goal": args.eval_episodes_per_goal,
                "eval_seed": args.eval_seed,
                "subgoal_distance": args.subgoal_distance,
                "subgoal_cell": args.subgoal_cell if args.subgoal_distance is not None else None,
                "max_episode_steps": result.episode_length,
                "plan_ended": args.eval_plan_ended,
                "task_ids": list(args.eval_task_ids) if args.eval_task_ids else None,
            }
            record = make_record("Diffusion Forcing", result, settings, train_steps=step, model=agent.training)
            append_record(args.record, record)
    writer.close()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def default_args(env: str) -> Args:
    """The defaults for ``env``: the maze's planner (``default_planner``) with, on navigate datasets, subgoals and short
    plans (``NAVIGATE_PLANNER``, ``NAVIGATE_SUBGOAL_DISTANCE``); on the stitch datasets of ``STITCH_PLAIN_MAZES``
    (medium, large), the plain model with the navigate planner, the near-goal settings (``STITCH_NEAR_GOAL_ACTIONS``,
    ``STITCH_PLAIN_PER_MAZE``); on the other stitch datasets (giant), the stitch recipe (``STITCH_TRAINING``,
    ``STITCH_PLANNER``, ``STITCH_SHORT_PLANS``); on every stitch dataset the maze's ``STITCH_SUBGOAL_DISTANCE``,
    ``STITCH_ROUTE_WEIGHT`` and ``STITCH_WINDOW_BALANCE``."""
    task = get_ogbench_task(env)
    args = Args(env=env, planner=default_planner(task.maze))
    if task.dataset_kind == "navigate":
        planner = replace(args.planner, **NAVIGATE_PLANNER)
        return replace(args, planner=planner, subgoal_distance=NAVIGATE_SUBGOAL_DISTANCE)
    if task.maze in STITCH_PLAIN_MAZES:  # the plain model, the navigate planner, the near-goal cost on the actions
        stitch_planner = {**NAVIGATE_PLANNER, **STITCH_NEAR_GOAL_ACTIONS, **STITCH_PLAIN_PER_MAZE[task.maze]}
        training = {}
    else:
        stitch_planner, training = {**STITCH_PLANNER, **STITCH_SHORT_PLANS.get(task.maze, {})}, STITCH_TRAINING
    planner = replace(args.planner, **stitch_planner, route_weight=STITCH_ROUTE_WEIGHT[task.maze])
    maze_defaults = {
        "subgoal_distance": STITCH_SUBGOAL_DISTANCE[task.maze],
        "window_balance": STITCH_WINDOW_BALANCE[task.maze],
    }
    return replace(args, planner=planner, **maze_defaults, **training)


def cli(argv: list[str] | None = None) -> Args:
    """The command line's Args, with the defaults of its --env (``default_args``; explicit flags win)."""
    first_pass = argparse.ArgumentParser(add_help=False)
    first_pass.add_argument("--env", default=Args.env)
    env = first_pass.parse_known_args(argv)[0].env
    try:
        defaults = default_args(env)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    description = __doc__.split("\n\n")[0] + f" Tasks: {', '.join(OGBENCH_TASKS)}."
    return tyro.cli(Args, args=argv, default=defaults, description=description)


if __name__ == "__main__":
    main(cli())
