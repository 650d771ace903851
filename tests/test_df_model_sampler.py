import numpy as np
import pytest
import torch

from df_agent.diffusion import NoiseSchedule
from df_agent.guidance import goal_distance_cost, predicted_reward_cost
from df_agent.model import DiffusionForcingModel, ModelConfig
from df_agent.sampler import sample
from df_agent.schedules import make_schedule, to_noise_levels
from df_agent.tokens import Tokenizer, TokenLayout


def tiny_model(token_dim=12, seed=0):
    torch.manual_seed(seed)
    return DiffusionForcingModel(
        ModelConfig(token_dim=token_dim, latent_dim=16, width=32, depth=1, level_embedding_dim=8)
    )


def test_model_is_strictly_causal():
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 16, generator=gen)
    tokens = torch.randn(2, 7, 12, generator=gen)
    levels = torch.randint(0, 1001, (2, 7), generator=gen)
    out, latents = model(z0, tokens, levels)
    for t in range(6):
        changed_tokens, changed_levels = tokens.clone(), levels.clone()
        changed_tokens[:, t + 1 :] = torch.randn(2, 6 - t, 12, generator=gen)
        changed_levels[:, t + 1 :] = torch.randint(0, 1001, (2, 6 - t), generator=gen)
        out2, latents2 = model(z0, changed_tokens, changed_levels)
        torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], rtol=0, atol=0)
        torch.testing.assert_close(latents2[:, : t + 1], latents[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(out2[:, t + 1], out[:, t + 1])
    # and the first latent depends on the initial latent
    out3, _ = model(z0 + 1, tokens, levels)
    assert not torch.allclose(out3[:, 0], out[:, 0])


@pytest.mark.parametrize("use_reward", [False, True])
def test_tokens_round_trip_exactly(use_reward):
    layout = TokenLayout(frame_stack=5, use_reward=use_reward)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (3, 20, 2)).astype(np.float32)
    next_obs = rng.normal(size=(3, 20, 4)).astype(np.float32) * 3
    rewards = rng.integers(0, 2, (3, 20)).astype(np.float32)
    tokenizer = Tokenizer.fit(layout, actions.reshape(-1, 2), next_obs.reshape(-1, 4), rewards.reshape(-1))
    tokens = tokenizer.encode(actions, next_obs, rewards)
    assert tokens.shape == (3, 4, layout.token_dim)
    assert abs(tokens.mean()) < 0.2 and abs(tokens.std() - 1) < 0.2  # normalized
    decoded = tokenizer.decode(tokens)
    np.testing.assert_allclose(decoded["actions"], actions, atol=1e-5)
    np.testing.assert_allclose(decoded["next_observations"], next_obs, atol=1e-5)
    if use_reward:
        np.testing.assert_allclose(decoded["rewards"], rewards, atol=1e-5)
    torch_decoded = tokenizer.decode(torch.as_tensor(tokens))  # the torch path (used by guidance) agrees
    np.testing.assert_allclose(torch_decoded["next_observations"].numpy(), next_obs, atol=1e-5)
    with pytest.raises(ValueError, match="do not fill"):
        tokenizer.encode(actions[:, :7], next_obs[:, :7], rewards[:, :7])
    restored = Tokenizer.from_state_dict(tokenizer.state_dict())
    np.testing.assert_array_equal(restored.encode(actions, next_obs, rewards), tokens)


def test_costs():
    positions = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])
    goal = torch.zeros(1, 2)
    assert goal_distance_cost(positions, goal).item() == pytest.approx(5.0)
    assert goal_distance_cost(positions, goal, torch.tensor([[1.0, 0.0]])).item() == 0.0
    assert predicted_reward_cost(torch.tensor([[1.0, 0.0, 1.0]])).item() == -2.0


def reference_sample(model, schedule, z0, levels, cost=None, scale=0.0, generator=None):
    """Algorithm 2 written plainly: no latent cache, every token re-run at every row, plain guidance."""
    batch, num_tokens = z0.shape[0], levels.shape[1]
    lv_all = torch.as_tensor(levels)
    x = torch.randn(batch, num_tokens, model.config.token_dim, generator=generator)
    x = schedule.add_noise(torch.zeros_like(x), lv_all[0].expand(batch, -1), x)
    for m in range(len(levels) - 1):
        lv, nlv = lv_all[m].expand(batch, -1), lv_all[m + 1].expand(batch, -1)
        xin = x.detach().requires_grad_(True)
        with torch.enable_grad():
            x0, _ = model(z0, xin, lv)
            grad = torch.autograd.grad(cost(x0).sum(), xin)[0] if cost is not None else torch.zeros_like(x)
        weight = schedule.guidance_weight(lv, nlv)[..., None]
        x = schedule.ddim_step(x, lv, nlv, x0.detach(), 0.0, generator) - scale * weight * grad
        x = x.detach()
    return x


@pytest.mark.parametrize("guided", [False, True])
def test_sampler_matches_plain_algorithm_2_and_mcg_with_one_sample_is_plain_guidance(guided):
    model = tiny_model(seed=3).eval()
    schedule = NoiseSchedule(1000, "linear")
    levels = to_noise_levels(make_schedule("pyramid", 5, 6), 6, 1000)
    z0 = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    cost = (lambda tokens: (tokens[..., :2] - 1.0).pow(2).sum(dim=(1, 2))) if guided else None
    scale = 0.05 if guided else 0.0
    ours = sample(model, schedule, z0, levels, cost, scale, mcg_samples=1, generator=torch.Generator().manual_seed(9))
    plain = reference_sample(model, schedule, z0, levels, cost, scale, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(ours.tokens, plain, atol=1e-5, rtol=1e-5)
