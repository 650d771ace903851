"""Implicit Q-Learning (Kostrikov, Nair and Levine, ICLR 2022) on the maze2d tasks, in one file.

    python baselines/iql.py --env maze2d-umaze                              # CORL's maze2d settings, 1M steps
    python baselines/iql.py --env maze2d-large-multi --total-steps 200000  # checkpoints in runs/<run>/
    python baselines/iql.py --env maze2d-umaze --train-minutes 10           # a time budget (and --total-steps)
    python baselines/iql.py --eval-only --checkpoint runs/<run>/iql.pt     # 100 episodes of the shared evaluation
    python baselines/iql.py --resume runs/<run>/checkpoints/step_100000.pt  # continue a run exactly

IQL never queries actions outside the dataset: V(s) is fitted by expectile regression (expectile 0.7) towards
min(Q1, Q2)(s, a) of the target critics on dataset pairs, the critics regress r + discount * V(s'), and the policy
is advantage-weighted behaviour cloning, weights exp(beta * (Q - V)) clipped at 100. Defaults are CORL's
``configs/offline/iql/maze2d/*.yaml``: two hidden layers of 256, batch 256, lr 3e-4 (the actor's cosine-annealed
to 0 over the run), beta 3.0, expectile 0.7, discount 0.99, target rate 0.005, state-independent Gaussian policy
with a tanh mean, state normalization, 1M steps. Evaluation is ``envs.evaluation.evaluate`` (deterministic action:
the Gaussian mean); rewards and goals are relabelled as ``baselines.common.GoalRelabelSampler`` describes.
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
from baselines.common import Batch, GoalRelabelSampler, Normalizer, OfflinePolicy
from envs.datasets import load_transitions
from envs.tasks import get_task, resolve_env_id

ALGORITHM = "iql"
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass
class Args(common.RunArgs, common.RelabelArgs):
    exp_name: str = ALGORITHM
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the networks' initialization and of the minibatch sampling"""
    torch_deterministic: bool = True
    """sets `torch.backends.cudnn.deterministic`"""
    device: str = "auto"
    """'auto' (the GPU when there is one), 'cpu' or 'cuda'"""
    env: Annotated[str, tyro.conf.arg(aliases=("--env-id",))] = "maze2d-umaze-v1"
    """the maze2d task: maze2d-{umaze,medium,large}[-multi]-v1 (short forms such as maze2d-large work)"""
    runs_dir: str = "runs"
    """folder of the TensorBoard runs and checkpoints (runs/{run_name})"""
    progress: bool = True
    """show progress bars"""

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
    discount: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """target critic update rate"""
    expectile: float = 0.7
    """expectile of the value regression (0.5: the mean, towards 1: the max)"""
    beta: float = 3.0
    """inverse temperature of the advantage weights (small: behaviour cloning, large: greedy)"""
    exp_adv_max: float = 100.0
    """clip of the advantage weights"""


# What a resumed run takes from the command line: how it runs and for how long. Everything else (data, networks,
# hyperparameters) comes from the checkpoint.
RUN_FIELDS = {"exp_name", "device", "runs_dir", "progress", "total_steps", *common.RUN_ARG_NAMES}


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
        with torch.no_grad():
            target_q = torch.min(*self.qf_target(obs, actions))
            next_v = self.vf(batch.next_observations).squeeze(-1)

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
        weights = torch.exp(args.beta * advantage.detach()).clamp(max=args.exp_adv_max)
        log_prob = self.actor(obs).log_prob(actions).sum(-1)
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
    goal_conditioned = get_task(args.env).multi_goal
    agent = IQL(4 + 2 * goal_conditioned, args).to(device)
    agent.load_state_dict(checkpoint["training_state"])
    normalizer = Normalizer.from_state_dict(checkpoint["normalizer"])
    return OfflinePolicy(agent.actor.act, normalizer, goal_conditioned, device)


def main(args: Args) -> dict:
    """Train IQL on the task's dataset, evaluating and checkpointing as ``args`` says; or, with --eval-only,
    evaluate --checkpoint. Returns the run name and folder, the final evaluation, the policy, the checkpoint path
    and the last step (--eval-only: the evaluation, the policy and the checkpoint)."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.eval_only:
        env_id = common.eval_only_task(args, ALGORITHM)
        policy = load_policy(args.checkpoint, device)
        result = common.evaluate_and_log(policy, env_id, args.final_eval_episodes, args, ALGORITHM)
        return {"final_eval": result, "policy": policy, "checkpoint": args.checkpoint}
    if args.train_minutes is not None and args.train_minutes <= 0:
        raise ValueError(f"--train-minutes must be positive, got {args.train_minutes}; leave it out for no time limit")

    # Resume: the run goes on under its name, from its step, with its data, networks and hyperparameters.
    checkpoint, start_step = None, 0
    if args.resume is not None:
        checkpoint = common.load_checkpoint(args.resume, ALGORITHM, "cpu")
        args = common.resumed_args(args, checkpoint["args"], RUN_FIELDS)
        run_name, start_step = checkpoint["run_name"], checkpoint["step"]
    args = dataclasses.replace(args, env=resolve_env_id(args.env))
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
    data = load_transitions(args.env, generate=True, progress=args.progress)
    if checkpoint is None:
        normalizer = Normalizer.from_states(data.observations)
    else:
        normalizer = Normalizer.from_state_dict(checkpoint["normalizer"])
    sampler = GoalRelabelSampler(
        data,
        args.env,
        normalizer,
        device,
        future_goal_prob=args.future_goal_prob,
        future_goal_mean_steps=args.future_goal_mean_steps,
        terminal_on_success=args.terminal_on_success,
        seed=args.seed,
    )

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
    last_eval = None
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
            bar.set_postfix(sps=f"{sps:.0f}", score=None if last_eval is None else f"{last_eval.normalized_score:.1f}")

        # Evaluation: the final one at the last step, periodic ones before
        if last and args.final_eval_episodes > 0:
            episodes = args.final_eval_episodes
            last_eval = common.evaluate_and_log(policy, args.env, episodes, args, ALGORITHM, global_step, writer)
        elif args.eval_every > 0 and global_step % args.eval_every == 0:
            episodes = args.eval_episodes
            last_eval = common.evaluate_and_log(policy, args.env, episodes, args, ALGORITHM, global_step, writer)

        # Intermediate checkpoints (the last step's is the final one, below)
        if args.save_model and global_step % args.checkpoint_every == 0 and not last:
            save(global_step, run_dir / "checkpoints" / f"step_{global_step}.pt")
        if out_of_time:
            tqdm.write(f"[{ALGORITHM}] time budget of {args.train_minutes} minutes reached at step {global_step:,}")
            break
    bar.close()
    writer.add_scalar("charts/train_minutes", (time.perf_counter() - train_start) / 60, final_step)

    # The final checkpoint
    saved = None
    if args.save_model:
        saved = save(final_step, run_dir / f"{args.exp_name}.pt")
        print(f"[{ALGORITHM}] checkpoint: {saved}")
    if last_eval is not None:
        writer.add_text("final_evaluation", str(last_eval), final_step)
    writer.close()
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
