"""Conservative Q-Learning (Kumar, Zhou, Tucker and Levine, NeurIPS 2020) on the maze2d tasks, in one file.

    python baselines/cql.py --env maze2d-umaze                              # CORL's maze2d settings, 1M steps
    python baselines/cql.py --env maze2d-medium-multi --total-steps 200000  # checkpoints in runs/<run>/
    python baselines/cql.py --env maze2d-umaze --train-minutes 10           # a time budget (and --total-steps)
    python baselines/cql.py --eval-only --checkpoint runs/<run>/cql.pt     # 100 episodes of the shared evaluation
    python baselines/cql.py --resume runs/<run>/checkpoints/step_100000.pt  # continue a run exactly

Soft actor-critic (tanh-Gaussian policy, twin critics, automatic entropy tuning towards entropy -|A|) whose
critics also minimize the CQL(H) penalty: the soft maximum over actions, logsumexp_a Q(s, a), estimated by
importance sampling with 10 uniform actions, 10 policy actions at s and 10 policy actions at s' (all scored at s,
as in CORL and the original code), minus Q(s, a_data). With the Lagrange version the penalty's weight
alpha' * cql_alpha adapts (log alpha' by gradient ascent) so that this gap stays near the target action gap 5.
Defaults are CORL's ``configs/offline/cql/maze2d/*.yaml``: three hidden layers of 256 (actor and critics),
orthogonal critic initialization, batch 256, policy lr 3e-5, critic lr 3e-4, discount 0.99, target rate 0.005,
cql_alpha 10, Lagrange with target action gap 5, 10 sampled actions, importance sampling, no entropy backup,
state normalization, 1M steps. Evaluation is ``envs.evaluation.evaluate`` (deterministic action: tanh of the
mean); rewards and goals are relabelled as ``baselines.common.GoalRelabelSampler`` describes.
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
from envs.datasets import load_transitions
from envs.tasks import get_task, resolve_env_id

ALGORITHM = "cql"
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass
class Args(common.RunArgs, common.RelabelArgs):
    exp_name: str = ALGORITHM
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the networks' initialization, the minibatch sampling and the sampled actions"""
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
    n_hidden: int = 3
    """hidden layers of the actor and of each critic"""
    policy_lr: float = 3e-5
    """actor (and entropy temperature) learning rate"""
    qf_lr: float = 3e-4
    """critic (and CQL Lagrange multiplier) learning rate"""
    discount: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """target critic update rate"""
    orthogonal_init: bool = True
    """orthogonal initialization of the critics (gain sqrt(2), last layer 1e-2)"""
    automatic_entropy_tuning: bool = True
    """learn the SAC temperature towards entropy -|A| (else fixed at --alpha-multiplier)"""
    alpha_multiplier: float = 1.0
    """multiplier of the SAC temperature"""
    backup_entropy: bool = False
    """subtract the entropy term in the TD target"""
    cql_alpha: float = 10.0
    """weight of the conservative penalty"""
    cql_n_actions: int = 10
    """actions sampled per source (uniform, policy at s, policy at s') for the logsumexp"""
    cql_importance_sample: bool = True
    """importance-sampled logsumexp (subtract each sample's log density)"""
    cql_lagrange: bool = True
    """adapt the penalty weight so that the Q gap stays at --cql-target-action-gap"""
    cql_target_action_gap: float = 5.0
    """target of logsumexp Q - Q(data) under the Lagrange version"""
    cql_temp: float = 1.0
    """temperature of the logsumexp"""
    cql_clip_diff_min: float = -math.inf
    """lower clip of the per-sample gap"""
    cql_clip_diff_max: float = math.inf
    """upper clip of the per-sample gap"""


# What a resumed run takes from the command line: how it runs and for how long. Everything else (data, networks,
# hyperparameters) comes from the checkpoint.
RUN_FIELDS = {"exp_name", "device", "runs_dir", "progress", "total_steps", *common.RUN_ARG_NAMES}


def mlp(in_dim: int, out_dim: int, hidden_dim: int, n_hidden: int, orthogonal: bool = False) -> nn.Sequential:
    """ReLU MLP; the last layer starts near zero (CORL: xavier or orthogonal with gain 1e-2, zero bias)."""
    layers, width = [], in_dim
    for _ in range(n_hidden):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    net = nn.Sequential(*layers)
    for layer in net[:-1]:
        if orthogonal and isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, gain=math.sqrt(2))
            nn.init.zeros_(layer.bias)
    (nn.init.orthogonal_ if orthogonal else nn.init.xavier_uniform_)(net[-1].weight, gain=1e-2)
    nn.init.zeros_(net[-1].bias)
    return net


class TanhGaussianPolicy(nn.Module):
    """a = tanh(mean + std * eps); log std = multiplier * net output + offset (both learned, CORL's actor)."""

    def __init__(self, input_dim: int, action_dim: int, hidden_dim: int, n_hidden: int):
        super().__init__()
        self.action_dim = action_dim
        self.net = mlp(input_dim, 2 * action_dim, hidden_dim, n_hidden)
        self.log_std_multiplier = nn.Parameter(torch.tensor(1.0))
        self.log_std_offset = nn.Parameter(torch.tensor(-1.0))

    def forward(self, x: torch.Tensor, repeat: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized actions and their log-densities: (B, A), (B), or (B, repeat, A), (B, repeat)."""
        if repeat is not None:
            x = x.unsqueeze(1).expand(-1, repeat, -1)
        mean, log_std = self.net(x).split(self.action_dim, dim=-1)
        log_std = (self.log_std_multiplier * log_std + self.log_std_offset).clamp(LOG_STD_MIN, LOG_STD_MAX)
        pre_tanh = mean + log_std.exp() * torch.randn_like(mean)
        # log N(u) - log |d tanh(u) / du|, with log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)).
        correction = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
        log_prob = (Normal(mean, log_std.exp()).log_prob(pre_tanh) - correction).sum(-1)
        return torch.tanh(pre_tanh), log_prob

    @torch.no_grad()
    def act(self, x: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if deterministic:
            return torch.tanh(self.net(x)[..., : self.action_dim])
        return self(x)[0]


class QFunction(nn.Module):
    def __init__(self, input_dim: int, action_dim: int, hidden_dim: int, n_hidden: int, orthogonal: bool):
        super().__init__()
        self.net = mlp(input_dim + action_dim, 1, hidden_dim, n_hidden, orthogonal)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Q(x, a) for actions (B, A) -> (B), or several actions per state (B, K, A) -> (B, K)."""
        if a.dim() == 3:
            x = x.unsqueeze(1).expand(-1, a.shape[1], -1)
        return self.net(torch.cat([x, a], dim=-1)).squeeze(-1)


def conservative_gap(
    q_data: torch.Tensor, q_ood: torch.Tensor, log_density: torch.Tensor | None, temp: float = 1.0
) -> torch.Tensor:
    """Per-state CQL(H) gap: temp * logsumexp((Q(s, a_k) - log mu(a_k)) / temp) over sampled actions, - Q(s, a_data).

    With ``log_density`` (importance sampling) the logsumexp estimates log of the integral of exp(Q(s, a)) over
    actions (up to the log of the number of samples); without it the data action joins the sampled ones (CORL).
    """
    if log_density is not None:
        logits = q_ood - log_density
    else:
        logits = torch.cat([q_ood, q_data.unsqueeze(1)], dim=1)
    return temp * torch.logsumexp(logits / temp, dim=1) - q_data


class CQL(nn.Module):
    """Networks, target critics, temperatures and optimizers; ``update`` is one CQL step."""

    def __init__(self, input_dim: int, args: Args, action_dim: int = 2):
        super().__init__()
        self.args = args
        self.action_dim = action_dim
        h, n = args.hidden_dim, args.n_hidden
        self.actor = TanhGaussianPolicy(input_dim, action_dim, h, n)
        self.qf1 = QFunction(input_dim, action_dim, h, n, args.orthogonal_init)
        self.qf2 = QFunction(input_dim, action_dim, h, n, args.orthogonal_init)
        self.qf1_target = copy.deepcopy(self.qf1).requires_grad_(False)
        self.qf2_target = copy.deepcopy(self.qf2).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(0.0))  # SAC temperature
        self.log_alpha_prime = nn.Parameter(torch.tensor(1.0))  # CQL Lagrange multiplier (CORL's initial value)
        self.target_entropy = -float(action_dim)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=args.policy_lr)
        self.critic_optimizer = torch.optim.Adam([*self.qf1.parameters(), *self.qf2.parameters()], lr=args.qf_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=args.policy_lr)
        self.alpha_prime_optimizer = torch.optim.Adam([self.log_alpha_prime], lr=args.qf_lr)

    def critic_loss(self, batch: Batch, alpha: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of both critics plus the conservative penalty (the Lagrange multiplier is updated here)."""
        args = self.args
        obs, actions, next_obs = batch.observations, batch.actions, batch.next_observations
        k, batch_size = args.cql_n_actions, len(actions)
        with torch.no_grad():
            next_actions, next_log_pi = self.actor(next_obs)
            target_q = torch.min(self.qf1_target(next_obs, next_actions), self.qf2_target(next_obs, next_actions))
            if args.backup_entropy:
                target_q = target_q - alpha * next_log_pi
            td_target = batch.rewards + (1.0 - batch.dones) * args.discount * target_q
            random_actions = actions.new_empty(batch_size, k, self.action_dim).uniform_(-1.0, 1.0)
            current_actions, current_log_pi = self.actor(obs, repeat=k)
            next_state_actions, next_state_log_pi = self.actor(next_obs, repeat=k)
            log_density = torch.cat(
                [
                    torch.full((batch_size, k), self.action_dim * math.log(0.5), device=obs.device),  # U(-1, 1)^A
                    next_state_log_pi,
                    current_log_pi,
                ],
                dim=1,
            )
        # Data action first, then the 3k sampled ones: one forward pass per critic.
        all_actions = torch.cat([actions.unsqueeze(1), random_actions, next_state_actions, current_actions], dim=1)
        q1_all, q2_all = self.qf1(obs, all_actions), self.qf2(obs, all_actions)
        q1_data, q2_data = q1_all[:, 0], q2_all[:, 0]
        td_loss = F.mse_loss(q1_data, td_target) + F.mse_loss(q2_data, td_target)

        density = log_density if args.cql_importance_sample else None
        gaps = [
            conservative_gap(q_data, q_all[:, 1:], density, args.cql_temp)
            .clamp(args.cql_clip_diff_min, args.cql_clip_diff_max)
            .mean()
            for q_data, q_all in ((q1_data, q1_all), (q2_data, q2_all))
        ]
        if args.cql_lagrange:
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
            # Gradient ascent on log alpha': grow the weight while the gap exceeds the target, shrink it otherwise.
            alpha_prime_loss = (
                -alpha_prime * args.cql_alpha * 0.5 * sum(g.detach() - args.cql_target_action_gap for g in gaps)
            )
            self.alpha_prime_optimizer.zero_grad(set_to_none=True)
            alpha_prime_loss.backward()
            self.alpha_prime_optimizer.step()
            weight = alpha_prime.detach() * args.cql_alpha
            penalty = sum(weight * (g - args.cql_target_action_gap) for g in gaps)
        else:
            alpha_prime, alpha_prime_loss = torch.zeros(()), torch.zeros(())
            penalty = sum(args.cql_alpha * g for g in gaps)
        info = {
            "qf_loss": td_loss.detach(),
            "cql_penalty": penalty.detach(),
            "cql_gap": 0.5 * (gaps[0] + gaps[1]).detach(),
            "alpha_prime": alpha_prime.detach(),
            "alpha_prime_loss": alpha_prime_loss.detach(),
            "q_data": q1_data.detach().mean(),
            "q_random": q1_all[:, 1 : k + 1].detach().mean(),
            "q_policy": q1_all[:, 2 * k + 1 :].detach().mean(),
            "q_target": target_q.mean(),
            "reward": batch.rewards.mean(),
        }
        return td_loss + penalty, info

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        args = self.args
        obs = batch.observations

        # Entropy temperature and actor (SAC), with the critics as they are before this step's update.
        new_actions, log_pi = self.actor(obs)
        if args.automatic_entropy_tuning:
            alpha_loss = -(self.log_alpha * (log_pi.detach() + self.target_entropy)).mean()
            alpha = self.log_alpha.exp().detach() * args.alpha_multiplier
        else:
            alpha_loss = torch.zeros((), device=obs.device)
            alpha = torch.tensor(args.alpha_multiplier, device=obs.device)
        q_new = torch.min(self.qf1(obs, new_actions), self.qf2(obs, new_actions))
        actor_loss = (alpha * log_pi - q_new).mean()
        critic_loss, info = self.critic_loss(batch, alpha)

        if args.automatic_entropy_tuning:
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        self.critic_optimizer.zero_grad(set_to_none=True)  # also drops the actor loss's gradients on the critics
        critic_loss.backward()
        self.critic_optimizer.step()
        with torch.no_grad():
            for target, source in ((self.qf1_target, self.qf1), (self.qf2_target, self.qf2)):
                for t, s in zip(target.parameters(), source.parameters(), strict=True):
                    t.lerp_(s, args.tau)

        info.update(
            actor_loss=actor_loss.detach(),
            alpha=alpha.detach(),
            alpha_loss=alpha_loss.detach(),
            log_pi=log_pi.detach().mean(),
        )
        return info

    def state_dict(self) -> dict:
        """Everything training changes, as CORL's learners give it: the networks (target critics and the
        temperatures log alpha, log alpha' included) under "networks", beside them the optimizers (the keys
        checkpoints have always had)."""
        return {
            "networks": super().state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "alpha_prime_optimizer": self.alpha_prime_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` gave, e.g. to resume a run exactly."""
        super().load_state_dict(state["networks"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.alpha_prime_optimizer.load_state_dict(state["alpha_prime_optimizer"])


def load_policy(path: str | Path, device: torch.device | str = "cpu") -> OfflinePolicy:
    """The evaluation policy of a checkpoint: its actor's deterministic action on normalized inputs."""
    checkpoint = common.load_checkpoint(path, ALGORITHM, device)
    args = Args(**checkpoint["args"])
    goal_conditioned = get_task(args.env).multi_goal
    agent = CQL(4 + 2 * goal_conditioned, args).to(device)
    agent.load_state_dict(checkpoint["training_state"])
    normalizer = Normalizer.from_state_dict(checkpoint["normalizer"])
    return OfflinePolicy(agent.actor.act, normalizer, goal_conditioned, device)


def main(args: Args) -> dict:
    """Train CQL on the task's dataset, evaluating and checkpointing as ``args`` says; or, with --eval-only,
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
    sampler = common.make_sampler(data, args, normalizer, device)

    # Networks, temperatures and optimizers (restored with the RNG states on resume)
    agent = CQL(sampler.input_dim, args).to(device)
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
