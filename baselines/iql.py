"""Implicit Q-Learning (Kostrikov, Nair and Levine, ICLR 2022) on the maze2d and OGBench pointmaze tasks, in one file.

    python baselines/iql.py --env maze2d-umaze                              # CORL's maze2d settings, 1M steps
    python baselines/iql.py --env maze2d-large-multi --total-steps 200000  # checkpoints in runs/<run>/
    python baselines/iql.py --env maze2d-umaze --train-minutes 10           # a time budget (and --total-steps)
    python baselines/iql.py --eval-only --checkpoint runs/<run>/iql.pt     # 100 episodes of the shared evaluation
    python baselines/iql.py --resume runs/<run>/checkpoints/step_100000.pt  # continue a run exactly
    python baselines/iql.py --env pointmaze-medium-navigate-v0 --train-minutes 10 --record results/iql_ogbench.jsonl

IQL never queries actions outside the dataset: V(s) is fitted by expectile regression (expectile 0.7) towards
min(Q1, Q2)(s, a) of the target critics on dataset pairs, the critics regress r + discount * V(s'), and the policy
is advantage-weighted behaviour cloning, weights exp(beta * (Q - V)) clipped at 100. Defaults are CORL's
``configs/offline/iql/maze2d/*.yaml``: two hidden layers of 256, batch 256, lr 3e-4 (the actor's cosine-annealed
to 0 over the run), beta 3.0, expectile 0.7, discount 0.99, target rate 0.005, state-independent Gaussian policy
with a tanh mean, state normalization, 1M steps. Evaluation is ``envs.evaluation.evaluate`` (deterministic action:
the Gaussian mean); rewards and goals are relabelled as ``baselines.common.GoalRelabelSampler`` describes.

On OGBench's pointmaze tasks (``pointmaze-{medium,large,giant}-{navigate,stitch}-v0``) the same IQL is
goal-conditioned: the networks see the normalized (x, y) and goal, the data is the locally generated OGBench dataset
(``envs.ogbench_datasets``), goals are relabelled as OGBench's GCIQL relabels them
(``baselines.common.OGBenchGoalSampler``: reward 0 at the goal, else -1; the actor has its own goals), the
expectile is GCIQL's 0.9 and the discount 0.99 (giant: 0.995), and the evaluation is OGBench's protocol
(``envs.ogbench_eval.evaluate_ogbench``: 5 test goals x --eval-episodes-per-goal episodes, success rate).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.distributions import Normal
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from baselines import common
from baselines.common import Batch, Normalizer, OfflinePolicy
from envs.ogbench_tasks import is_ogbench_id

ALGORITHM = "iql"
METHOD = "IQL"  # the method's name in records
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass
class Args(common.OGBenchArgs, common.RunArgs, common.RelabelArgs):  # --help: relabelling, run, OGBench, then IQL
    exp_name: str = ALGORITHM
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the networks' initialization and of the minibatch sampling"""
    torch_deterministic: bool = True
    """sets `torch.backends.cudnn.deterministic`"""
    device: str = "auto"
    """'auto' (the GPU when there is one), 'cpu' or 'cuda'"""
    env: Annotated[str, tyro.conf.arg(aliases=("--env-id",))] = "maze2d-umaze-v1"
    """the task: maze2d-{umaze,medium,large}[-multi]-v1 (short forms such as maze2d-large work), or OGBench's
    pointmaze-{medium,large,giant}-{navigate,stitch}-v0"""
    runs_dir: str = "runs"
    """folder of the TensorBoard runs and checkpoints (runs/{run_name})"""
    progress: bool = True
    """show progress bars"""
    record: str | None = None
    """append the final evaluation (and --eval-only's) as a JSON record to this file (e.g. results/iql_ogbench.jsonl)"""

    # Algorithm (CORL's maze2d configuration)
    total_steps: int = 1_000_000
    """gradient steps (CORL: 1e6); fewer trade quality for time"""
    batch_size: int = 256
    """minibatch size"""
    hidden_dim: int = 256
    """width of every hidden layer"""
    n_hidden: int = 2
    """hidden layers of the actor, the critics and the value network"""
    actor_lr: float = 3e-4
    """actor learning rate, cosine-annealed to 0 over --total-steps"""
    q_lr: float = 3e-4
    """critic learning rate"""
    v_lr: float = 3e-4
    """value network learning rate"""
    discount: float | None = None
    """discount factor (None: 0.99; OGBench's giant maze 0.995, GCIQL's setting)"""
    tau: float = 0.005
    """target critic update rate"""
    expectile: float | None = None
    """expectile of the value regression, 0.5: the mean, towards 1: the max (None: 0.7, CORL's maze2d setting; 0.9
    on OGBench, GCIQL's)"""
    beta: float = 3.0
    """inverse temperature of the advantage weights (small: behaviour cloning, large: greedy)"""
    exp_adv_max: float = 100.0
    """clip of the advantage weights"""

    def __post_init__(self):
        # The task's defaults of the fields left at None, filled in here so that a checkpoint stores the values used
        defaults = {"expectile": 0.7, "discount": 0.99, "actor_p_randomgoal": 0.0}
        if is_ogbench_id(self.env):
            defaults |= {"expectile": 0.9, **common.ogbench_task_defaults(self.env)}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)


# What a resumed run takes from the command line: how it runs and for how long. Everything else (data, networks,
# hyperparameters) comes from the checkpoint.
RUN_FIELDS = {
    "exp_name", "device", "runs_dir", "progress", "record", "total_steps", *common.RUN_ARG_NAMES,
    *common.OGBENCH_RUN_ARG_NAMES,
}  # fmt: skip


def mlp(in_dim: int, out_dim: int, hidden_dim: int, n_hidden: int, output_activation=None) -> nn.Sequential:
    layers, width = [], in_dim
    for _ in range(n_hidden):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    if output_activation is not None:
        layers.append(output_activation)
    return nn.Sequential(*layers)


class GaussianPolicy(nn.Module):
    """N(tanh(mlp(s)), exp(log_std)): a tanh-squashed mean and a learned state-independent std (CORL's IQL)."""

    def __init__(self, input_dim: int, action_dim: int, hidden_dim: int, n_hidden: int):
        super().__init__()
        self.net = mlp(input_dim, action_dim, hidden_dim, n_hidden, nn.Tanh())
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def forward(self, x: torch.Tensor) -> Normal:
        return Normal(self.net(x), self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp())

    @torch.no_grad()
    def act(self, x: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        dist = self(x)
        return (dist.mean if deterministic else dist.sample()).clamp(-1.0, 1.0)


class TwinQ(nn.Module):
    def __init__(self, input_dim: int, action_dim: int, hidden_dim: int, n_hidden: int):
        super().__init__()
        self.q1 = mlp(input_dim + action_dim, 1, hidden_dim, n_hidden)
        self.q2 = mlp(input_dim + action_dim, 1, hidden_dim, n_hidden)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa = torch.cat([x, a], dim=-1)
        return self.q1(xa).squeeze(-1), self.q2(xa).squeeze(-1)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric squared loss: mean of |expectile - 1(diff < 0)| * diff^2; its minimizer over v of
    loss(x - v) is the expectile of x (the mean at 0.5, towards the max as expectile -> 1)."""
    weight = torch.abs(expectile - (diff < 0).float())
    return (weight * diff.square()).mean()


class IQL(nn.Module):
    """Networks, target critics, optimizers and the actor's learning-rate schedule; ``update`` is one IQL step."""

    def __init__(self, input_dim: int, args: Args, action_dim: int = 2):
        super().__init__()
        self.args = args
        h, n = args.hidden_dim, args.n_hidden
        self.actor = GaussianPolicy(input_dim, action_dim, h, n)
        self.qf = TwinQ(input_dim, action_dim, h, n)
        self.qf_target = copy.deepcopy(self.qf).requires_grad_(False)
        self.vf = mlp(input_dim, 1, h, n)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.actor_lr)
        self.q_optimizer = torch.optim.Adam(self.qf.parameters(), lr=args.q_lr)
        self.v_optimizer = torch.optim.Adam(self.vf.parameters(), lr=args.v_lr)
        # Cosine annealing of the actor's lr to 0 over the run (CORL's CosineAnnealingLR), in closed form.
        total = max(1, args.total_steps)
        self.actor_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.actor_optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        )

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        args = self.args
        obs, actions = batch.observations, batch.actions
        # The actor's inputs: its own goals where the sampler draws them (OGBench), else the value's
        actor_obs = obs if batch.actor_observations is None else batch.actor_observations
        with torch.no_grad():
            target_q = torch.min(*self.qf_target(obs, actions))
            next_v = self.vf(batch.next_observations).squeeze(-1)
            if batch.actor_observations is not None:  # the advantage at the actor's goals, before this step's updates
                actor_advantage = torch.min(*self.qf_target(actor_obs, actions)) - self.vf(actor_obs).squeeze(-1)

        # Value: expectile regression of V(s) towards min(Q1, Q2)(s, a) over dataset actions.
        v = self.vf(obs).squeeze(-1)
        advantage = target_q - v
        value_loss = expectile_loss(advantage, args.expectile)
        self.v_optimizer.zero_grad(set_to_none=True)
        value_loss.backward()
        self.v_optimizer.step()

        # Critics: one-step TD towards r + discount * V(s').
        td_target = batch.rewards + (1.0 - batch.dones) * args.discount * next_v
        q1, q2 = self.qf(obs, actions)
        q_loss = 0.5 * (F.mse_loss(q1, td_target) + F.mse_loss(q2, td_target))
        self.q_optimizer.zero_grad(set_to_none=True)
        q_loss.backward()
        self.q_optimizer.step()
        with torch.no_grad():
            for target, source in zip(self.qf_target.parameters(), self.qf.parameters(), strict=True):
                target.lerp_(source, args.tau)

        # Actor: advantage-weighted regression onto the dataset actions.
        if batch.actor_observations is None:
            actor_advantage = advantage.detach()
        weights = torch.exp(args.beta * actor_advantage).clamp(max=args.exp_adv_max)
        log_prob = self.actor(actor_obs).log_prob(actions).sum(-1)
        actor_loss = -(weights * log_prob).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        self.actor_scheduler.step()

        return {
            "value_loss": value_loss.detach(),
            "q_loss": q_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "v": v.detach().mean(),
            "q_target": target_q.mean(),
            "advantage": advantage.detach().mean(),
            "adv_weight": weights.mean(),
            "reward": batch.rewards.mean(),
        }

    def state_dict(self) -> dict:
        """Everything training changes, as CORL's learners give it: the networks (target critics included) under
        "networks", beside them the optimizers and the actor's schedule (the keys checkpoints have always had)."""
        return {
            "networks": super().state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "q_optimizer": self.q_optimizer.state_dict(),
            "v_optimizer": self.v_optimizer.state_dict(),
            "actor_scheduler": self.actor_scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` gave, e.g. to resume a run exactly."""
        super().load_state_dict(state["networks"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.q_optimizer.load_state_dict(state["q_optimizer"])
        self.v_optimizer.load_state_dict(state["v_optimizer"])
        self.actor_scheduler.load_state_dict(state["actor_scheduler"])


def load_policy(path: str | Path, device: torch.device | str = "cpu") -> OfflinePolicy:
    """The evaluation policy of a checkpoint: its actor's deterministic action on normalized inputs."""
    checkpoint = common.load_checkpoint(path, ALGORITHM, device)
    args = Args(**checkpoint["args"])
    normalizer = Normalizer.from_state_dict(checkpoint["normalizer"])
    goal_conditioned = common.is_goal_conditioned(args.env)
    agent = IQL(len(normalizer.mean) + 2 * goal_conditioned, args).to(device)  # the state (4 or 2) and the goal
    agent.load_state_dict(checkpoint["training_state"])
    return OfflinePolicy(agent.actor.act, normalizer, goal_conditioned, device)


def main(args: Args) -> dict:
    """Train IQL on the task's dataset, evaluating and checkpointing as ``args`` says; or, with --eval-only,
    evaluate --checkpoint. Returns the run name and folder, the final evaluation, the policy, the checkpoint path
    and the last step (--eval-only: the evaluation, the policy and the checkpoint)."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.eval_only:
        env_id = common.eval_only_task(args, ALGORITHM)
        policy = load_policy(args.checkpoint, device)
        episodes = common.evaluation_episodes(args, env_id, final=True)
        result = common.evaluate_and_log(policy, env_id, episodes, args, ALGORITHM)
        if args.record:
            step = common.load_checkpoint(args.checkpoint, ALGORITHM)["step"]
            common.append_evaluation_record(args.record, METHOD, result, args, args.checkpoint, step)
        return {"final_eval": result, "policy": policy, "checkpoint": args.checkpoint}
    if args.train_minutes is not None and args.train_minutes <= 0:
        raise ValueError(f"--train-minutes must be positive, got {args.train_minutes}; leave it out for no time limit")

    # Resume: the run goes on under its name, from its step, with its data, networks and hyperparameters.
    checkpoint, start_step = None, 0
    if args.resume is not None:
        checkpoint = common.load_checkpoint(args.resume, ALGORITHM, "cpu")
        args = common.resumed_args(args, checkpoint["args"], RUN_FIELDS)
        run_name, start_step = checkpoint["run_name"], checkpoint["step"]
    args = dataclasses.replace(args, env=common.resolve_task_id(args.env))
    if checkpoint is None:
        run_name = f"{args.env}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = Path(args.runs_dir) / run_name
    # A resumed run drops what the interrupted one logged after its checkpoint.
    writer = SummaryWriter(str(run_dir), purge_step=None if checkpoint is None else start_step)
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items()),
    )

    # Seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic

    # Data: the task's transitions, normalized, with rewards (and goals) relabelled
    data = common.load_task_data(args)
    if checkpoint is None:
        normalizer = Normalizer.from_states(data.observations)
    else:
        normalizer = Normalizer.from_state_dict(checkpoint["normalizer"])
    sampler = common.make_sampler(data, args, normalizer, device)

    # Networks, optimizers and the actor's schedule (restored with the RNG states on resume)
    agent = IQL(sampler.input_dim, args).to(device)
    if checkpoint is not None:
        agent.load_state_dict(checkpoint["training_state"])
        common.restore_rng_states(checkpoint["rng"], sampler)
        print(f"[{ALGORITHM}] resumed {run_name} at step {start_step:,} from {args.resume}")
    policy = OfflinePolicy(agent.actor.act, normalizer, sampler.goal_conditioned, device)

    def save(step: int, path: Path) -> Path:
        return common.save_checkpoint(path, ALGORITHM, args, run_name, step, agent, normalizer, sampler)

    # Training loop; the last step is --total-steps or the one where --train-minutes runs out
    last_eval = final_eval = None
    eval_seconds = 0.0  # time spent in evaluations, which a record's training minutes leave out
    final_episodes = common.evaluation_episodes(args, args.env, final=True)
    periodic_episodes = common.evaluation_episodes(args, args.env, final=False)
    train_start = logged_time = time.perf_counter()
    logged_step = final_step = start_step
    bar = tqdm(
        range(start_step, args.total_steps),
        desc=f"{ALGORITHM} {args.env}",
        initial=start_step,
        total=args.total_steps,
        disable=not args.progress,
    )
    for step in bar:
        info = agent.update(sampler.sample(args.batch_size))
        global_step = final_step = step + 1
        out_of_time = args.train_minutes is not None and time.perf_counter() - train_start > 60 * args.train_minutes
        last = global_step == args.total_steps or out_of_time

        # Logging
        if global_step % args.log_every == 0 or last:
            for name, value in info.items():
                writer.add_scalar(f"losses/{name}", value.item(), global_step)
            writer.add_scalar("charts/actor_lr", agent.actor_optimizer.param_groups[0]["lr"], global_step)
            sps = (global_step - logged_step) / (time.perf_counter() - logged_time)
            writer.add_scalar("charts/SPS", sps, global_step)
            logged_step, logged_time = global_step, time.perf_counter()
            bar.set_postfix(sps=f"{sps:.0f}", score=None if last_eval is None else common.headline(last_eval))

        # Evaluation: the final one at the last step, periodic ones before
        if last and final_episodes > 0:
            episodes = final_episodes
            last_eval = final_eval = common.evaluate_and_log(
                policy, args.env, episodes, args, ALGORITHM, global_step, writer
            )
            eval_seconds += last_eval.seconds
        elif args.eval_every > 0 and global_step % args.eval_every == 0:
            episodes = periodic_episodes
            last_eval = common.evaluate_and_log(policy, args.env, episodes, args, ALGORITHM, global_step, writer)
            eval_seconds += last_eval.seconds

        # Intermediate checkpoints (the last step's is the final one, below)
        if args.save_model and global_step % args.checkpoint_every == 0 and not last:
            save(global_step, run_dir / "checkpoints" / f"step_{global_step}.pt")
        if out_of_time:
            tqdm.write(f"[{ALGORITHM}] time budget of {args.train_minutes} minutes reached at step {global_step:,}")
            break
    bar.close()
    train_minutes = (time.perf_counter() - train_start) / 60
    writer.add_scalar("charts/train_minutes", train_minutes, final_step)

    # The final checkpoint
    saved = None
    if args.save_model:
        saved = save(final_step, run_dir / f"{args.exp_name}.pt")
        print(f"[{ALGORITHM}] checkpoint: {saved}")
    if last_eval is not None:
        writer.add_text("final_evaluation", str(last_eval), final_step)
    writer.close()
    if args.record and final_eval is not None:
        # Training minutes without the evaluations; a resumed run's earlier minutes are not in its checkpoint
        minutes = {"train_minutes": train_minutes - eval_seconds / 60} if checkpoint is None else {}
        common.append_evaluation_record(args.record, METHOD, final_eval, args, saved, final_step, **minutes)
    return {
        "run_name": run_name,
        "run_dir": run_dir,
        "final_eval": last_eval,
        "policy": policy,
        "checkpoint": saved,
        "step": final_step,
    }


if __name__ == "__main__":
    main(tyro.cli(Args))
