"""IQL (baselines/iql.py) and the relabelling sampler it shares with CQL (baselines/common.py), on tiny data."""

from copy import deepcopy

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import envs
from baselines import common, iql
from baselines.common import Batch, GoalRelabelSampler, Normalizer, fixed_goal, goal_reward
from envs.datasets import load_transitions
from envs.tasks import GOAL_RADIUS

pytestmark = pytest.mark.usefixtures("tiny_umaze_dataset")  # tests/conftest.py


def tiny_args(tmp_path, **overrides) -> iql.Args:
    settings = dict(
        env="maze2d-umaze",
        total_steps=200,
        batch_size=32,
        hidden_dim=16,
        eval_every=100,
        eval_episodes=2,
        final_eval_episodes=2,
        log_every=50,
        save_model=True,
        checkpoint_every=100,
        runs_dir=str(tmp_path / "runs"),
        progress=False,
    )
    settings.update(overrides)
    return iql.Args(**settings)


def random_observations(n=7, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "observation": rng.uniform(-1.5, 1.5, size=(n, 4)).astype(np.float32),
        "achieved_goal": rng.uniform(-1.5, 1.5, size=(n, 2)),
        "desired_goal": rng.uniform(-1.5, 1.5, size=(n, 2)),
    }


# ------------------------------------------------------------------------------------------------ the losses


def test_expectile_loss_on_known_values():
    diff = torch.tensor([-1.0, 2.0])
    # Weights |0.7 - 1(u < 0)|: 0.3 for u = -1, 0.7 for u = 2.
    assert iql.expectile_loss(diff, 0.7).item() == pytest.approx((0.3 * 1 + 0.7 * 4) / 2)
    assert iql.expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (1 + 4) / 2)
    assert iql.expectile_loss(torch.tensor([-3.0]), 0.9).item() == pytest.approx(0.1 * 9)


def expectile(values: np.ndarray, tau: float) -> float:
    """The tau-expectile by bisection on its first-order condition sum |tau - 1(x < v)| (x - v) = 0."""
    lo, hi = values.min(), values.max()
    for _ in range(200):
        v = 0.5 * (lo + hi)
        weights = np.where(values > v, tau, 1 - tau)
        lo, hi = (v, hi) if (weights * (values - v)).sum() > 0 else (lo, v)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("tau", [0.5, 0.7, 0.9])
def test_the_minimizer_of_the_expectile_loss_is_the_expectile(tau):
    values = np.random.default_rng(0).exponential(size=64)  # skewed, so mean and expectiles differ clearly
    x = torch.tensor(values, dtype=torch.float64)
    v = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([v], lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = iql.expectile_loss(x - v, tau)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert v.item() == pytest.approx(expectile(values, tau), abs=1e-6)
    if tau == 0.5:
        assert v.item() == pytest.approx(values.mean(), abs=1e-6)
    else:
        assert values.mean() < v.item() < values.max()


def test_iql_value_is_the_expectile_and_the_policy_follows_the_advantage():
    """Two dataset actions per state, rewarded 1 and 0 (terminal): Q learns the rewards, V their 0.7-expectile
    (0.7 for an even mix), and the advantage-weighted actor moves towards the rewarded action."""
    torch.manual_seed(0)
    n = 64
    obs = torch.randn(8, 4).repeat(n // 8, 1)
    good, bad = torch.tensor([0.6, 0.6]), torch.tensor([-0.6, -0.6])
    actions = torch.cat([good.expand(n // 2, 2), bad.expand(n // 2, 2)])
    rewards = torch.cat([torch.ones(n // 2), torch.zeros(n // 2)])
    batch = Batch(obs, actions, rewards, obs, torch.ones(n), torch.zeros(n, 2))
    args = iql.Args(hidden_dim=32, total_steps=100_000, q_lr=3e-3, v_lr=3e-3, actor_lr=3e-3, tau=0.1)
    agent = iql.IQL(4, args)
    for _ in range(600):
        agent.update(batch)
    with torch.no_grad():
        q_good, q_bad = (torch.min(*agent.qf(obs[:8], a.expand(8, 2))) for a in (good, bad))
        v = agent.vf(obs[:8]).squeeze(-1)
        mean_action = agent.actor.act(obs[:8])
    assert q_good.mean().item() == pytest.approx(1.0, abs=0.05) and q_bad.abs().max().item() < 0.05
    assert v.mean().item() == pytest.approx(0.7, abs=0.05)  # 0.7 (1 - v) = 0.3 v
    assert ((mean_action - good).norm(dim=-1) < (mean_action - bad).norm(dim=-1)).all()


def test_iql_state_dict_holds_the_whole_training_state():
    """A learner loaded with another's ``state_dict`` (networks, target critics, optimizers, schedule) takes exactly
    the same next steps."""
    torch.manual_seed(0)
    n = 32
    obs, next_obs = torch.randn(n, 4), torch.randn(n, 4)
    batch = Batch(
        obs, torch.rand(n, 2) * 2 - 1, (torch.rand(n) < 0.5).float(), next_obs, torch.zeros(n), torch.zeros(n, 2)
    )
    args = iql.Args(hidden_dim=16, total_steps=10)
    agent = iql.IQL(4, args)
    for _ in range(3):
        agent.update(batch)
    copy = iql.IQL(4, args)  # other initial weights
    copy.load_state_dict(deepcopy(agent.state_dict()))  # a copy, as from a checkpoint file
    assert set(agent.state_dict()) == {"networks", "actor_optimizer", "q_optimizer", "v_optimizer", "actor_scheduler"}
    for _ in range(3):
        info, copy_info = agent.update(batch), copy.update(batch)
        assert all(torch.equal(info[k], copy_info[k]) for k in info)
    for name, tensor in agent.state_dict()["networks"].items():
        assert torch.equal(tensor, copy.state_dict()["networks"][name]), name
    assert agent.state_dict()["actor_scheduler"] == copy.state_dict()["actor_scheduler"]


# --------------------------------------------------------------------------- relabelling (baselines/common.py)


def test_relabelled_reward_is_one_exactly_within_the_goal_radius():
    goal = np.array([1.0, -0.5], dtype=np.float32)
    offsets = np.array([[0, 0], [0.5, 0], [0, -0.5], [0.4999, 0], [0.5001, 0], [-0.35, 0.35], [-0.36, -0.37]])
    next_xy = (goal + offsets).astype(np.float32)
    expected = (np.linalg.norm(next_xy - goal, axis=-1) <= GOAL_RADIUS).astype(np.float32)
    np.testing.assert_array_equal(goal_reward(next_xy, goal), expected)
    np.testing.assert_array_equal(expected, [1, 1, 1, 1, 0, 1, 0])


def test_fixed_goal_is_the_tasks_goal():
    # D4RL's goal cells (1, 1), (6, 6), (7, 9) in the Gymnasium-Robotics frame, x = col + 0.5 - W / 2 and
    # y = H / 2 - (row + 0.5), worked out by hand (tests/test_tasks.py checks the frame against Gymnasium-Robotics)
    by_hand = {"maze2d-umaze": (-1.0, 1.0), "maze2d-medium": (2.5, -2.5), "maze2d-large": (3.5, -3.0)}
    for env_id, goal in by_hand.items():
        np.testing.assert_allclose(fixed_goal(env_id), goal, atol=1e-6)
        env = envs.make(env_id)
        obs, _ = env.reset(seed=0)
        np.testing.assert_allclose(obs["desired_goal"], goal, atol=1e-6)  # the goal the task's episodes use
        env.close()


def test_single_goal_sampler_relabels_against_the_fixed_goal():
    data = load_transitions("maze2d-umaze", generate=False, progress=False)
    normalizer = Normalizer.from_states(data.observations)
    sampler = GoalRelabelSampler(data, "maze2d-umaze", normalizer, seed=0)
    assert not sampler.goal_conditioned and sampler.input_dim == 4
    batch = sampler.sample(512)
    next_xy = batch.next_observations[:, :2].numpy() * normalizer.std[:2] + normalizer.mean[:2]
    np.testing.assert_allclose(batch.goals.numpy(), np.tile(fixed_goal("maze2d-umaze"), (512, 1)))
    np.testing.assert_array_equal(batch.rewards.numpy(), goal_reward(next_xy, fixed_goal("maze2d-umaze")))
    assert (batch.dones == 0).all()
    # The dataset's own rewards are against each episode's goal; ours against the fixed goal.
    all_rewards = goal_reward(data.next_observations[:, :2], fixed_goal("maze2d-umaze"))
    assert 0 < all_rewards.sum() < len(data) and not np.array_equal(all_rewards, data.rewards)


def test_multi_goal_sampler_uses_future_positions_of_the_same_run_or_the_episode_goal():
    data = load_transitions("maze2d-umaze-multi", generate=False, progress=False)
    normalizer = Normalizer.from_states(data.observations)
    rows = np.random.default_rng(0).integers(len(data), size=300)

    only_own = GoalRelabelSampler(data, "maze2d-umaze-multi", normalizer, future_goal_prob=0.0)
    np.testing.assert_array_equal(only_own.relabel_goals(rows), data.goals[rows])

    only_future = GoalRelabelSampler(data, "maze2d-umaze-multi", normalizer, future_goal_prob=1.0)
    goals = only_future.relabel_goals(rows)
    offsets = []
    for row, goal in zip(rows, goals, strict=True):
        later = np.flatnonzero((data.segment_ids == data.segment_ids[row]) & (np.arange(len(data)) >= row))
        (match,) = np.flatnonzero(np.all(data.next_observations[later, :2] == goal, axis=-1))[:1]
        offsets.append(later[match] - row)
    assert min(offsets) == 0 and 30 < np.mean(offsets) < 200  # geometric, mean about 100 (clipped at run ends)

    sampler = GoalRelabelSampler(data, "maze2d-umaze-multi", normalizer, future_goal_prob=0.5, seed=1)
    assert sampler.goal_conditioned and sampler.input_dim == 6
    batch = sampler.sample(1024)
    goals = batch.goals.numpy()
    np.testing.assert_allclose(
        batch.observations[:, 4:].numpy() * normalizer.std[:2] + normalizer.mean[:2], goals, atol=1e-5
    )
    np.testing.assert_allclose(batch.next_observations[:, 4:], batch.observations[:, 4:])
    next_xy = batch.next_observations[:, :2].numpy() * normalizer.std[:2] + normalizer.mean[:2]
    distance = np.linalg.norm(next_xy - goals, axis=-1)
    clear = np.abs(distance - GOAL_RADIUS) > 1e-4  # away from float round-off at the boundary
    np.testing.assert_array_equal(batch.rewards.numpy()[clear], (distance <= GOAL_RADIUS)[clear])
    assert 0.1 < batch.rewards.mean().item() < 0.9  # relabelling makes the sparse reward frequent
    terminal = GoalRelabelSampler(data, "maze2d-umaze-multi", normalizer, terminal_on_success=True).sample(256)
    np.testing.assert_array_equal(terminal.dones.numpy(), terminal.rewards.numpy())


# ------------------------------------------------------------------------------------------------ the script


def scalar_tags(run_dir) -> set:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_iql_runs_end_to_end_saves_loads_and_resumes_exactly(tmp_path):
    result = iql.main(tiny_args(tmp_path))
    run_dir = result["run_dir"]
    assert run_dir.name.startswith("maze2d-umaze-v1__iql__1__")
    assert list(run_dir.glob("events.out.tfevents.*"))
    tags = scalar_tags(run_dir)
    assert {"charts/SPS", "losses/value_loss", "losses/q_loss", "losses/actor_loss", "eval/normalized_score"} <= tags
    assert result["final_eval"].num_episodes == 2
    final = result["checkpoint"]
    assert final == run_dir / "iql.pt" and (run_dir / "checkpoints" / "step_100.pt").exists()

    # The checkpoint's policy acts exactly as the trained one, batched or one observation at a time.
    obs = random_observations()
    loaded = iql.load_policy(final)
    np.testing.assert_array_equal(loaded(obs), result["policy"](obs))
    single = {k: v[0] for k, v in obs.items()}
    action, state = loaded.predict(single, deterministic=True)
    assert action.shape == (2,) and state is None
    # One observation and a batch go through different BLAS kernels: float32 results agree to about 1e-7
    # relative on one CPU and differ by more on another, so compare with a tolerance that holds on any CPU.
    np.testing.assert_allclose(action, loaded(obs)[0], rtol=1e-5, atol=1e-6)

    # --eval-only reproduces the final evaluation (deterministic actions, the same seeds).
    evaluation = iql.main(iql.Args(eval_only=True, checkpoint=str(final), final_eval_episodes=2, progress=False))
    np.testing.assert_array_equal(evaluation["final_eval"].returns, result["final_eval"].returns)

    # Resuming from step 100 gives exactly the networks and optimizer states of the uninterrupted run.
    resumed = iql.main(
        tiny_args(tmp_path, resume=str(run_dir / "checkpoints" / "step_100.pt"), runs_dir=str(tmp_path / "b"))
    )
    assert resumed["run_name"] == result["run_name"]
    a = torch.load(final, weights_only=False)
    b = torch.load(resumed["checkpoint"], weights_only=False)
    assert a["step"] == b["step"] == 200
    for name, tensor in a["training_state"]["networks"].items():
        assert torch.equal(tensor, b["training_state"]["networks"][name]), name
    assert a["training_state"]["actor_scheduler"] == b["training_state"]["actor_scheduler"]
    for optimizer in ("actor_optimizer", "q_optimizer", "v_optimizer"):
        for key, state in a["training_state"][optimizer]["state"].items():
            other = b["training_state"][optimizer]["state"][key]
            assert all(torch.equal(state[k], other[k]) for k in state), optimizer
    np.testing.assert_array_equal(a["normalizer"]["mean"], b["normalizer"]["mean"])
    assert a["rng"]["sampler"] == b["rng"]["sampler"]


def test_iql_resume_keeps_the_checkpoint_hyperparameters(tmp_path, capsys):
    first = iql.main(tiny_args(tmp_path, total_steps=60, eval_every=0, final_eval_episodes=0, checkpoint_every=1000))
    assert first["final_eval"] is None  # --final-eval-episodes 0: train and save only
    resumed = iql.main(
        tiny_args(tmp_path, resume=str(first["checkpoint"]), total_steps=80, hidden_dim=64, eval_every=0)
    )
    assert "hidden_dim=16 (not 64)" in capsys.readouterr().out
    assert torch.load(resumed["checkpoint"], weights_only=False)["step"] == 80


def test_checkpoints_written_before_the_renames_still_load_evaluate_and_resume(tmp_path, capsys):
    first = iql.main(tiny_args(tmp_path, total_steps=60, eval_every=0, final_eval_episodes=1, checkpoint_every=1000))
    # The same checkpoint as the scripts wrote it before --env, --device and --*-every: env_id, cuda, *_freq.
    payload = torch.load(first["checkpoint"], weights_only=False)
    old_names = {"env": "env_id", "eval_env": "eval_env_id", "eval_every": "eval_freq", "log_every": "log_freq"}
    old_names["checkpoint_every"] = "checkpoint_freq"
    payload["args"] = {old_names.get(k, k): v for k, v in payload["args"].items() if k != "device"}
    payload["args"]["cuda"] = False
    old = tmp_path / "old.pt"
    torch.save(payload, old)

    args = common.load_checkpoint(old, "iql")["args"]
    assert args["env"] == "maze2d-umaze-v1" and args["device"] == "cpu" and "env_id" not in args
    assert (args["eval_every"], args["log_every"], args["checkpoint_every"]) == (0, 50, 1000)
    obs = random_observations()
    np.testing.assert_array_equal(iql.load_policy(old)(obs), first["policy"](obs))
    evaluation = iql.main(iql.Args(eval_only=True, checkpoint=str(old), final_eval_episodes=1, progress=False))
    np.testing.assert_array_equal(evaluation["final_eval"].returns, first["final_eval"].returns)
    # A resumed run keeps the checkpoint's task (read from env_id), whatever --env says.
    resumed = iql.main(
        tiny_args(tmp_path, env="maze2d-umaze-multi", resume=str(old), total_steps=70, final_eval_episodes=0)
    )
    assert "env='maze2d-umaze-v1' (not 'maze2d-umaze-multi')" in capsys.readouterr().out
    assert resumed["run_name"] == first["run_name"] and not resumed["policy"].goal_conditioned


def test_iql_trains_goal_conditioned_on_the_multi_goal_task(tmp_path):
    args = tiny_args(tmp_path, env="maze2d-umaze-multi", total_steps=60, eval_every=0, final_eval_episodes=1)
    result = iql.main(args)
    assert result["run_name"].startswith("maze2d-umaze-multi-v1__iql__")
    policy = result["policy"]
    assert policy.goal_conditioned
    # The goal is an input: the same states with other goals give other actions.
    obs = random_observations()
    other = dict(obs, desired_goal=obs["desired_goal"][::-1].copy())
    assert not np.allclose(policy(obs), policy(other))


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        iql.load_policy(tmp_path / "missing.pt")
    (tmp_path / "truncated.pt").write_bytes(b"\x80\x02 half a file")
    with pytest.raises(ValueError, match="corrupt or not a checkpoint"):
        iql.load_policy(tmp_path / "truncated.pt")
    torch.save({"algorithm": "cql", "args": {}}, tmp_path / "cql.pt")
    with pytest.raises(ValueError, match="'cql' checkpoint, not 'iql'"):
        iql.main(iql.Args(eval_only=True, checkpoint=str(tmp_path / "cql.pt"), progress=False))
    with pytest.raises(ValueError, match="at least 1"):
        iql.main(iql.Args(eval_only=True, checkpoint=str(tmp_path / "cql.pt"), final_eval_episodes=0))
