"""Diffusion Forcing paths the planner's defaults leave off, each against an independent expectation: the EMA of the
weights (its update, planning with it, exact resume), the epsilon and v parameterizations (training targets and the
sampler's conversion) and stochastic DDIM (eta > 0)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import df_agent.training as training_module
from df_agent.agent import Agent, PlannerConfig
from df_agent.diffusion import NoiseSchedule
from df_agent.model import DiffusionForcingModel, ModelConfig
from df_agent.sampler import sample
from df_agent.schedules import make_schedule, to_noise_levels
from df_agent.tokens import TokenLayout
from df_agent.training import TrainConfig, Trainer, WindowSampler, make_trainer
from envs.datasets import load_transitions

LAYOUT = TokenLayout(frame_stack=5)
MODEL = {"latent_dim": 16, "width": 32, "depth": 1, "level_embedding_dim": 8}
WINDOW_TOKENS = 4


def hand_alphas_cumprod(num_levels: int = 1000) -> np.ndarray:
    """DDPM's linear schedule written out: betas 1e-4 .. 0.02, alpha_bar_k = prod_{i <= k} (1 - beta_i), level 0
    clean (alpha_bar_0 = 1). Independent of ``df_agent.diffusion``."""
    betas = np.linspace(1e-4, 0.02, num_levels)
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


@pytest.fixture(scope="module")
def data(tiny_umaze_dataset):
    return load_transitions("maze2d-umaze", generate=False, progress=False)


@pytest.fixture(scope="module")
def windows(data):
    return WindowSampler.from_transitions(data, WINDOW_TOKENS * LAYOUT.frame_stack)


def new_trainer(data, seed=0, **config) -> Trainer:
    settings = dict(window_tokens=WINDOW_TOKENS, batch_size=16, learning_rate=3e-3, warmup_steps=1)
    return make_trainer(data, LAYOUT, MODEL, TrainConfig(**{**settings, **config}), device="cpu", seed=seed)


def parameters(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def differs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# ------------------------------------------------------------------------------------------------------- EMA


def test_ema_update_is_decay_times_ema_plus_one_minus_decay_times_the_new_weights(data, windows):
    trainer = new_trainer(data, ema_decay=0.9)
    assert_same_weights(trainer.ema_model, trainer.model)  # the EMA starts as a copy of the weights
    for _ in range(3):
        ema_before = parameters(trainer.ema_model)
        trainer.train_step(windows.sample(16, trainer.rng))
        pairs = zip(trainer.ema_model.parameters(), trainer.model.parameters(), strict=True)
        for before, (ema, weight) in zip(ema_before, pairs, strict=True):
            torch.testing.assert_close(ema, 0.9 * before + 0.1 * weight, rtol=1e-6, atol=1e-7)
            assert not ema.requires_grad  # the optimizer never moves the EMA itself
    assert differs(trainer.ema_model, trainer.model)  # it lags the weights


@pytest.fixture(scope="module")
def ema_trainer(data, windows):
    """Trained a few steps with a fast EMA, so that the EMA weights and the raw weights plan differently."""
    trainer = new_trainer(data, ema_decay=0.5)
    for _ in range(20):
        trainer.train_step(windows.sample(16, trainer.rng))
    assert differs(trainer.ema_model, trainer.model)
    return trainer


def small_planner(**overrides) -> PlannerConfig:
    base = dict(ddim_steps=3, horizon_tokens=3, episode_length=300, mcg_samples=1, guidance_scale=0.5, seed=0)
    return PlannerConfig(**{**base, **overrides})


def test_planning_uses_the_ema_weights_from_a_trainer_and_from_its_checkpoint(ema_trainer, tmp_path):
    obs, goal = np.array([[0.9, -1.1, 0.0, 0.0]], np.float32), np.array([[-1.0, 1.0]], np.float32)
    assert ema_trainer.sampling_model is ema_trainer.ema_model
    from_trainer = Agent.from_trainer(ema_trainer, small_planner())
    assert_same_weights(from_trainer.model, ema_trainer.ema_model)
    assert differs(from_trainer.model, ema_trainer.model)

    # Agent.load of a training checkpoint plans with its EMA weights, not the raw ones
    path = ema_trainer.save(tmp_path / "train.pt")
    loaded = Agent.load(path, device="cpu", **vars(small_planner()))
    assert_same_weights(loaded.model, ema_trainer.ema_model)
    np.testing.assert_allclose(loaded.plan(obs, goal).actions, from_trainer.plan(obs, goal).actions, atol=1e-6)

    # and the raw weights would have given another plan: the check above can tell them apart
    raw = Agent(ema_trainer.model, ema_trainer.tokenizer, ema_trainer.schedule, small_planner(), device="cpu")
    fresh = Agent.from_trainer(ema_trainer, small_planner())
    assert np.abs(raw.plan(obs, goal).actions - fresh.plan(obs, goal).actions).max() > 1e-4
    ema_trainer.model.train()  # Agent() put the shared module in eval mode


def test_training_with_ema_resumes_exactly(data, windows, tmp_path):
    trainer = new_trainer(data, seed=1, ema_decay=0.8)
    for _ in range(4):
        trainer.train_step(windows.sample(16, trainer.rng))
    path = trainer.save(tmp_path / "ckpt.pt")
    continued = [trainer.train_step(windows.sample(16, trainer.rng))["loss"] for _ in range(3)]
    resumed = Trainer.load(path, device="cpu")
    again = [resumed.train_step(windows.sample(16, resumed.rng))["loss"] for _ in range(3)]
    assert again == continued
    assert_same_weights(resumed.model, trainer.model)
    assert_same_weights(resumed.ema_model, trainer.ema_model)
    assert differs(resumed.ema_model, resumed.model)


def test_the_df_script_resumes_exactly_with_ema_on(data, tmp_path, load_script):
    """20 steps straight, and 12 steps then a resume to 20: the same weights, EMA, optimizer and random state."""
    script = load_script("df_maze2d")
    tiny = dict(
        env="maze2d-umaze",
        batch_size=8,
        window_tokens=3,
        frame_stack=5,
        width=16,
        latent_dim=8,
        depth=1,
        ema_decay=0.7,
        eval_episodes=0,
        save_model=False,
        log_every=5,
        checkpoint_every=1000,
        device="cpu",
    )

    def run(folder, total_steps, resume=None):
        summary = script.main(script.Args(**tiny, total_steps=total_steps, resume=resume, runs_dir=str(folder)))
        return folder / summary["run"] / "checkpoint.pt"

    first = run(tmp_path / "first", 12)
    resumed = torch.load(run(tmp_path / "resumed", 20, resume=str(first)), weights_only=False)
    straight = torch.load(run(tmp_path / "straight", 20), weights_only=False)
    assert resumed["step"] == straight["step"] == 20
    assert resumed["train_config"]["ema_decay"] == 0.7
    for key in ("model", "ema_model"):
        for name, tensor in straight[key].items():
            assert torch.equal(resumed[key][name], tensor), (key, name)
    assert any(not torch.equal(straight["model"][n], straight["ema_model"][n]) for n in straight["model"])
    for index, state in straight["optimizer"]["state"].items():
        for name, tensor in state.items():
            assert torch.equal(resumed["optimizer"]["state"][index][name], tensor), (index, name)
    assert resumed["numpy_rng"] == straight["numpy_rng"]
    assert torch.equal(resumed["torch_generator"], straight["torch_generator"])


# ------------------------------------------------------------------------------------- epsilon and v prediction


@pytest.mark.parametrize("prediction", ["x0", "epsilon", "v"])
def test_trainer_loss_targets_match_a_hand_computation_from_the_noise_schedule(data, windows, prediction):
    """Trainer.loss re-done by hand: the same level and noise draws, x_k = sqrt(abar) x0 + sqrt(1 - abar) eps, and
    the MSE against x0, eps or v = sqrt(abar) eps - sqrt(1 - abar) x0."""
    trainer = new_trainer(data, prediction=prediction)
    batch = windows.sample(6, np.random.default_rng(0))
    trainer.generator.manual_seed(11)
    with torch.no_grad():
        loss = trainer.loss(batch).item()

    generator = torch.Generator().manual_seed(11)
    x0 = torch.as_tensor(trainer.tokenizer.encode(batch["actions"], batch["next_observations"]))
    obs = torch.as_tensor(trainer.tokenizer.normalize_obs(batch["obs"]))
    levels = torch.randint(0, 1001, x0.shape[:2], generator=generator)  # uniform on {0, ..., K}, per token
    noise = torch.randn(x0.shape, generator=generator)
    alpha_bar = torch.as_tensor(hand_alphas_cumprod(), dtype=torch.float32)[levels][..., None]
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    target = {"x0": x0, "epsilon": noise, "v": a * noise - s * x0}[prediction]
    with torch.no_grad():
        output, _ = trainer.model(trainer.model.initial_latent(obs), a * x0 + s * noise, levels)
    assert loss == pytest.approx(((output - target) ** 2).mean().item(), rel=1e-4)


class OracleModel(torch.nn.Module):
    """Knows the clean tokens ``clean`` (B, T, D) and answers in one parameterization, exactly (hand schedule).

    The latent carries the index of the next token, so the oracle knows which tokens any call covers (the sampler
    runs suffixes of the sequence and advances its latent cache over prefixes)."""

    def __init__(self, clean: torch.Tensor, prediction: str):
        super().__init__()
        self.clean, self.prediction = clean, prediction
        self.config = SimpleNamespace(token_dim=clean.shape[-1])
        self.alpha_bar = torch.as_tensor(hand_alphas_cumprod(), dtype=torch.float64)

    def forward(self, z_prev, tokens, levels):
        first = int(z_prev[0, 0])
        clean = self.clean[:, first : first + tokens.shape[1]].double()
        alpha_bar = self.alpha_bar[levels][..., None]
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        eps = torch.where(s > 0, (tokens.double() - a * clean) / s.clamp(min=1e-12), torch.zeros_like(clean))
        output = {"x0": clean, "epsilon": eps, "v": a * eps - s * clean}[self.prediction]
        latents = z_prev[:, None] + torch.arange(1, tokens.shape[1] + 1)[None, :, None]
        return output.float(), latents


@pytest.mark.parametrize("schedule_name", ["pyramid", "full_sequence", "autoregressive"])
@pytest.mark.parametrize("prediction", ["x0", "epsilon", "v"])
def test_sampling_with_an_oracle_in_any_parameterization_returns_the_clean_tokens(prediction, schedule_name):
    """The sampler must turn each parameterization's output back into the clean estimate; with an oracle, DDIM then
    lands exactly on the data whatever the matrix."""
    clean = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0))
    oracle = OracleModel(clean, prediction)
    levels = to_noise_levels(make_schedule(schedule_name, 4, 5), 5, 1000)
    z0 = torch.zeros(2, 1)  # token index 0
    result = sample(oracle, NoiseSchedule(1000), z0, levels, prediction=prediction, generator=torch.Generator())
    torch.testing.assert_close(result.tokens, clean, atol=2e-3, rtol=0)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_a_tiny_model_trained_on_epsilon_or_v_lowers_its_loss(data, windows, prediction):
    trainer = new_trainer(data, prediction=prediction, batch_size=32)
    held_out = windows.sample(64, np.random.default_rng(123))

    def held_out_loss():
        trainer.generator.manual_seed(7)  # the same levels and noise each time
        with torch.no_grad():
            return trainer.loss(held_out).item()

    before = held_out_loss()
    for _ in range(150):
        trainer.train_step(windows.sample(32, trainer.rng))
    assert held_out_loss() < 0.8 * before  # measured: about 0.6 (epsilon) and 0.46 (v) of the initial loss


# ----------------------------------------------------------------------------------------------- DDIM eta > 0


def hand_ddim(model, z0, levels, eta, generator):
    """Song et al.'s DDIM (eq. 12 and 16) over a full-sequence matrix, the random draws in the sampler's order:
    the initial noise, then one fresh draw per row. sigma = eta * sqrt((1 - abar') / (1 - abar)) *
    sqrt(1 - abar / abar'); x' = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps + sigma z."""
    alpha_bar = torch.as_tensor(hand_alphas_cumprod(), dtype=torch.float32)
    batch, num_tokens, dim = z0.shape[0], levels.shape[1], model.config.token_dim
    x = (1 - alpha_bar[levels[0, 0]]).sqrt() * torch.randn(batch, num_tokens, dim, generator=generator)
    for k, k_next in zip(levels[:-1, 0], levels[1:, 0], strict=True):
        ab, ab_next = alpha_bar[k], alpha_bar[k_next]
        with torch.no_grad():
            x0, _ = model(z0, x, torch.full((batch, num_tokens), int(k)))
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        sigma = eta * ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)).sqrt()
        z = torch.randn(x.shape, generator=generator)
        x = ab_next.sqrt() * x0 + (1 - ab_next - sigma**2).clamp(min=0).sqrt() * eps + sigma * z
    return x


@pytest.mark.parametrize("eta", [0.0, 0.8])
def test_ddim_with_eta_matches_a_hand_computation(eta):
    torch.manual_seed(0)
    model = DiffusionForcingModel(ModelConfig(token_dim=6, latent_dim=8, width=16, depth=1, level_embedding_dim=8))
    model.eval()
    levels = to_noise_levels(make_schedule("full_sequence", 3, 6), 6, 1000)
    z0 = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    ours = sample(model, NoiseSchedule(1000), z0, levels, eta=eta, generator=torch.Generator().manual_seed(2))
    by_hand = hand_ddim(model, z0, levels, eta, torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours.tokens, by_hand, atol=1e-4, rtol=1e-4)


def test_eta_adds_fresh_noise_and_the_agent_passes_it_to_the_sampler(ema_trainer):
    """With the same seed, eta = 0 and eta > 0 plan differently (the fresh noise enters only with eta > 0); the
    same eta twice gives the same plan."""
    obs, goal = np.array([[0.9, -1.1, 0.0, 0.0]], np.float32), np.array([[-1.0, 1.0]], np.float32)

    def plan(eta):
        return Agent.from_trainer(ema_trainer, small_planner(ddim_eta=eta)).plan(obs, goal).actions

    deterministic, stochastic = plan(0.0), plan(1.0)
    np.testing.assert_array_equal(plan(1.0), stochastic)
    assert np.abs(stochastic - deterministic).max() > 1e-3


def test_training_time_adds_up_over_resumes_and_reaches_the_agent(data, windows, tmp_path, monkeypatch):
    """Trainer.train_seconds counts each step from the previous step's end (the first from its own start), is saved
    and resumed, and ends up as the agent's training minutes. The clock is faked: 1 s per reading."""
    clock = iter(range(10_000))
    monkeypatch.setattr(training_module.time, "perf_counter", lambda: float(next(clock)))
    trainer = new_trainer(data, seed=2)
    for _ in range(3):  # readings 0,1 | 2,3 | 4,5: 1 + 2 + 2 seconds
        trainer.train_step(windows.sample(16, trainer.rng))
    assert trainer.train_seconds == 5.0
    resumed = Trainer.load(trainer.save(tmp_path / "ckpt.pt"), device="cpu")
    assert resumed.train_seconds == 5.0
    resumed.train_step(windows.sample(16, resumed.rng))  # a new session: the gap before it does not count
    assert resumed.train_seconds == 6.0
    assert Agent.from_trainer(resumed, small_planner()).training["minutes"] == round(6.0 / 60, 2)
    saved = Agent.load(resumed.save(tmp_path / "ckpt2.pt"), device="cpu")
    assert saved.training["minutes"] == round(6.0 / 60, 2)
