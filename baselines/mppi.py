"""MPPI (Williams et al., 2017): sampling-based model-predictive control on the ground-truth maze2d dynamics.

No training. At every control step, for each environment:
  1. sample ``num_samples`` action sequences around the nominal plan U (H x 2): V_k = clip(U + eps_k, -1, 1),
     eps_k ~ N(0, noise_sigma^2);
  2. roll every V_k out in the task's own MuJoCo model from the current state (``envs.simulator.BatchedPointMaze``:
     the same states the Gymnasium env would visit, velocity clip included);
  3. cost S_k = sum over the horizon of the distance from the point to the goal + control_penalty * sum ||V_k||^2;
  4. weights w_k = softmax(-S_k / lambda); nominal U <- U + sum_k w_k (V_k - U);
  5. execute U[0], shift U one step left (the new last action is 0).
The cost sees only ``horizon`` steps ahead, so MPPI gets stuck behind walls between the point and the goal; that is
the expected behaviour of this baseline on maze2d (DF paper, Table 1: 33.2 / 10.2 / 5.1 on umaze / medium / large).

    python baselines/mppi.py --env maze2d-umaze --num-episodes 20
    python baselines/mppi.py --env maze2d-large-multi --num-samples 128 --horizon 40
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro
from torch.utils.tensorboard import SummaryWriter

import envs
from envs.evaluation import evaluate, log_evaluation
from envs.simulator import BatchedPointMaze


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the planner's noise"""
    eval_seed: int = 0
    """seed of the first evaluation episode (episode i: eval_seed + i; the test episodes are seeds 0-99, as for
    every method)"""
    env: Annotated[str, tyro.conf.arg(aliases=("--env-id",))] = "maze2d-umaze-v1"
    """the maze2d task (any of the six; short forms such as maze2d-large or large-multi work)"""
    num_episodes: int = 20
    """evaluation episodes"""
    num_envs: int | None = None
    """episodes run side by side, planned in one batch (default: all of them, at most 100)"""
    horizon: int = 25
    """H: planning horizon in control steps (100 Hz, so 25 steps = 0.25 s); K x H sets the cost of a step"""
    num_samples: int = 64
    """K: action sequences sampled per control step and environment (64 x 25 keeps up with 100 Hz on one core)"""
    temperature: float = 1.0
    """lambda: temperature of the weights exp(-cost / lambda) (cost in metres summed over the horizon)"""
    noise_sigma: float = 0.5
    """standard deviation of the Gaussian action noise, per action dimension (actions lie in [-1, 1])"""
    control_penalty: float = 0.01
    """weight of sum ||a_t||^2 over the horizon in the cost"""
    num_threads: int = 1
    """threads of the MuJoCo rollouts"""
    timing_steps: int = 100
    """control steps of one environment timed before the evaluation, to report control steps per second"""
    progress: bool = True
    """show tqdm progress bars"""
    runs_dir: str = "runs"
    """folder of the TensorBoard runs (runs/{run_name})"""


class MPPIPlanner:
    """MPPI on the ground-truth dynamics, as a policy for ``envs.evaluation.evaluate``.

    ``planner(obs)`` takes a batch of dict observations (B environments) and returns actions (B, 2); ``reset(B)``
    clears the nominal plans (the evaluation calls it before each batch of episodes). Each observation's own
    ``desired_goal`` is the target, so single- and multi-goal tasks work alike.
    """

    def __init__(
        self,
        maze: str,
        horizon: int = 25,
        num_samples: int = 64,
        temperature: float = 1.0,
        noise_sigma: float = 0.5,
        control_penalty: float = 0.01,
        seed: int | None = 0,
        num_threads: int = 1,
    ):
        if horizon < 1 or num_samples < 1 or temperature <= 0 or noise_sigma < 0:
            raise ValueError("MPPI needs horizon >= 1, num_samples >= 1, temperature > 0 and noise_sigma >= 0")
        self.sim = BatchedPointMaze(maze, num_threads=num_threads)
        self.horizon, self.num_samples = horizon, num_samples
        self.temperature, self.noise_sigma, self.control_penalty = temperature, noise_sigma, control_penalty
        self.rng = np.random.default_rng(seed)
        self.nominal: np.ndarray | None = None  # (B, H, 2)
        self.planning_seconds = 0.0  # wall-clock time spent planning
        self.planning_cpu_seconds = 0.0  # CPU time of this process spent planning (robust to a busy machine)
        self.control_steps = 0  # environment-steps planned (B per call)
        self.calls = 0

    def reset(self, num_envs: int) -> None:
        self.nominal = np.zeros((num_envs, self.horizon, 2))

    def costs(self, positions: np.ndarray, actions: np.ndarray, goals: np.ndarray) -> np.ndarray:
        """Cost (B, K) of rollouts: positions (B, K, H, 2) after each action, actions (B, K, H, 2), goals (B, 2)."""
        distance = np.linalg.norm(positions - goals[:, None, None, :], axis=-1).sum(-1)
        return distance + self.control_penalty * np.square(actions).sum((-1, -2))

    def __call__(self, obs: dict) -> np.ndarray:
        start, start_cpu = time.perf_counter(), time.process_time()
        state, goals, _ = envs.split_observation(obs, dtype=np.float64)
        b, k, h = len(state), self.num_samples, self.horizon
        if self.nominal is None or len(self.nominal) != b:
            self.reset(b)
        noise = self.rng.normal(0.0, self.noise_sigma, size=(b, k, h, 2))
        noise[:, 0] = 0.0  # sample 0 is the nominal plan itself
        candidates = np.clip(self.nominal[:, None] + noise, -1.0, 1.0)
        qpos, _ = self.sim.rollout(
            np.repeat(state[:, :2], k, axis=0), np.repeat(state[:, 2:], k, axis=0), candidates.reshape(b * k, h, 2)
        )
        cost = self.costs(qpos.reshape(b, k, h, 2), candidates, goals)
        logits = -(cost - cost.min(axis=1, keepdims=True)) / self.temperature
        weights = np.exp(logits)
        weights /= weights.sum(axis=1, keepdims=True)
        # The update uses the clipped perturbations, so the nominal plan stays inside [-1, 1].
        self.nominal = self.nominal + np.einsum("bk,bkhd->bhd", weights, candidates - self.nominal[:, None])
        action = self.nominal[:, 0].copy()
        self.nominal = np.concatenate([self.nominal[:, 1:], np.zeros((b, 1, 2))], axis=1)
        self.planning_seconds += time.perf_counter() - start
        self.planning_cpu_seconds += time.process_time() - start_cpu
        self.control_steps += b
        self.calls += 1
        return action.astype(np.float32)


def make_planner(args: Args) -> MPPIPlanner:
    return MPPIPlanner(
        envs.get_task(args.env).maze,
        horizon=args.horizon,
        num_samples=args.num_samples,
        temperature=args.temperature,
        noise_sigma=args.noise_sigma,
        control_penalty=args.control_penalty,
        seed=args.seed,
        num_threads=args.num_threads,
    )


def control_steps_per_second(args: Args) -> tuple[float, float]:
    """Control steps per second of one environment (batch of 1), env stepping excluded: per wall-clock second and
    per CPU second of this process (the two agree on an idle machine with --num-threads 1)."""
    planner = make_planner(args)
    env = envs.make(args.env)
    obs, _ = env.reset(seed=args.seed)
    planner.reset(1)
    for _ in range(args.timing_steps):
        batch = {key: value[None] for key, value in obs.items()}
        obs, *_ = env.step(planner(batch)[0])
    env.close()
    return planner.calls / planner.planning_seconds, planner.calls / planner.planning_cpu_seconds


def main(args: Args) -> dict:
    env_id = envs.resolve_env_id(args.env)
    run_name = f"{env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    writer = SummaryWriter(str(Path(args.runs_dir) / run_name))
    table = "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")

    # seeding (MPPI's noise comes from its own generator, seeded with args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)

    metrics = {}
    if args.timing_steps > 0:
        wall, cpu = control_steps_per_second(args)
        metrics["control_steps_per_second"], metrics["control_steps_per_cpu_second"] = wall, cpu
        writer.add_scalar("charts/control_steps_per_second", wall, 0)
        writer.add_scalar("charts/control_steps_per_cpu_second", cpu, 0)
        print(
            f"MPPI {args.num_samples} samples x horizon {args.horizon}, one environment: "
            f"{wall:.1f} control steps/s ({cpu:.1f} per CPU second)"
        )

    planner = make_planner(args)
    result = evaluate(
        planner, env_id, args.num_episodes, seed=args.eval_seed, num_envs=args.num_envs, progress=args.progress
    )
    log_evaluation(writer, result, global_step=0)
    batched_rate = planner.control_steps / planner.planning_seconds
    batched_cpu_rate = planner.control_steps / planner.planning_cpu_seconds
    writer.add_scalar("charts/batched_control_steps_per_second", batched_rate, 0)
    writer.add_scalar("charts/batched_control_steps_per_cpu_second", batched_cpu_rate, 0)
    writer.close()
    print(result)
    print(
        f"planning in the evaluation (all environments in one batch): {batched_rate:.1f} environment-steps/s "
        f"({batched_cpu_rate:.1f} per CPU second)"
    )
    metrics.update(result.metrics())
    metrics["batched_control_steps_per_second"] = batched_rate
    metrics["batched_control_steps_per_cpu_second"] = batched_cpu_rate
    metrics["args"] = asdict(args)
    metrics["result"] = result
    return metrics


if __name__ == "__main__":
    main(tyro.cli(Args))
