"""Infrastructure shared by the single-file offline RL baselines ``baselines/iql.py`` and ``baselines/cql.py``; each
script holds its own program (arguments, seeding, data, networks, training loop, evaluation, logging, checkpoints,
resume, ``--eval-only``) in its ``main``.

- ``GoalRelabelSampler``: batches of transitions from ``envs.datasets.load_transitions`` with the reward relabelled
  against the goal the agent is evaluated on: the task's fixed goal on the single-goal tasks (D4RL's convention),
  or, on the multi-goal tasks, a goal drawn per sample from the data itself (HER-style relabelling).
- ``OGBenchGoalSampler``: the same for OGBench's pointmaze datasets, with OGBench's own goal relabelling (its
  ``GCDataset``: the current state, a future state of the same trajectory or a random state; reward 0 at the goal,
  else -1).
- Task dispatch, maze2d or OGBench, in one place: the task id (``resolve_task_id``), the data (``load_task_data``),
  the sampler (``make_sampler``), the evaluation (``evaluation_episodes``, ``evaluate_and_log``) and its record
  (``append_evaluation_record``).
- ``Normalizer``: the dataset's state mean / std (goals are normalized like the position part of the state).
- ``OfflinePolicy``: an actor wrapped as the batch policy that ``envs.evaluation.evaluate`` takes.
- Checkpoints: what one holds and its atomic saving (``save_checkpoint``), loading (``load_checkpoint``, which
  renames the arguments of checkpoints written before the scripts shared one vocabulary: ``upgrade_args``), the
  RNG states (so that a resumed run continues exactly) and the arguments of a resumed run (``resumed_args``).
- The argument groups both scripts' ``Args`` inherit: ``RelabelArgs`` (goal relabelling) and ``RunArgs``
  (evaluation, logging, checkpoints, resume, ``--eval-only``, time budget); ``OGBenchArgs`` for a script that also
  runs on OGBench (so far ``baselines/iql.py``).
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
from envs.datasets import Transitions, load_transitions
from envs.evaluation import EvalResult, evaluate, log_evaluation
from envs.mazes import Maze
from envs.ogbench_eval import OGBenchEvalResult, evaluate_ogbench
from envs.ogbench_tasks import NUM_EVAL_TASKS, OGBENCH_TASKS, get_ogbench_task, is_ogbench_id
from envs.records import append_record, make_record
from envs.tasks import GOAL_RADIUS, TASKS, get_task, resolve_env_id, split_observation


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
    # (B, D): the normalized state with the actor's own goal, where the actor's goals are drawn apart from the
    # value's (OGBench's GCIQL); None: the actor trains on ``observations``
    actor_observations: torch.Tensor | None = None


def run_last_rows(run_ids: np.ndarray) -> np.ndarray:
    """For each row, the last row of its run (``run_ids`` numbers contiguous blocks of rows: episodes, segments)."""
    run_ids = np.asarray(run_ids)
    ends = np.flatnonzero(np.append(run_ids[1:] != run_ids[:-1], True))
    return np.repeat(ends, np.diff(np.concatenate([[-1], ends])))


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
            self.segment_last = run_last_rows(data.segment_ids)
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


class OGBenchGoalSampler:
    """Minibatches of an OGBench pointmaze dataset with goals relabelled as OGBench's GCIQL relabels them.

    This is OGBench's ``GCDataset`` (``impls/utils/datasets.py``) with the settings of ``impls/agents/gciql.py``,
    on the regular layout of ``envs.ogbench_datasets.load_ogbench_transitions``. Its rows are OGBench's valid
    indices: every row of a dataset episode except the last, whose action has no next observation.

    For each sampled transition t (uniform over the rows), two goals are drawn, each as a row of the dataset whose
    observation (x, y) becomes the goal:

    * The **value goal**, which the value and the critics are trained on:
      - the current row t, with probability ``value_p_curgoal`` (0.2);
      - a later row of the same episode, with probability ``value_p_trajgoal`` (0.5). It lies t + k rows ahead,
        with k >= 1 drawn from a geometric distribution with success probability 1 - ``discount``, so its mean is
        1 / (1 - discount) steps. It is clipped to the episode's last row;
      - a random row of the dataset, with probability ``value_p_randomgoal`` (0.3).
    * The **actor goal**, which the advantage-weighted actor is trained on: a random row with probability
      ``actor_p_randomgoal`` (OGBench: 0 on navigate, 0.5 on stitch). Otherwise it is a later row of the same
      episode, uniform between t + 1 and the episode's last row, as OGBench rounds it.

    Success means the value goal's row is t itself (OGBench compares indices, not distances). On success the reward
    is 0 and the episode ends (``done = 1``); otherwise the reward is -1 and the value is bootstrapped. So
    -V(s, g) estimates the discounted number of steps to reach g. The networks see the normalized observation and
    goal. A draw takes its random numbers in OGBench's order, from the sampler's own generator.
    """

    goal_conditioned = True

    def __init__(
        self,
        data: Transitions,
        normalizer: Normalizer,
        device: torch.device | str = "cpu",
        discount: float = 0.99,
        value_p_curgoal: float = 0.2,
        value_p_trajgoal: float = 0.5,
        value_p_randomgoal: float = 0.3,
        actor_p_randomgoal: float = 0.0,
        seed: int = 0,
    ):
        value_probs = (value_p_curgoal, value_p_trajgoal, value_p_randomgoal)
        if any(not 0.0 <= p <= 1.0 for p in value_probs) or not np.isclose(sum(value_probs), 1.0):
            raise ValueError(
                f"value_p_curgoal, value_p_trajgoal and value_p_randomgoal must lie in [0, 1] and sum to 1, got "
                f"{value_probs}"
            )
        if not 0.0 <= actor_p_randomgoal <= 1.0:
            raise ValueError(f"actor_p_randomgoal must lie in [0, 1], got {actor_p_randomgoal}")
        if not 0.0 < discount < 1.0:
            raise ValueError(f"discount must lie in (0, 1), got {discount}")
        self.normalizer = normalizer
        self.device = torch.device(device)
        self.discount = discount
        self.value_probs = value_probs
        self.actor_p_randomgoal = actor_p_randomgoal
        self.rng = np.random.default_rng(seed)
        self.size = len(data)
        self.observations = np.asarray(data.observations, dtype=np.float32)
        self.next_observations = np.asarray(data.next_observations, dtype=np.float32)
        self.actions = np.asarray(data.actions, dtype=np.float32)
        self.final_rows = run_last_rows(data.episode_ids)  # each row's episode's last row (OGBench's final state)

    @property
    def input_dim(self) -> int:
        return self.observations.shape[1] + 2

    def goal_rows(self, rows: np.ndarray, p_curgoal: float, p_trajgoal: float, geometric: bool) -> np.ndarray:
        """OGBench's ``GCDataset.sample_goals``: the goal row of each row in ``rows``; the current row with
        probability ``p_curgoal``, a later row of its episode with ``p_trajgoal`` (geometric offsets or uniform up
        to the episode's last row), else a random row."""
        n = len(rows)
        random_rows = self.rng.integers(self.size, size=n)
        final = self.final_rows[rows]
        if geometric:
            offsets = self.rng.geometric(1.0 - self.discount, size=n)  # >= 1
            traj_rows = np.minimum(rows + offsets, final)
        else:
            distances = self.rng.random(n)
            traj_rows = np.round(np.minimum(rows + 1, final) * distances + final * (1 - distances)).astype(np.int64)
        if p_curgoal == 1.0:
            return rows.copy()
        goal_rows = np.where(self.rng.random(n) < p_trajgoal / (1.0 - p_curgoal), traj_rows, random_rows)
        return np.where(self.rng.random(n) < p_curgoal, rows, goal_rows)

    def sample_rows(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, value goal rows, actor goal rows)`` of one minibatch."""
        rows = self.rng.integers(self.size, size=batch_size)
        p_cur, p_traj, _ = self.value_probs
        value_rows = self.goal_rows(rows, p_cur, p_traj, geometric=True)
        actor_rows = self.goal_rows(rows, 0.0, 1.0 - self.actor_p_randomgoal, geometric=False)
        return rows, value_rows, actor_rows

    def sample(self, batch_size: int) -> Batch:
        rows, value_rows, actor_rows = self.sample_rows(batch_size)
        goals = self.observations[value_rows]
        success = (value_rows == rows).astype(np.float32)
        states = self.observations[rows]
        packed = np.concatenate(
            [
                self.normalizer.inputs(states, goals),
                self.actions[rows],
                (success - 1.0)[:, None],  # rewards
                self.normalizer.inputs(self.next_observations[rows], goals),
                success[:, None],  # dones
                goals,
                self.normalizer.inputs(states, self.observations[actor_rows]),
            ],
            axis=1,
            dtype=np.float32,
        )
        packed = torch.from_numpy(packed).to(self.device, non_blocking=True)
        d = self.input_dim
        return Batch(
            observations=packed[:, :d],
            actions=packed[:, d : d + 2],
            rewards=packed[:, d + 2],
            next_observations=packed[:, d + 3 : 2 * d + 3],
            dones=packed[:, 2 * d + 3],
            goals=packed[:, 2 * d + 4 : 2 * d + 6],
            actor_observations=packed[:, 2 * d + 6 :],
        )

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def split_position_observation(obs, dtype=np.float32) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(positions (B, 2), goals (B, 2), single)`` from one or a batch of OGBench pointmaze observations as
    ``envs.ogbench_eval`` gives them (``observation`` is the (x, y) position), checked like maze2d's
    ``envs.tasks.split_observation``."""
    if not isinstance(obs, dict) or "observation" not in obs or "desired_goal" not in obs:
        found = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
        raise ValueError(f"expected a dict observation with 'observation' and 'desired_goal', got {found}")
    positions = np.asarray(obs["observation"], dtype=dtype)
    goals = np.asarray(obs["desired_goal"], dtype=dtype)
    single = positions.ndim == 1
    positions, goals = np.atleast_2d(positions), np.atleast_2d(goals)
    if positions.ndim != 2 or positions.shape[1] != 2 or goals.shape != positions.shape:
        raise ValueError(
            f"OGBench pointmaze observation must be (2,) or (batch, 2), the (x, y) position, with desired_goal of "
            f"the same shape; got {positions.shape} and {goals.shape}"
        )
    if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(goals))):
        raise ValueError("observation or desired_goal contains NaN or infinity")
    return positions, goals, single


class OfflinePolicy:
    """A trained actor as a policy for ``envs.evaluation.evaluate`` (and anything that takes an SB3-style policy).

    ``act(inputs, deterministic)`` maps normalized network inputs (B, D) to actions (B, 2); evaluation uses the
    deterministic action (the Gaussian mean, or the tanh of the mean for a tanh-Gaussian policy).
    It also serves ``envs.ogbench_eval.evaluate_ogbench``, whose observation is the (x, y) position, when its
    normalizer has two dimensions.
    """

    def __init__(self, act, normalizer: Normalizer, goal_conditioned: bool, device: torch.device | str = "cpu"):
        self.act = act
        self.normalizer = normalizer
        self.goal_conditioned = goal_conditioned
        self.device = torch.device(device)
        # The states it reads: maze2d's (x, y, vx, vy), or OGBench pointmaze's (x, y) (a normalizer of 2 dimensions)
        self._split = split_observation if len(normalizer.mean) == 4 else split_position_observation

    def __call__(self, obs: dict) -> np.ndarray:
        return self.predict(obs, deterministic=True)[0]

    @torch.no_grad()
    def predict(self, obs: dict, state=None, episode_start=None, deterministic: bool = True):
        """SB3-style: ``(actions, None)``; a single unbatched observation gives a single action (2,)."""
        states, goals, single = self._split(obs)
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


@dataclass
class OGBenchArgs:
    """OGBench pointmaze tasks (``--env pointmaze-...``): the data, OGBench's goal relabelling (``OGBenchGoalSampler``)
    and the size of the evaluation (``envs.ogbench_eval``). maze2d runs ignore them."""

    dataset_dir: str | None = None
    """OGBench tasks: folder of the .npz datasets (default: OGBench's ~/.ogbench/data, where
    `python -m envs.ogbench_datasets --env ID` writes them)"""
    value_p_curgoal: float = 0.2
    """OGBench tasks: probability that the goal of the value and critics is the current state (reward 0, done)"""
    value_p_trajgoal: float = 0.5
    """OGBench tasks: probability of a later state of the same episode, k >= 1 steps ahead, k geometric with success
    probability 1 - discount (clipped to the episode's last state); reward -1"""
    value_p_randomgoal: float = 0.3
    """OGBench tasks: probability of a random dataset state (the three value_p_* sum to 1)"""
    actor_p_randomgoal: float | None = None
    """OGBench tasks: probability that the actor's goal is a random dataset state, else a later state of the same
    episode, uniform (None: OGBench's setting, 0 on navigate, 0.5 on stitch)"""
    eval_episodes_per_goal: int = 50
    """OGBench tasks: episodes per test goal (5 goals) of the final evaluation and of --eval-only (OGBench's 50);
    periodic evaluations run --eval-episodes episodes spread over the 5 goals"""
    eval_max_steps: int | None = None
    """OGBench tasks: time limit of an evaluation episode (default: the task's, 1000; shorter only for quick checks)"""


# The fields of ``OGBenchArgs`` that say how a run goes (its evaluation), taken from the command line on resume.
OGBENCH_RUN_ARG_NAMES = frozenset({"eval_episodes_per_goal", "eval_max_steps"})


def ogbench_task_defaults(env_id: str) -> dict:
    """OGBench's per-task settings of its GCIQL runs (``impls/hyperparameters.sh``): discount 0.995 on the giant
    maze, else 0.99; actor goals half random states on stitch datasets, else all from the same episode."""
    task = get_ogbench_task(env_id)
    return {
        "discount": 0.995 if task.maze == "giant" else 0.99,
        "actor_p_randomgoal": 0.5 if task.dataset_kind == "stitch" else 0.0,
    }


# ----------------------------------------------------------------------------------------------- task dispatch


def resolve_task_id(env_id: str) -> str:
    """The full id of a maze2d task (short forms work, ``envs.tasks.resolve_env_id``) or of an OGBench pointmaze
    task (exact ids); anything else raises ValueError listing the valid ids of both."""
    if is_ogbench_id(env_id):
        return env_id
    try:
        return resolve_env_id(env_id)
    except ValueError:
        raise ValueError(
            f"unknown task {env_id!r}; valid ids: maze2d: {', '.join(TASKS)} (the '-v1' may be left out); OGBench: "
            f"{', '.join(OGBENCH_TASKS)}"
        ) from None


def is_goal_conditioned(env_id: str) -> bool:
    """Whether the networks see the goal: on maze2d's multi-goal tasks and on every OGBench task."""
    return is_ogbench_id(env_id) or get_task(env_id).multi_goal


def task_maze(env_id: str) -> tuple[str, str]:
    """``(family, maze)``: ``("maze2d", "large")`` or ``("ogbench", "giant")``; tasks of one maze share a model."""
    if is_ogbench_id(env_id):
        return "ogbench", get_ogbench_task(env_id).maze
    return "maze2d", get_task(env_id).maze


def load_task_data(args) -> Transitions:
    """The task's transitions: maze2d's regenerated dataset (generated on first use), or the OGBench dataset in
    ``args.dataset_dir``, which raises ``OGBenchDatasetMissing`` naming the command that generates it."""
    if is_ogbench_id(args.env):
        from envs.ogbench_datasets import load_ogbench_transitions  # Minari and MuJoCo's rollout: only when needed

        return load_ogbench_transitions(args.env, args.dataset_dir)
    return load_transitions(args.env, generate=True, progress=args.progress)


def make_sampler(data: Transitions, args, normalizer: Normalizer, device: torch.device | str):
    """The task's minibatch sampler: ``GoalRelabelSampler`` on maze2d (``RelabelArgs``), ``OGBenchGoalSampler`` on
    OGBench (``OGBenchArgs`` and ``args.discount``); both seeded with ``args.seed``."""
    if is_ogbench_id(args.env):
        return OGBenchGoalSampler(
            data,
            normalizer,
            device,
            discount=args.discount,
            value_p_curgoal=args.value_p_curgoal,
            value_p_trajgoal=args.value_p_trajgoal,
            value_p_randomgoal=args.value_p_randomgoal,
            actor_p_randomgoal=args.actor_p_randomgoal,
            seed=args.seed,
        )
    return GoalRelabelSampler(
        data,
        args.env,
        normalizer,
        device,
        future_goal_prob=args.future_goal_prob,
        future_goal_mean_steps=args.future_goal_mean_steps,
        terminal_on_success=args.terminal_on_success,
        seed=args.seed,
    )


# ----------------------------------------------------------------------------------------------- evaluation


def eval_only_task(args: RunArgs, algorithm: str) -> str:
    """The task ``--eval-only`` evaluates ``--checkpoint`` on: ``--eval-env``, which must be a task of the maze the
    checkpoint was trained on, or else that task. Raises on missing or contradictory flags."""
    if args.checkpoint is None:
        raise ValueError("--eval-only needs --checkpoint PATH")
    if args.final_eval_episodes < 1:
        raise ValueError("--eval-only evaluates --final-eval-episodes episodes; give at least 1")
    trained = load_checkpoint(args.checkpoint, algorithm)["args"]["env"]
    env_id = resolve_task_id(args.eval_env or trained)
    if task_maze(env_id) != task_maze(trained):
        raise ValueError(f"the checkpoint was trained on {trained}; {env_id} is another maze")
    return env_id


def evaluation_episodes(args, env_id: str, final: bool) -> int:
    """The size of an evaluation. maze2d: episodes, ``--final-eval-episodes`` (final, --eval-only) or
    ``--eval-episodes`` (periodic). OGBench: episodes per test goal, ``--eval-episodes-per-goal`` for the final
    evaluation (none when --final-eval-episodes is 0) and --eval-only, ``--eval-episodes`` spread over the 5 goals
    (rounded up) for the periodic ones."""
    if not is_ogbench_id(env_id):
        return args.final_eval_episodes if final else args.eval_episodes
    if final:
        return args.eval_episodes_per_goal if args.final_eval_episodes > 0 else 0
    return -(-args.eval_episodes // NUM_EVAL_TASKS)


def evaluate_and_log(
    policy: OfflinePolicy, env_id: str, episodes: int, args, label: str, step: int = 0, writer=None
) -> EvalResult | OGBenchEvalResult:
    """The task's evaluation of a script's ``Args``, written to TensorBoard under ``eval/`` when a writer is given,
    and printed as ``[label step N] result``. maze2d: ``envs.evaluation.evaluate``, ``episodes`` episodes, episode
    i seeded ``args.eval_seed + i``. OGBench: ``envs.ogbench_eval.evaluate_ogbench``, ``episodes`` per test goal
    (seeds from ``args.eval_seed``), time limit ``args.eval_max_steps`` or the task's. A progress bar with
    ``args.progress``."""
    if is_ogbench_id(env_id):
        result = evaluate_ogbench(
            policy,
            env_id,
            episodes_per_goal=episodes,
            seed=args.eval_seed,
            max_episode_steps=args.eval_max_steps,
            progress=args.progress,
        )
    else:
        result = evaluate(policy, env_id, num_episodes=episodes, seed=args.eval_seed, progress=args.progress)
    if writer is not None:
        log_evaluation(writer, result, step)
    tqdm.write(f"[{label} step {step:,}] {result}")
    return result


def headline(result: EvalResult | OGBenchEvalResult) -> str:
    """The number a progress bar shows: maze2d's normalized score, or OGBench's success rate in %."""
    if isinstance(result, OGBenchEvalResult):
        return f"{100 * result.success_rate:.0f}%"
    return f"{result.normalized_score:.1f}"


def append_evaluation_record(
    path: str | Path,
    method: str,
    result: EvalResult | OGBenchEvalResult,
    args,
    checkpoint: str | Path | None,
    train_steps: int,
    **extra,
) -> Path:
    """Append an evaluation to the JSON-lines file ``path`` as an ``envs.records`` record. Its settings are the
    script's arguments and the checkpoint evaluated; an OGBench record adds the episodes per goal and the time limit."""
    settings = {**dataclasses.asdict(args), "checkpoint": None if checkpoint is None else str(checkpoint)}
    if isinstance(result, OGBenchEvalResult):
        settings |= {"episodes_per_goal": result.episodes_per_goal, "max_episode_steps": result.episode_length}
    return append_record(path, make_record(method, result, settings, train_steps=train_steps, **extra))
