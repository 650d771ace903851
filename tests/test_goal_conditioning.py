"""Goal-conditioned Diffusion Forcing (``TokenLayout.goal_dim``): the goal enters the model's initial state beside
the observation, training windows carry the goal their episode pursued, and the agent conditions its plans on the
goal it is given. Each test checks one link of that chain against an independent expectation."""

import numpy as np
import pytest
import torch

from df_agent.agent import Agent, PlannerConfig, goal_input_along_ray
from df_agent.tokens import Tokenizer, TokenLayout
from df_agent.training import TrainConfig, WindowSampler, make_trainer
from envs.datasets import load_transitions

LAYOUT = TokenLayout(frame_stack=5, goal_dim=2)
MODEL = {"latent_dim": 16, "width": 32, "depth": 1, "level_embedding_dim": 8}
WINDOW_TOKENS = 4


@pytest.fixture(scope="module")
def data(tiny_umaze_dataset):
    return load_transitions("maze2d-umaze", generate=False, progress=False)


def new_trainer(data, layout=LAYOUT, seed=0):
    config = TrainConfig(window_tokens=WINDOW_TOKENS, batch_size=16, learning_rate=3e-3, warmup_steps=1)
    return make_trainer(data, layout, MODEL, config, device="cpu", seed=seed)


def test_the_condition_is_the_normalized_observation_then_the_goal_scaled_like_the_position():
    layout = TokenLayout(frame_stack=1, goal_dim=2)  # a step is [action (2), next observation (4)]
    mean = np.array([0.0, 0.0, 1.0, 2.0, 0.5, -0.5], dtype=np.float32)
    std = np.array([1.0, 1.0, 2.0, 4.0, 3.0, 5.0], dtype=np.float32)
    tokenizer = Tokenizer(layout, mean, std)
    obs = np.array([[3.0, 6.0, 2.0, 4.5]], dtype=np.float32)
    goal = np.array([[1.0, 10.0]], dtype=np.float32)
    expected = [[1.0, 1.0, 0.5, 1.0, 0.0, 2.0]]  # (obs - mean) / std, then (goal - mean[:2]) / std[:2] of the position
    np.testing.assert_allclose(tokenizer.condition(obs, goal), expected)
    as_tensor = tokenizer.condition(torch.as_tensor(obs), torch.as_tensor(goal))
    np.testing.assert_allclose(as_tensor.numpy(), expected)
    assert layout.condition_dim == 6
    with pytest.raises(ValueError, match="goal-conditioned: pass the goal"):
        tokenizer.condition(obs)
    with pytest.raises(ValueError, match="goal must have shape"):
        tokenizer.condition(obs, np.zeros((1, 3), dtype=np.float32))
    plain = Tokenizer(TokenLayout(frame_stack=1), mean, std)
    np.testing.assert_allclose(plain.condition(obs, goal), plain.normalize_obs(obs))  # no goal_dim: goal unused


def test_each_window_carries_the_goal_its_first_step_pursued(data):
    sampler = WindowSampler.from_transitions(data, WINDOW_TOKENS * LAYOUT.frame_stack, with_goals=True)
    rng = np.random.default_rng(3)
    batch = sampler.sample(32, rng)
    starts = sampler.starts[np.random.default_rng(3).integers(len(sampler.starts), size=32)]
    np.testing.assert_array_equal(batch["goals"], data.goals[starts])
    np.testing.assert_array_equal(batch["obs"], data.observations[starts])
    on_device = WindowSampler.from_transitions(data, WINDOW_TOKENS * LAYOUT.frame_stack, device="cpu", with_goals=True)
    np.testing.assert_array_equal(on_device.sample(32, np.random.default_rng(3))["goals"].numpy(), batch["goals"])
    plain = WindowSampler.from_transitions(data, WINDOW_TOKENS * LAYOUT.frame_stack).sample(
        32, np.random.default_rng(3)
    )
    assert "goals" not in plain  # an unconditioned model's windows carry no goals
    np.testing.assert_array_equal(plain["obs"], batch["obs"])  # and are the same windows


def test_a_goal_conditioned_model_reads_the_goal_in_training_and_in_planning(data, tmp_path):
    trainer = new_trainer(data)
    assert trainer.model.config.obs_dim == 6  # observation (4) and goal (2)
    windows = WindowSampler.from_transitions(data, WINDOW_TOKENS * LAYOUT.frame_stack, with_goals=True)
    batch = windows.sample(8, np.random.default_rng(0))

    def loss_with(goals):
        trainer.generator.manual_seed(0)  # the same noise levels and noise for both losses
        return trainer.loss({**batch, "goals": goals}).item()

    assert loss_with(batch["goals"]) != loss_with(batch["goals"] + 1.0)
    with pytest.raises(ValueError, match="batches with 'goals'"):
        trainer.loss({key: value for key, value in batch.items() if key != "goals"})

    # Unguided plans from one observation toward two goals differ only through the conditioning.
    planner = PlannerConfig(ddim_steps=3, guidance_scale=0.0, mcg_samples=1, horizon_tokens=3, seed=5)
    agent = Agent.from_trainer(trainer, planner)
    obs = data.observations[:1]
    plans = [agent.with_planner().plan(obs, goal).actions for goal in ([[1.0, 1.0]], [[3.0, 3.0]])]
    assert not np.allclose(plans[0], plans[1])
    again = agent.with_planner().plan(obs, [[1.0, 1.0]]).actions
    np.testing.assert_array_equal(plans[0], again)  # same goal, same seed: the same plan

    # The layout travels with the saved agent, and the loaded agent plans the same.
    loaded = Agent.load(agent.save(tmp_path / "agent.pt"), device="cpu")
    assert loaded.tokenizer.layout.goal_dim == 2
    np.testing.assert_array_equal(loaded.with_planner(planner).plan(obs, [[1.0, 1.0]]).actions, plans[0])


def test_agents_saved_before_goal_conditioning_load_as_unconditioned(data, tmp_path):
    trainer = new_trainer(data, layout=TokenLayout(frame_stack=5))
    path = Agent.from_trainer(trainer).save(tmp_path / "agent.pt")
    state = torch.load(path, weights_only=False)
    del state["tokenizer"]["layout"]["goal_dim"]  # the layout as older versions wrote it
    torch.save(state, path)
    agent = Agent.load(path, device="cpu")
    assert agent.tokenizer.layout.goal_dim == 0 and agent.model.config.obs_dim == 4
    assert agent.plan(data.observations[:1], [[1.0, 1.0]], horizon=10).actions.shape == (1, 10, 2)


def test_a_trainer_rejects_a_model_whose_input_does_not_fit_the_layout(data):
    from df_agent.model import ModelConfig
    from df_agent.training import Trainer

    tokenizer = new_trainer(data).tokenizer
    config = ModelConfig(token_dim=LAYOUT.token_dim, obs_dim=4, **MODEL)  # forgot the goal's 2 entries
    with pytest.raises(ValueError, match="observation and goal"):
        Trainer(config, tokenizer, TrainConfig(window_tokens=WINDOW_TOKENS), device="cpu")


def test_hindsight_goals_are_positions_reached_later_in_the_same_segment(data):
    num_steps, ahead_max = WINDOW_TOKENS * LAYOUT.frame_stack, 50
    plain = WindowSampler.from_transitions(data, num_steps)
    sampler = WindowSampler.from_transitions(data, num_steps, hindsight_steps=ahead_max)
    batch = sampler.sample(256, np.random.default_rng(7))
    np.testing.assert_array_equal(batch["obs"], plain.sample(256, np.random.default_rng(7))["obs"])  # same windows
    segments = np.asarray(data.segment_ids)
    for obs, goal in zip(batch["obs"], batch["goals"], strict=True):
        start = int(np.flatnonzero((data.observations == obs).all(axis=1))[0])
        # the rows from the window's start to ahead_max steps later, within its segment
        later = np.arange(start, min(start + ahead_max, len(segments)))
        later = later[segments[later] == segments[start]]
        distances = np.linalg.norm(data.next_observations[later, :2] - goal, axis=1)
        assert distances.min() == 0.0  # the goal is one of those positions
    distance = np.linalg.norm(batch["goals"] - batch["obs"][:, :2], axis=1)
    assert np.ptp(distance) > 0.5  # goals at many distances, not one fixed offset
    with pytest.raises(ValueError, match="hindsight_steps must be at least 1"):
        WindowSampler.from_transitions(data, num_steps, hindsight_steps=0)


def test_near_the_goal_the_goal_input_can_be_moved_out_along_the_ray_through_the_goal(data):
    """near_goal_condition_distance=2.5: unguided (the goal then only conditions the model), a plan from a point
    0.6 from its goal equals the plan conditioned on the point 2.5 away on the ray through the goal; a point 3 away
    (beyond near_goal_radius) plans as without the setting."""
    trainer = new_trainer(data)
    base = PlannerConfig(ddim_steps=3, guidance_scale=0.0, mcg_samples=1, horizon_tokens=3, seed=5)
    agent = Agent.from_trainer(trainer, base)
    obs = data.observations[:1].astype(np.float32)
    point = obs[0, :2]
    near_goal = (point + [0.6, 0.0])[None].astype(np.float32)
    far_goal = (point + [0.0, 3.0])[None].astype(np.float32)
    moved = (point + [2.5, 0.0])[None].astype(np.float32)

    def plan(goal, **settings):  # a fresh agent each time: the same seed, the same draws
        return agent.with_planner(base, **settings).plan(obs, goal).actions

    np.testing.assert_array_equal(plan(near_goal, near_goal_condition_distance=2.5), plan(moved))
    assert not np.allclose(plan(near_goal, near_goal_condition_distance=2.5), plan(near_goal))
    np.testing.assert_array_equal(plan(far_goal, near_goal_condition_distance=2.5), plan(far_goal))


def test_the_moved_goal_input_lies_on_the_ray_from_the_point_through_the_goal():
    points = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, -1.0]])
    goals = np.array([[0.3, 0.4], [1.0, 0.5], [2.0, -1.0]])  # the last coincides with its point
    moved = goal_input_along_ray(points, goals, 2.5)
    np.testing.assert_allclose(moved, [[1.5, 2.0], [1.0, -1.5], [4.5, -1.0]], atol=1e-6)
