"""The causal transformer backbone (``--backbone transformer``): causality, the sampler's interface (cached prefix,
Monte Carlo Guidance's redraws), training, planning through the Agent and checkpoints."""

import numpy as np
import pytest
import torch

from df_agent.agent import Agent, PlannerConfig
from df_agent.diffusion import NoiseSchedule
from df_agent.model import DiffusionForcingModel, ModelConfig, build_model
from df_agent.sampler import sample
from df_agent.schedules import make_schedule, to_noise_levels
from df_agent.tokens import TokenLayout
from df_agent.training import TrainConfig, Trainer, WindowSampler, make_trainer
from df_agent.transformer import CausalTransformerModel
from envs.datasets import generate_dataset, load_transitions

SMALL = {"token_dim": 12, "latent_dim": 16, "width": 32, "depth": 2, "level_embedding_dim": 8, "heads": 2}


def tiny_model(backbone="transformer", seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(**SMALL, backbone=backbone)).eval()


def test_build_model_picks_the_backbone_and_old_configs_load_as_the_rnn():
    assert isinstance(tiny_model(), CausalTransformerModel)
    old = {k: v for k, v in SMALL.items() if k != "heads"}  # a config saved before the backbone fields existed
    assert type(build_model(ModelConfig(**old))) is DiffusionForcingModel
    with pytest.raises(ValueError, match="backbone"):
        build_model(ModelConfig(**SMALL, backbone="lstm"))
    with pytest.raises(ValueError, match="multiple of heads"):
        build_model(ModelConfig(**{**SMALL, "heads": 3}, backbone="transformer"))


def test_the_transformer_is_strictly_causal_and_every_output_sees_the_observation():
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 4, generator=gen)
    tokens = torch.randn(2, 7, 12, generator=gen)
    levels = torch.randint(0, 1001, (2, 7), generator=gen)
    out, _ = model(model.initial_latent(obs), tokens, levels)
    for t in range(6):
        changed_tokens, changed_levels = tokens.clone(), levels.clone()
        changed_tokens[:, t + 1 :] = torch.randn(2, 6 - t, 12, generator=gen)
        changed_levels[:, t + 1 :] = torch.randint(0, 1001, (2, 6 - t), generator=gen)
        out2, _ = model(model.initial_latent(obs), changed_tokens, changed_levels)
        torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(out2[:, t + 1], out[:, t + 1])
    out3, _ = model(model.initial_latent(obs + 1), tokens, levels)
    assert ((out3 - out).abs().amax(dim=-1) > 1e-4).all()  # every token of every plan


@pytest.mark.parametrize("backbone", ["rnn", "transformer"])
def test_a_state_advanced_over_a_prefix_continues_as_one_pass_and_redraws_see_each_tokens_past(backbone):
    """``advance`` then ``forward`` equals one ``forward`` over the whole sequence (the sampler's cached prefix), and
    ``predict_each_alone`` (MCG's redraws) equals a loop: token t alone after the plan's tokens before t."""
    model = tiny_model(backbone, seed=1)
    gen = torch.Generator().manual_seed(2)
    state = model.initial_latent(torch.randn(3, 4, generator=gen))
    tokens = torch.randn(3, 5, 12, generator=gen)
    levels = torch.randint(0, 1001, (3, 5), generator=gen)
    whole, states = model(state, tokens, levels)
    after, _ = model(model.advance(state, tokens[:, :2], levels[:, :2]), tokens[:, 2:], levels[:, 2:])
    torch.testing.assert_close(after, whole[:, 2:], atol=1e-5, rtol=1e-5)

    draws = torch.randn(2, 3, 5, 12, generator=gen)
    draw_levels = levels.expand(2, -1, -1)
    ours = model.predict_each_alone(state, states, draws, draw_levels)
    assert ours.shape == (2, 3, 5, 12)
    for n in range(2):
        for t in range(5):
            past = model.advance(state, tokens[:, :t], levels[:, :t]) if t else state
            expected, _ = model(past, draws[n, :, t : t + 1], draw_levels[n, :, t : t + 1])
            torch.testing.assert_close(ours[n, :, t], expected[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("schedule_name", ["pyramid", "autoregressive"])
def test_the_sampler_with_its_cached_prefix_matches_recomputing_every_row(schedule_name, reference_sample):
    model = tiny_model(seed=3)
    schedule = NoiseSchedule(1000, "linear")
    levels = to_noise_levels(make_schedule(schedule_name, 5, 4), 4, 1000)
    z0 = model.initial_latent(torch.randn(3, 4, generator=torch.Generator().manual_seed(5)))
    cost = lambda tokens: (tokens[..., :2] - 1.0).pow(2).sum(dim=(1, 2))  # noqa: E731
    ours = sample(model, schedule, z0, levels, cost, 0.05, generator=torch.Generator().manual_seed(9))
    plain = reference_sample(model, schedule, z0, levels, cost, 0.05, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(ours.tokens, plain, atol=1e-5, rtol=1e-5)
    # Monte Carlo Guidance runs through the transformer's redraws and changes the plan
    mcg = sample(model, schedule, z0, levels, cost, 0.05, 3, generator=torch.Generator().manual_seed(9))
    assert mcg.tokens.shape == ours.tokens.shape and (mcg.tokens - ours.tokens).abs().max() > 1e-5


LAYOUT = TokenLayout(frame_stack=5)
MODEL = {"backbone": "transformer", "width": 32, "depth": 2, "heads": 2, "level_embedding_dim": 16}
CONFIG = TrainConfig(window_tokens=8, batch_size=32, learning_rate=2e-3, warmup_steps=20)


@pytest.fixture(scope="module")
def data():
    generate_dataset("umaze", num_steps=6000, seed=3, num_chains=4, overwrite=True, progress=False)
    return load_transitions("maze2d-umaze", generate=False, progress=False)


@pytest.fixture(scope="module")
def trained(data):
    trainer = make_trainer(data, LAYOUT, MODEL, CONFIG, device="cpu", seed=0)
    sampler = WindowSampler.from_transitions(data, 40)
    fixed = sampler.sample(64, np.random.default_rng(123))

    def held_out_loss():
        trainer.generator.manual_seed(7)
        with torch.no_grad():
            return trainer.loss(fixed).item()

    before = held_out_loss()
    for _ in range(250):
        trainer.train_step(sampler.sample(CONFIG.batch_size, trainer.rng))
    trainer.held_out = (before, held_out_loss())
    return trainer


def test_training_the_transformer_lowers_the_loss(trained):
    assert isinstance(trained.model, CausalTransformerModel)
    before, after = trained.held_out
    assert after < 0.6 * before


def planner(**overrides):
    base = dict(schedule="pyramid", ddim_steps=4, horizon_tokens=4, mcg_samples=2, guidance_scale=0.5, seed=0)
    return PlannerConfig(**{**base, **overrides})


def test_the_agent_plans_with_the_transformer_and_checkpoints_keep_the_backbone(trained, tmp_path):
    obs, goal = np.array([[1.0, -1.0, 0.0, 0.0], [2.0, 1.0, 0.1, 0.0]], np.float32), np.array([[-1.0, 1.0]], np.float32)
    agent = Agent.from_trainer(trained, planner())
    a = agent.plan(obs, goal)
    assert (
        a.actions.shape == (2, 20, 2) and a.positions.shape == (2, 20, 2) and a.tokens.shape == (2, 4, LAYOUT.token_dim)
    )
    assert np.isfinite(a.tokens).all() and (a.level_history[-1] == 0).all()
    b = Agent.from_trainer(trained, planner()).plan(obs, goal)  # the same seed plans the same
    np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.array_equal(agent.plan(obs, goal).actions, a.actions)  # the generator moves on
    # an agent file and a training checkpoint both rebuild the transformer and plan as before
    for path in (Agent.from_trainer(trained, planner()).save(tmp_path / "agent.pt"), trained.save(tmp_path / "t.pt")):
        loaded = Agent.load(path, device="cpu", **vars(planner()))
        assert isinstance(loaded.model, CausalTransformerModel) and loaded.model.config == trained.model.config
        np.testing.assert_allclose(loaded.plan(obs, goal).actions, a.actions, atol=1e-5)
    resumed = Trainer.load(tmp_path / "t.pt", device="cpu")
    assert resumed.model.config.backbone == "transformer" and resumed.step == trained.step
    assert agent.act(obs[0], goal[0]).shape == (2,)


def test_the_script_trains_and_evaluates_the_transformer(data, tmp_path, load_script):
    script = load_script("df_maze2d")
    args = script.Args(
        env="maze2d-umaze",
        backbone="transformer",
        heads=2,
        width=32,
        depth=1,
        total_steps=10,
        batch_size=8,
        window_tokens=4,
        frame_stack=5,
        eval_episodes=1,
        eval_multi=False,
        ddim_steps=2,
        horizon_tokens=2,
        mcg_samples=2,
        log_every=5,
        checkpoint_every=10,
        runs_dir=str(tmp_path),
        device="cpu",
    )
    summary = script.main(args)
    assert summary["train_steps"] == 10 and "maze2d-umaze-v1" in summary
    checkpoint = torch.load(tmp_path / summary["run"] / "checkpoint.pt", weights_only=False)
    assert checkpoint["model_config"]["backbone"] == "transformer" and checkpoint["model_config"]["heads"] == 2
    assert isinstance(Agent.load(tmp_path / summary["run"] / "agent.pt").model, CausalTransformerModel)
