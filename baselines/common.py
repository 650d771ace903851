"""Infrastructure shared by the single-file offline RL baselines ``baselines/iql.py`` and ``baselines/cql.py``; each
script holds its own program (arguments, seeding, data, networks, training loop, evaluation, logging, checkpoints,
resume, ``--eval-only``) in its ``main``.

- ``GoalRelabelSampler``: batches of transitions from ``envs.datasets.load_transitions`` with the reward relabelled
  against the goal the agent is evaluated on: the task's fixed goal on the single-goal tasks (D4RL's convention),
  or, on the multi-goal tasks, a goal drawn per sample from the data itself (HER-style relabelling).
- ``Normalizer``: the dataset's state mean / std (goals are normalized like the position part of the state).
- ``OfflinePolicy``: an actor wrapped as the batch policy that ``envs.evaluation.evaluate`` takes.
- Checkpoints: what one holds and its atomic saving (``save_checkpoint``), loading (``load_checkpoint``, which
  renames the arguments of checkpoints written before the scripts shared one vocabulary: ``upgrade_args``), the
  RNG states (so that a resumed run continues exactly) and the arguments of a resumed run (``resumed_args``).
- The argument groups both scripts' ``Args`` inherit: ``RelabelArgs`` (goal relabelling) and ``RunArgs``
  (evaluation, logging, checkpoints, resume, ``--eval-only``, time budget).
- Evaluation: the task ``--eval-only`` evaluates on (``eval_only_task``), and one evaluation, logged and printed
  (``evaluate_and_log``).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro
from tqdm.auto import tqdm

from df_agent.checkpoints import read_checkpoint_file, save_atomically
from envs.datasets import Transitions
from envs.evaluation import EvalResult, evaluate, log_evaluation
from envs.mazes import Maze
from envs.tasks import GOAL_RADIUS, get_task, resolve_env_id, split_observation


def fixed_goal(env_id: str) -> np.ndarray:
    """The (x, y) goal of a single-goal task: the centre of D4RL's goal cell (``Maze2DEnv.fixed_goal``)."""
    maze = Maze.from_name(get_task(env_id).maze)
    return maze.cell_to_xy(maze.goal_cell).astype(np.float32)


def goal_reward(next_xy: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """The tasks' sparse reward: 1.0 where the position after the step is within ``GOAL_RADIUS`` (0.5) of the goal."""
    return (np.linalg.norm(next_xy - goal, axis=-1) <= GOAL_RADIUS).astype(np.float32)


@dataclasses.dataclass
class Normalizer:
    """Per-dimension state standardization with the dataset's statistics (CORL: std + 1e-3)."""

    mean: np.ndarray  # (4,) x, y, vx, vy
    std: np.ndarray  # (4,)

    @classmethod
    def from_states(cls, states: np.ndarray, eps: float = 1e-3) -> Normalizer:
        states = np.asarray(states, dtype=np.float64)
        return cls(states.mean(0).astype(np.float32), (states.std(0) + eps).astype(np.float32))

    def inputs(self, states: np.ndarray, goals: np.ndarray | None = None) -> np.ndarray:
        """Network inputs: the normalized state, followed by the normalized goal when one is given."""
        x = (np.asarray(states, dtype=np.float32) - self.mean) / self.std
        if goals is None:
            return x
        g = (np.asarray(goals, dtype=np.float32) - self.mean[:2]) / self.std[:2]
        return np.concatenate([x, g], axis=-1)

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "std": self.std.copy()}

    @classmethod
    def from_state_dict(cls, state: dict) -> Normalizer:
        return cls(np.asarray(state["mean"], dtype=np.float32), np.asarray(state["std"], dtype=np.float32))


@dataclasses.dataclass
class Batch:
    observations: torch.Tensor  # (B, D): normalized state (+ normalized goal on the multi-goal tasks)
    actions: torch.Tensor  # (B, 2)
    rewards: torch.Tensor  # (B,)
    next_observations: torch.Tensor  # (B, D), with the same goal
    dones: torch.Tensor  # (B,)
    goals: torch.Tensor  # (B, 2): the (unnormalized) goal the reward refers to


class GoalRelabelSampler:
    """Uniform minibatches of dataset transitions with the reward relabelled against the right goal.

    Single-goal tasks (D4RL's convention, which CORL's maze2d configs inherit): every transition is rewarded
    against the task's fixed goal, ``r = 1[||next_xy - fixed_goal|| <= 0.5]``, whatever goal the expert was
    steering to when the data was recorded; the networks see the normalized state only.

    Multi-goal tasks: the networks see the normalized state and goal. For each sampled transition t, with
    probability ``future_goal_prob`` the goal is a position the point actually reaches later in the same continuous
    run (the achieved position after step t + k, k >= 0 geometric with mean about ``future_goal_mean_steps``,
    clipped to the end of the run; k = 0 is the position right after the step, HER's "future" strategy);
    otherwise it is the goal of the episode t belongs to (the goal the expert was steering to). The reward is then
    recomputed against that goal, ``r = 1[||next_xy_t - goal|| <= 0.5]``. Continuous runs (``segment_ids``) span
    many episodes, so a future goal may lie past the episode's end: the point got there, just on its way to the
    next goal.

    Terminals: none by default (``done = 0`` everywhere). The tasks never terminate (an episode runs its full
    length and the return counts every step spent within 0.5 of the goal) and the point is never reset in the
    data, so every recorded next state is a true successor to bootstrap from; episode ends in the data are
    time-limit or goal-switch truncations, not terminal states. This is also what D4RL's maze2d data says
    (``terminals`` all False). ``terminal_on_success=True`` instead ends the value recursion where the reward is
    earned (``done = r``), the usual goal-reaching formulation; it optimizes reaching the goal once, not staying
    there, which is not what the return measures.
    """

    def __init__(
        self,
        data: Transitions,
        env_id: str,
        normalizer: Normalizer,
        device: torch.device | str = "cpu",
        future_goal_prob: float = 0.5,
        future_goal_mean_steps: float = 100.0,
        terminal_on_success: bool = False,
        seed: int = 0,
    ):
        if not 0.0 <= future_goal_prob <= 1.0:
            raise ValueError(f"future_goal_prob must lie in [0, 1], got {future_goal_prob}")
        if future_goal_mean_steps < 1.0:
            raise ValueError(f"future_goal_mean_steps must be at least 1, got {future_goal_mean_steps}")
        task = get_task(env_id)
        self.goal_conditioned = task.multi_goal
        self.normalizer = normalizer
        self.device = torch.device(device)
        self.future_goal_prob = future_goal_prob
        self.future_goal_mean_steps = future_goal_mean_steps
        self.terminal_on_success = terminal_on_success
        self.rng = np.random.default_rng(seed)
        self.size = len(data)
        self.actions = np.asarray(data.actions, dtype=np.float32)
        self.next_xy = np.asarray(data.next_observations[:, :2], dtype=np.float32)
        if self.goal_conditioned:
            self.states = np.asarray(data.observations, dtype=np.float32)
            self.next_states = np.asarray(data.next_observations, dtype=np.float32)
            self.episode_goals = np.asarray(data.goals, dtype=np.float32)
            # Last row of each row's continuous run (runs are contiguous blocks of rows).
            segment_ids = np.asarray(data.segment_ids)
            ends = np.flatnonzero(np.append(segment_ids[1:] != segment_ids[:-1], True))
            self.segment_last = np.repeat(ends, np.diff(np.concatenate([[-1], ends])))
        else:
            # Nothing depends on the draw but the row: normalize and relabel once.
            self.goal = fixed_goal(env_id)
            self.inputs = normalizer.inputs(data.observations)
            self.next_inputs = normalizer.inputs(data.next_observations)
            self.rewards = goal_reward(self.next_xy, self.goal)

    @property
    def input_dim(self) -> int:
        return 4 + (2 if self.goal_conditioned else 0)

    def relabel_goals(self, rows: np.ndarray) -> np.ndarray:
        """Goals (B, 2) for the transitions at ``rows`` (multi-goal tasks): future achieved positions or own goals."""
        use_future = self.rng.random(len(rows)) < self.future_goal_prob
        offsets = self.rng.geometric(1.0 / self.future_goal_mean_steps, size=len(rows)) - 1
        future_rows = np.minimum(rows + offsets, self.segment_last[rows])
        return np.where(use_future[:, None], self.next_xy[future_rows], self.episode_goals[rows])

    def sample(self, batch_size: int) -> Batch:
        rows = self.rng.integers(self.size, size=batch_size)
        if self.goal_conditioned:
            goals = self.relabel_goals(rows)
            inputs = self.normalizer.inputs(self.states[rows], goals)
            next_inputs = self.normalizer.inputs(self.next_states[rows], goals)
            rewards = goal_reward(self.next_xy[rows], goals)
        else:
            goals = np.broadcast_to(self.goal, (batch_size, 2))
            inputs, next_inputs, rewards = self.inputs[rows], self.next_inputs[rows], self.rewards[rows]
        dones = rewards if self.terminal_on_success else np.zeros_like(rewards)
        # One host-to-device copy per batch.
        packed = np.concatenate(
            [inputs, self.actions[rows], rewards[:, None], next_inputs, dones[:, None], goals], axis=1, dtype=np.float32
        )
        packed = torch.from_numpy(packed).to(self.device, non_blocking=True)
        d = self.input_dim
        return Batch(
            observations=packed[:, :d],
            actions=packed[:, d : d + 2],
            rewards=packed[:, d + 2],
            next_observations=packed[:, d + 3 : 2 * d + 3],
            dones=packed[:, 2 * d + 3],
            goals=packed[:, 2 * d + 4 :],
        )

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class OfflinePolicy:
    """A trained actor as a policy for ``envs.evaluation.evaluate`` (and anything that takes an SB3-style policy).

    ``act(inputs, deterministic)`` maps normalized network inputs (B, D) to actions (B, 2); evaluation uses the
    deterministic action (the Gaussian mean, or the tanh of the mean for a tanh-Gaussian policy).
    """

    def __init__(self, act, normalizer: Normalizer, goal_conditioned: bool, device: torch.device | str = "cpu"):
        self.act = act
        self.normalizer = normalizer
        self.goal_conditioned = goal_conditioned
        self.device = torch.device(device)

    def __call__(self, obs: dict) -> np.ndarray:
        return self.predict(obs, deterministic=True)[0]

    @torch.no_grad()
    def predict(self, obs: dict, state=None, episode_start=None, deterministic: bool = True):
        """SB3-style: ``(actions, None)``; a single unbatched observation gives a single action (2,)."""
        states, goals, single = split_observation(obs)
        inputs = torch.from_numpy(self.normalizer.inputs(states, goals if self.goal_conditioned else None))
        inputs = inputs.to(self.device)
        actions = self.act(inputs, deterministic).clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)
        return (actions[0] if single else actions), None


# ----------------------------------------------------------------------------------------------- checkpoints


def rng_states(sampler: GoalRelabelSampler) -> dict:
    """Every random state a training run draws from, for an exactly resumable checkpoint."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "sampler": sampler.state_dict(),
    }


def restore_rng_states(states: dict, sampler: GoalRelabelSampler) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    sampler.load_state_dict(states["sampler"])


def save_checkpoint(
    path: str | Path,
    algorithm: str,
    args,
    run_name: str,
    step: int,
    learner: torch.nn.Module,
    normalizer: Normalizer,
    sampler: GoalRelabelSampler,
) -> Path:
    """Everything a run needs to go on exactly from ``step`` or to be evaluated: its arguments (a script's
    ``Args``), the learner's ``state_dict``, the normalizer and the RNG states. Written to a temporary file and
    renamed into place, so a crash never leaves half a file; ``load_checkpoint`` reads it."""
    payload = {
        "algorithm": algorithm,
        "args": dataclasses.asdict(args),
        "run_name": run_name,
        "step": step,
        "training_state": learner.state_dict(),
        "normalizer": normalizer.state_dict(),
        "rng": rng_states(sampler),
    }
    return save_atomically(payload, path)


# Arguments renamed when the scripts took one vocabulary (old name -> new name); checkpoints written before store
# the old names. ``cuda`` (a bool) became ``device``: see ``upgrade_args``.
RENAMED_ARGS = {
    "env_id": "env",
    "eval_env_id": "eval_env",
    "eval_freq": "eval_every",
    "log_freq": "log_every",
    "checkpoint_freq": "checkpoint_every",
}


def upgrade_args(saved: dict) -> dict:
    """A checkpoint's arguments under today's names: an older checkpoint's ``env_id``, ``*_freq``, ``eval_env_id``
    and ``cuda`` become ``env``, ``*_every``, ``eval_env`` and ``device`` ('auto' for cuda=True, else 'cpu')."""
    args = {RENAMED_ARGS.get(name, name): value for name, value in saved.items()}
    if "cuda" in args:
        cuda = args.pop("cuda")
        args.setdefault("device", "auto" if cuda else "cpu")
    return args


def load_checkpoint(path: str | Path, algorithm: str, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint written by this project's scripts (it holds numpy and RNG states: trusted files only).

    ``payload["args"]`` is given under today's argument names, whichever version of the script wrote the file."""
    payload = read_checkpoint_file(path, device, "pass the .pt file a training run wrote, or train again")
    if not isinstance(payload, dict) or payload.get("algorithm") != algorithm:
        payload = payload if isinstance(payload, dict) else {}
        raise ValueError(f"{path} is a {payload.get('algorithm')!r} checkpoint, not {algorithm!r}")
    if isinstance(payload.get("args"), dict):
        payload["args"] = upgrade_args(payload["args"])
    return payload


def resumed_args(args, saved: dict, run_fields: set[str]):
    """The arguments of a resumed run: the checkpoint's, except the run-control fields taken from the command line.

    A run continues with the data, networks and hyperparameters it started with; a different value given on the
    command line for any of those is reported and ignored.
    """
    current = dataclasses.asdict(args)
    ignored = {k: v for k, v in current.items() if k not in run_fields and k in saved and saved[k] != v}
    if ignored:
        kept = ", ".join(f"{k}={saved[k]!r} (not {v!r})" for k, v in ignored.items())
        print(f"[resume] keeping the checkpoint's settings: {kept}")
    merged = {k: (v if k in run_fields or k not in saved else saved[k]) for k, v in current.items()}
    return dataclasses.replace(args, **merged)


# ----------------------------------------------------------------------------------------------- arguments


@dataclass
class RelabelArgs:
    """Goal relabelling (``GoalRelabelSampler``): part of a run's data, so a resumed run keeps the checkpoint's."""

    future_goal_prob: float = 0.5
    """multi-goal tasks: probability of relabelling with a later position of the same run (else the episode's goal)"""
    future_goal_mean_steps: float = 100.0
    """multi-goal tasks: mean number of steps ahead of a relabelled future goal (geometric)"""
    terminal_on_success: bool = False
    """done = reward: end the value recursion where the reward is earned (default: never, as in the tasks)"""


@dataclass
class RunArgs:
    """Evaluation, logging, checkpoints, resume, --eval-only and the time budget: how a run goes, not what it
    learns, so a resumed run takes all of these from the command line (``RUN_ARG_NAMES``)."""

    eval_every: int = 50_000
    """evaluate every this many steps (0: only at the end)"""
    eval_episodes: int = 20
    """episodes of each periodic evaluation"""
    final_eval_episodes: int = 100
    """episodes of the final evaluation (and of --eval-only); 0: no final evaluation"""
    eval_seed: int = 0
    """evaluation episode i is seeded eval_seed + i"""
    log_every: int = 1_000
    """write the losses and SPS every this many steps"""
    save_model: bool = True
    """save checkpoints: every --checkpoint-every steps and at the end (runs/{run_name}/...; --no-save-model: none)"""
    checkpoint_every: int = 100_000
    """steps between intermediate checkpoints (with --save-model)"""
    resume: str | None = None
    """continue training from this checkpoint (networks, optimizers, step, normalizer, RNG states)"""
    eval_only: bool = False
    """only evaluate --checkpoint (--final-eval-episodes episodes) and exit"""
    checkpoint: str | None = None
    """checkpoint to evaluate with --eval-only"""
    train_minutes: float | None = None
    """stop training after this many minutes of wall time, even before --total-steps (None: no time limit); the
    final evaluation and checkpoint then happen at the step reached (the actor's learning-rate schedule, where there
    is one, still spans --total-steps)"""
    eval_env: Annotated[str | None, tyro.conf.arg(aliases=("--eval-env-id",))] = None
    """--eval-only on another task of the same maze (e.g. a multi-goal model on the single-goal task)"""


# The fields of ``RunArgs``: part of what a resumed run takes from the command line.
RUN_ARG_NAMES = frozenset(field.name for field in dataclasses.fields(RunArgs))


# ----------------------------------------------------------------------------------------------- evaluation


def eval_only_task(args: RunArgs, algorithm: str) -> str:
    """The task ``--eval-only`` evaluates ``--checkpoint`` on: ``--eval-env``, which must be a task of the maze the
    checkpoint was trained on, or else that task. Raises on missing or contradictory flags."""
    if args.checkpoint is None:
        raise ValueError("--eval-only needs --checkpoint PATH")
    if args.final_eval_episodes < 1:
        raise ValueError("--eval-only evaluates --final-eval-episodes episodes; give at least 1")
    trained = load_checkpoint(args.checkpoint, algorithm)["args"]["env"]
    env_id = resolve_env_id(args.eval_env or trained)
    if get_task(env_id).maze != get_task(trained).maze:
        raise ValueError(f"the checkpoint was trained on {trained}; {env_id} is another maze")
    return env_id


def evaluate_and_log(
    policy: OfflinePolicy, env_id: str, episodes: int, args, label: str, step: int = 0, writer=None
) -> EvalResult:
    """``envs.evaluation.evaluate`` of a script's ``Args`` (episode i seeded ``args.eval_seed + i``, a progress bar
    with ``args.progress``), written to TensorBoard under ``eval/`` when a writer is given, and printed as
    ``[label step N] result``."""
    result = evaluate(policy, env_id, num_episodes=episodes, seed=args.eval_seed, progress=args.progress)
    if writer is not None:
        log_evaluation(writer, result, step)
    tqdm.write(f"[{label} step {step:,}] {result}")
    return result
