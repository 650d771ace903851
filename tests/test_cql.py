"""CQL (baselines/cql.py) on tiny data: the conservative penalty, the Lagrange multiplier, the script end to end."""

import math
from copy import deepcopy

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from baselines import cql
from baselines.common import Batch

pytestmark = pytest.mark.usefixtures("tiny_umaze_dataset")  # tests/conftest.py


def tiny_args(tmp_path, **overrides) -> cql.Args:
    settings = dict(
        env="maze2d-umaze-multi",
        total_steps=200,
        batch_size=32,
        hidden_dim=16,
        n_hidden=2,
        cql_n_actions=4,
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
    return cql.Args(**settings)


def toy_batch(n=64, seed=0) -> Batch:
    """States of a handful of kinds, all dataset actions near (0.5, -0.5), no reward, terminal (Q(data) -> 0)."""
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(8, 4, generator=generator).repeat(n // 8, 1)
    actions = torch.tensor([0.5, -0.5]) + 0.05 * torch.randn(n, 2, generator=generator)
    return Batch(obs, actions, torch.zeros(n), obs, torch.ones(n), torch.zeros(n, 2))


def q_gap(agent: cql.CQL, batch: Batch, num_random: int = 256) -> float:
    """Mean over states of Q(s, dataset action) - Q(s, uniform random action), averaged over both critics."""
    with torch.no_grad():
        obs = batch.observations
        random_actions = torch.empty(len(obs), num_random, 2).uniform_(-1, 1)
        gaps = []
        for qf in (agent.qf1, agent.qf2):
            gaps.append((qf(obs, batch.actions) - qf(obs, random_actions).mean(1)).mean().item())
    return float(np.mean(gaps))


# ------------------------------------------------------------------------------------------------ the losses


def test_conservative_gap_on_known_values():
    q_data = torch.tensor([1.0, -2.0])
    q_ood = torch.tensor([[0.5, 0.5, 0.5, 0.5], [3.0, 3.0, 3.0, 3.0]])
    # Without importance sampling the data action joins the sampled ones.
    expected = torch.logsumexp(torch.tensor([[0.5] * 4 + [1.0], [3.0] * 4 + [-2.0]]), dim=1) - q_data
    torch.testing.assert_close(cql.conservative_gap(q_data, q_ood, None), expected)
    # With it, each sample is divided by its density: uniform on [-1, 1]^2 has density 1/4.
    log_density = torch.full((2, 4), math.log(0.25))
    expected = q_ood[:, 0] + math.log(4) - math.log(0.25) - q_data
    torch.testing.assert_close(cql.conservative_gap(q_data, q_ood, log_density), expected)
    # Temperature: temp * logsumexp(x / temp) tends to the max as temp -> 0.
    sharp = cql.conservative_gap(q_data, torch.tensor([[0.0, 2.0], [1.0, 5.0]]), torch.zeros(2, 2), temp=1e-3)
    torch.testing.assert_close(sharp, torch.tensor([1.0, 7.0]), atol=1e-2, rtol=0)


def test_tanh_gaussian_log_prob_matches_torch_transformed_distribution():
    torch.manual_seed(0)
    policy = cql.TanhGaussianPolicy(4, 2, 16, 2)
    x = torch.randn(5, 4)
    torch.manual_seed(1)
    actions, log_prob = policy(x)
    mean, log_std = policy.net(x).split(2, dim=-1)
    log_std = policy.log_std_multiplier * log_std + policy.log_std_offset
    reference = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), torch.distributions.transforms.TanhTransform()
    )
    torch.testing.assert_close(log_prob, reference.log_prob(actions).sum(-1), atol=1e-4, rtol=1e-4)
    assert (actions.abs() < 1).all()
    repeated, repeated_log_prob = policy(x, repeat=3)
    assert repeated.shape == (5, 3, 2) and repeated_log_prob.shape == (5, 3)
    torch.testing.assert_close(policy.act(x), torch.tanh(mean))


def test_the_penalty_lowers_q_on_out_of_distribution_actions():
    batch = toy_batch()

    def train(cql_alpha: float) -> float:
        torch.manual_seed(0)
        args = cql.Args(hidden_dim=32, n_hidden=2, cql_alpha=cql_alpha, cql_lagrange=False, qf_lr=1e-3)
        agent = cql.CQL(4, args)
        for _ in range(200):
            agent.update(batch)
        return q_gap(agent, batch)

    without_penalty, with_penalty = train(0.0), train(1.0)
    assert abs(without_penalty) < 0.3  # plain TD learning leaves unseen actions near the initial Q
    assert with_penalty > 1.0 and with_penalty > without_penalty + 1.0


def test_the_lagrange_multiplier_tracks_the_target_gap():
    batch = toy_batch()

    def alpha_prime_after(target_gap: float) -> float:
        torch.manual_seed(0)
        args = cql.Args(hidden_dim=16, n_hidden=2, cql_target_action_gap=target_gap, qf_lr=1e-2)
        agent = cql.CQL(4, args)
        start = agent.log_alpha_prime.exp().item()
        for _ in range(20):
            info = agent.update(batch)
        return info["alpha_prime"].item() / start

    assert alpha_prime_after(-100.0) > 1.1  # gap far above the target: the penalty's weight grows
    assert alpha_prime_after(100.0) < 0.9  # far below: it shrinks


def test_cql_state_dict_holds_the_whole_training_state():
    """A learner loaded with another's ``state_dict`` (networks, target critics, temperatures, optimizers) takes
    exactly the same next steps, given the same random draws."""
    batch = toy_batch()
    torch.manual_seed(0)
    args = cql.Args(hidden_dim=16, n_hidden=2, cql_n_actions=4)
    agent = cql.CQL(4, args)
    for _ in range(3):
        agent.update(batch)
    copy = cql.CQL(4, args)  # other initial weights
    copy.load_state_dict(deepcopy(agent.state_dict()))  # a copy, as from a checkpoint file
    optimizers = {"actor_optimizer", "critic_optimizer", "alpha_optimizer", "alpha_prime_optimizer"}
    assert set(agent.state_dict()) == {"networks", *optimizers}
    for _ in range(3):
        torch.manual_seed(1)
        info = agent.update(batch)
        torch.manual_seed(1)
        copy_info = copy.update(batch)
        assert all(torch.equal(info[k], copy_info[k]) for k in info)
    for name, tensor in agent.state_dict()["networks"].items():
        assert torch.equal(tensor, copy.state_dict()["networks"][name]), name


# ------------------------------------------------------------------------------------------------ the script


def test_cql_runs_end_to_end_saves_loads_and_resumes_exactly(tmp_path):
    result = cql.main(tiny_args(tmp_path))
    run_dir = result["run_dir"]
    assert run_dir.name.startswith("maze2d-umaze-multi-v1__cql__1__")
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"charts/SPS", "losses/qf_loss", "losses/actor_loss", "losses/cql_gap", "losses/alpha_prime"} <= tags
    assert {"eval/normalized_score", "eval/success_rate", "eval/time_to_goal"} <= tags
    assert [e.step for e in events.Scalars("eval/normalized_score")] == [100, 200]
    final = result["checkpoint"]
    assert final == run_dir / "cql.pt" and (run_dir / "checkpoints" / "step_100.pt").exists()

    rng = np.random.default_rng(0)
    obs = {
        "observation": rng.uniform(-1.5, 1.5, size=(6, 4)),
        "achieved_goal": rng.uniform(-1.5, 1.5, size=(6, 2)),
        "desired_goal": rng.uniform(-1.5, 1.5, size=(6, 2)),
    }
    loaded = cql.load_policy(final)
    np.testing.assert_array_equal(loaded(obs), result["policy"](obs))
    assert loaded(obs).shape == (6, 2) and np.abs(loaded(obs)).max() <= 1

    # A goal-conditioned model also runs on the single-goal task of its maze.
    single = cql.main(
        cql.Args(eval_only=True, checkpoint=str(final), eval_env="maze2d-umaze", final_eval_episodes=1, progress=False)
    )
    assert single["final_eval"].env_id == "maze2d-umaze-v1"

    resumed = cql.main(
        tiny_args(tmp_path, resume=str(run_dir / "checkpoints" / "step_100.pt"), runs_dir=str(tmp_path / "b"))
    )
    a = torch.load(final, weights_only=False)
    b = torch.load(resumed["checkpoint"], weights_only=False)
    assert a["step"] == b["step"] == 200
    for name, tensor in a["training_state"]["networks"].items():
        assert torch.equal(tensor, b["training_state"]["networks"][name]), name
    for optimizer in ("actor_optimizer", "critic_optimizer", "alpha_optimizer", "alpha_prime_optimizer"):
        for key, state in a["training_state"][optimizer]["state"].items():
            other = b["training_state"][optimizer]["state"][key]
            assert all(torch.equal(state[k], other[k]) for k in state), optimizer
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_cql_trains_on_the_single_goal_task(tmp_path):
    from envs.evaluation import evaluate

    result = cql.main(tiny_args(tmp_path, env="maze2d-umaze", total_steps=50, eval_every=0, final_eval_episodes=1))
    policy = result["policy"]
    assert not policy.goal_conditioned
    # the actor reads the 4-D state alone (a goal-conditioned one reads state and goal, 6-D) ...
    actor = policy.act.__self__
    first_layer = next(m for m in actor.modules() if isinstance(m, torch.nn.Linear))
    assert first_layer.in_features == 4
    # ... so the desired goal of an observation changes nothing, while the state does
    rng = np.random.default_rng(0)
    states = rng.uniform(-1.5, 1.5, size=(6, 4))
    actions = policy({"observation": states, "desired_goal": rng.uniform(-1.5, 1.5, size=(6, 2))})
    other_goals = policy({"observation": states, "desired_goal": rng.uniform(-1.5, 1.5, size=(6, 2))})
    np.testing.assert_array_equal(actions, other_goals)
    other_states = policy({"observation": states[::-1].copy(), "desired_goal": np.zeros((6, 2))})
    assert np.abs(other_states - actions[::-1]).max() == 0 and np.abs(other_states - actions).max() > 0
    # the final evaluation is the single-goal task's, episode seed 0 (--eval-seed), and reproduces
    final = result["final_eval"]
    assert final.env_id == "maze2d-umaze-v1" and final.seeds == [0]
    again = evaluate(policy, "maze2d-umaze", num_episodes=1, seed=0, progress=False)
    np.testing.assert_array_equal(again.returns, final.returns)
    np.testing.assert_array_equal(again.time_to_goal, final.time_to_goal)
