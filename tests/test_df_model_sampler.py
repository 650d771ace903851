import numpy as np
import pytest
import torch

from df_agent.diffusion import NoiseSchedule
from df_agent.guidance import (
    GoalCost,
    fit_action_step,
    goal_distance_cost,
    goal_state_cost,
    implied_positions,
    predicted_reward_cost,
    route_distance_cost,
    start_cost,
)
from df_agent.model import DiffusionForcingModel, ModelConfig
from df_agent.sampler import monte_carlo_guidance_cost, sample
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


def test_the_cpu_recurrence_is_nn_gru_s_with_gradients_and_advance_is_the_last_latent():
    """On the CPU the model calls nn.GRU's kernel without the module (cheaper per call): the latents and their
    gradients must be the module's, and ``advance`` (which skips the observation model) forward's last latent."""
    model = tiny_model()
    gen = torch.Generator().manual_seed(1)
    z0 = torch.randn(3, 16, generator=gen)
    tokens = torch.randn(3, 5, 12, generator=gen, requires_grad=True)
    levels = torch.randint(0, 1001, (3, 5), generator=gen)
    _, latents = model(z0, tokens, levels)
    inputs = model.token_encoder(torch.cat([tokens, model.level_embedding(levels)], dim=-1))
    expected, _ = model.dynamics(inputs, z0[None].contiguous())
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(latents.square().sum(), tokens)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), tokens)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(model.advance(z0, tokens, levels), latents[:, -1], rtol=0, atol=0)


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


def test_goal_state_cost_by_hand():
    goal = torch.tensor([[1.0, 1.0]])
    # step 0 sits on the goal moving at (3, 4) with force (0, 2); step 1 is 2 away, at rest, force (1, 0)
    positions = torch.tensor([[[1.0, 1.0], [1.0, 3.0]]], requires_grad=True)
    velocities = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]], requires_grad=True)
    actions = torch.tensor([[[0.0, 2.0], [1.0, 0.0]]])
    cost = goal_state_cost(positions, velocities, actions, goal, velocity_weight=0.5, action_weight=0.25)
    # gate exp(-(d / 1)^2): 1 on the goal, exp(-4) at distance 2
    by_hand = (0 + 1.0 * (0.5 * 5 + 0.25 * 2)) + (2 + np.exp(-4.0) * (0.5 * 0 + 0.25 * 1))
    assert cost.item() == pytest.approx(by_hand, rel=1e-6)
    cost.sum().backward()
    # The gate is held constant: the position gradient is the distance's alone (a unit vector away from the goal
    # on step 1), never a push away from the goal to close the gate.
    np.testing.assert_allclose(positions.grad[0, 1].numpy(), [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(velocities.grad[0, 0].numpy(), 0.5 * np.array([0.6, 0.8]), atol=1e-6)
    # a wider radius opens the gate further away
    wide = goal_state_cost(positions, velocities, actions, goal, action_weight=0.25, stay_radius=2.0)
    assert wide.item() == pytest.approx(0.25 * 2 + 2 + np.exp(-1.0) * 0.25, rel=1e-6)
    # with both weights 0 it is the plain distance cost
    assert goal_state_cost(positions, velocities, actions, goal).item() == pytest.approx(
        goal_distance_cost(positions, goal).item()
    )


def test_goal_cost_decodes_tokens_and_repeats_goals_for_mcg_futures():
    layout = TokenLayout(frame_stack=2)
    tokenizer = Tokenizer(layout, np.zeros(layout.step_dim), np.ones(layout.step_dim))
    steps = torch.zeros(1, 4, layout.step_dim)  # [ax, ay, x, y, vx, vy] per step
    steps[0, :, 2:4] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    steps[0, 3, 4:6] = torch.tensor([0.6, 0.8])
    tokens = steps.reshape(1, 2, layout.token_dim)
    cost = GoalCost(tokenizer, torch.tensor([[3.0, 0.0]]), velocity_weight=2.0)
    # distances 3 + 2 + 1 + 0; the last step, on the goal, adds 2 * |v| = 2
    assert cost(tokens).item() == pytest.approx(8.0, rel=1e-6)
    assert cost(torch.cat([tokens, tokens])).shape == (2,)  # two MCG futures of one plan
    with pytest.raises(ValueError, match="stay_radius"):
        GoalCost(tokenizer, torch.tensor([[3.0, 0.0]]), stay_radius=0.0)


def test_the_start_cost_pulls_a_plan_s_first_observation_to_the_current_one():
    layout = TokenLayout(frame_stack=2)
    tokenizer = Tokenizer(layout, np.zeros(layout.step_dim), np.ones(layout.step_dim))
    steps = torch.zeros(1, 4, layout.step_dim)  # [ax, ay, x, y, vx, vy] per step
    steps[0, :, 2:4] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    tokens = steps.reshape(1, 2, layout.token_dim).requires_grad_(True)
    # the point is at (0, 3) moving at (0, 4): its first planned step (0, 0) at rest is 5 away from it in (x, y)
    # and 4 in velocity, i.e. sqrt(9 + 16) = 5 in all
    start = torch.tensor([[0.0, 3.0, 0.0, 4.0]])
    assert start_cost(tokenizer.decode(tokens)["next_observations"][:, 0], start).item() == pytest.approx(5.0)
    goal = torch.tensor([[3.0, 0.0]])
    plain = GoalCost(tokenizer, goal)(tokens)
    pulled = GoalCost(tokenizer, goal, start=start, start_weight=2.0)
    assert pulled(tokens).item() == pytest.approx(plain.item() + 2.0 * 5.0, rel=1e-6)
    # its gradient moves only the first step, toward the current observation
    (pulled(tokens) - plain).sum().backward()
    grad = tokens.grad.reshape(1, 4, layout.step_dim)
    np.testing.assert_allclose(grad[0, 0, 2:].numpy(), -2.0 * np.array([0.0, 3.0, 0.0, 4.0]) / 5.0, atol=1e-6)
    assert torch.count_nonzero(grad[0, 1:]) == 0
    # Monte Carlo Guidance futures of one plan share its start
    assert pulled(torch.cat([tokens, tokens])).detach().numpy() == pytest.approx([pulled(tokens).item()] * 2)
    with pytest.raises(ValueError, match="start"):
        GoalCost(tokenizer, goal, start_weight=1.0)


def test_the_route_cost_pulls_each_step_to_the_nearest_point_of_the_route():
    layout = TokenLayout(frame_stack=2)
    tokenizer = Tokenizer(layout, np.zeros(layout.step_dim), np.ones(layout.step_dim))
    steps = torch.zeros(1, 4, layout.step_dim)  # [ax, ay, x, y, vx, vy] per step
    # the plan cuts straight across (y = 0) where the route goes up, over and down (an upside-down U)
    steps[0, :, 2:4] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    tokens = steps.reshape(1, 2, layout.token_dim).requires_grad_(True)
    route = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [1.0, 2.0], [2.0, 2.0], [3.0, 2.0], [3.0, 0.0]]])
    positions = tokenizer.decode(tokens)["next_observations"][..., :2]
    # nearest route points: (0, 0) at 0, (0, 2) or (1, 2) at 2 (and (0, 0) at 1), (2, 2) at 2 / (3, 0) at 1, (3, 0) at 0
    assert route_distance_cost(positions, route).item() == pytest.approx(0 + 1 + 1 + 0)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert route_distance_cost(positions, route, mask).item() == pytest.approx(1.0)
    goal = torch.tensor([[3.0, 0.0]])
    plain = GoalCost(tokenizer, goal)(tokens)
    routed = GoalCost(tokenizer, goal, route=route, route_weight=3.0)
    assert routed(tokens).item() == pytest.approx(plain.item() + 3.0 * 2.0, rel=1e-6)
    # the gradient moves the two middle steps toward the route's nearest points and leaves the ends on it alone
    (routed(tokens) - plain).sum().backward()
    grad = tokens.grad.reshape(1, 4, layout.step_dim)[0, :, 2:4].numpy()
    np.testing.assert_allclose(grad[1], [3.0, 0.0], atol=1e-6)  # (1, 0) is nearest (0, 0): pulled left
    np.testing.assert_allclose(grad[2], [-3.0, 0.0], atol=1e-6)  # (2, 0) is nearest (3, 0): pulled right
    np.testing.assert_allclose(grad[[0, 3]], 0.0, atol=1e-6)
    # Monte Carlo Guidance futures of one plan share its route
    assert routed(torch.cat([tokens, tokens])).detach().numpy() == pytest.approx([routed(tokens).item()] * 2)
    with pytest.raises(ValueError, match="route"):
        GoalCost(tokenizer, goal, route_weight=1.0)


def test_the_goal_cost_on_implied_positions_pulls_the_actions_not_the_predicted_positions():
    layout = TokenLayout(frame_stack=2)
    tokenizer = Tokenizer(layout, np.zeros(layout.step_dim), np.ones(layout.step_dim))
    steps = torch.zeros(2, 4, layout.step_dim)  # [ax, ay, x, y, vx, vy] per step
    steps[:, :, 0] = 0.5  # every action pushes right at half strength
    steps[:, :, 2:4] = torch.tensor([3.0, 1.0])  # the predicted positions sit 1 from the goal (3, 0) all along
    tokens = steps.reshape(2, 2, layout.token_dim).requires_grad_(True)
    origin = torch.zeros(2, 4)
    goal = torch.tensor([[3.0, 0.0]] * 2)
    actions = tokenizer.decode(tokens, origin)["actions"]
    # from (0, 0), each step moves by 0.5 x the action: (0.25, 0), (0.5, 0), (0.75, 0), (1, 0)
    np.testing.assert_allclose(
        implied_positions(origin[:, :2], actions, 0.5)[0, :, 0].detach().numpy(), [0.25, 0.5, 0.75, 1]
    )
    # plan 0 is measured on where its actions lead (2.75 + 2.5 + 2.25 + 2 = 9.5), plan 1 (NaN) on its predictions
    cost = GoalCost(tokenizer, goal, origin=origin, implied_step=torch.tensor([0.5, float("nan")]))
    np.testing.assert_allclose(cost(tokens).detach().numpy(), [9.5, 4.0], rtol=1e-6)
    # plan 0's gradient moves only its actions, the earliest most (each moves every later position): -0.5 x (4 - k)
    cost(tokens).sum().backward()
    grad = tokens.grad.reshape(2, 4, layout.step_dim)
    np.testing.assert_allclose(grad[0, :, 0].numpy(), [-2.0, -1.5, -1.0, -0.5], atol=1e-6)
    assert torch.count_nonzero(grad[0, :, 1:]) == 0
    assert torch.count_nonzero(grad[1, :, :2]) == 0 and torch.count_nonzero(grad[1, :, 2:4]) > 0
    # Monte Carlo Guidance futures of a plan keep its choice and step
    stacked = cost(torch.cat([tokens, tokens])).detach().numpy()
    np.testing.assert_allclose(stacked, [9.5, 4.0, 9.5, 4.0], rtol=1e-6)
    with pytest.raises(ValueError, match="origin"):
        GoalCost(tokenizer, goal, implied_step=0.5)


def test_the_fitted_action_step_is_the_displacement_per_unit_of_action():
    rng = np.random.default_rng(0)
    positions = rng.uniform(-5, 5, (1000, 2))
    actions = rng.uniform(-1, 1, (1000, 2))
    assert fit_action_step(positions, positions + 0.2 * actions, actions) == pytest.approx(0.2)
    blocked = positions + 0.2 * actions
    blocked[:10] = positions[:10]  # a wall stopped the point on 1% of the steps
    assert 0.19 < fit_action_step(positions, blocked, actions) < 0.2


@pytest.mark.parametrize("schedule_name", ["pyramid", "full_sequence", "autoregressive"])
@pytest.mark.parametrize("guided", [False, True])
def test_sampler_matches_plain_algorithm_2_and_mcg_with_one_sample_is_plain_guidance(
    guided, schedule_name, reference_sample
):
    """Every scheduling matrix as the agent uses it: the sampler follows its rows exactly."""
    model = tiny_model(seed=3).eval()
    schedule = NoiseSchedule(1000, "linear")
    levels = to_noise_levels(make_schedule(schedule_name, 5, 6), 6, 1000)
    z0 = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    cost = (lambda tokens: (tokens[..., :2] - 1.0).pow(2).sum(dim=(1, 2))) if guided else None
    scale = 0.05 if guided else 0.0
    ours = sample(model, schedule, z0, levels, cost, scale, mcg_samples=1, generator=torch.Generator().manual_seed(9))
    plain = reference_sample(model, schedule, z0, levels, cost, scale, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(ours.tokens, plain, atol=1e-5, rtol=1e-5)


def test_monte_carlo_guidance_averages_the_cost_over_redrawn_futures_of_the_plan():
    """One guided row with MCG 3, against a hand computation: the plan's clean estimates plus two redraws of every
    token (its estimate re-noised to its level, denoised from the plan's latent before it, token by token), the cost
    averaged over the three, its gradient taken with respect to the plan, then the DDIM and guidance steps."""
    model = tiny_model(seed=4).eval()
    schedule = NoiseSchedule(1000, "linear")
    levels = np.array([[999, 700, 400], [800, 500, 200]])  # one row: every token still noisy, each its own level
    z0 = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    cost = lambda tokens: (tokens[..., :2] - 1.0).pow(2).sum(dim=(1, 2))  # noqa: E731
    scale, samples = 0.3, 3
    ours = sample(model, schedule, z0, levels, cost, scale, samples, generator=torch.Generator().manual_seed(2))

    generator = torch.Generator().manual_seed(2)
    lv, nlv = torch.as_tensor(levels[0]), torch.as_tensor(levels[1])
    x = schedule.add_noise(torch.zeros(2, 3, 12), lv.expand(2, -1), torch.randn(2, 3, 12, generator=generator))
    plan = x.clone().requires_grad_(True)
    with torch.enable_grad():
        z, x0_plan, before = z0, [], []
        for t in range(3):  # the plan's own chain, one token at a time
            before.append(z)
            out, latents = model(z, plan[:, t : t + 1], lv[t].expand(2, 1))
            x0_plan.append(out[:, 0])
            z = latents[:, 0]
        x0_plan = torch.stack(x0_plan, 1)
        noise = torch.randn((samples - 1, 2, 3, 12), generator=generator)
        costs = [cost(x0_plan)]
        for j in range(samples - 1):
            draw = []
            for t in range(3):
                renoised = schedule.add_noise(x0_plan[:, t], lv[t].expand(2), noise[j, :, t])
                out, _ = model(before[t], renoised[:, None], lv[t].expand(2, 1))
                draw.append(out[:, 0])
            costs.append(cost(torch.stack(draw, 1)))
        total = sum(c.sum() for c in costs) / samples
        (gradient,) = torch.autograd.grad(total, plan)
    stepped = schedule.ddim_step(x, lv.expand(2, -1), nlv.expand(2, -1), x0_plan.detach(), 0.0, generator)
    expected = stepped - scale * gradient * schedule.guidance_weight(lv, nlv)[None, :, None]
    torch.testing.assert_close(ours.tokens, expected, atol=1e-5, rtol=1e-5)

    # The redraws matter: the same row with plain guidance lands elsewhere.
    plain = sample(model, schedule, z0, levels, cost, scale, 1, generator=torch.Generator().manual_seed(2))
    assert (plain.tokens - ours.tokens).abs().max() > 1e-4


def test_monte_carlo_guidance_cost_by_hand():
    """A fake cost and fake futures of a plan: each future (the final prefix + a clean estimate) is costed, the
    average over the plan's own estimate and the redraws is the objective, and its gradient reaches the plan through
    the estimate and the redraws, not through the final prefix."""
    rng = np.random.default_rng(0)
    prefix = torch.as_tensor(rng.normal(size=(2, 1, 3)))  # B=2 plans, one final token, D=3
    plan = torch.as_tensor(rng.normal(size=(2, 2, 3)), dtype=torch.float64).requires_grad_(True)
    cost = lambda tokens: tokens.sum(dim=(1, 2)).pow(2)  # noqa: E731  couples each future's prefix and estimate
    slopes = [2.0, 1.0, 3.0]  # the plan's estimate 2 * plan, redraws plan + 1 and 3 * plan, draw-major
    estimate, redraws = 2 * plan, torch.cat([plan + 1, 3 * plan])
    objective = monte_carlo_guidance_cost(cost, prefix, estimate, redraws)
    (gradient,) = torch.autograd.grad(objective, plan)

    p, x = prefix.numpy(), plan.detach().numpy()
    futures = [2 * x, x + 1, 3 * x]
    sums = [[p[b].sum() + future[b].sum() for b in range(2)] for future in futures]  # per future, per plan
    by_hand = sum(s**2 for row in sums for s in row) / 3
    # d/d plan[b, t, d] of sum^2 is 2 * sum * slope, for every t and d
    by_hand_gradient = [2 * sum(sums[j][b] * slopes[j] for j in range(3)) / 3 for b in range(2)]
    assert objective.item() == pytest.approx(by_hand, rel=1e-12)
    np.testing.assert_allclose(gradient.numpy(), np.broadcast_to(np.array(by_hand_gradient)[:, None, None], x.shape))

    # Without redraws it is the plain guidance cost; redraws must be whole futures of every plan.
    assert monte_carlo_guidance_cost(cost, prefix, estimate).item() == pytest.approx(sum(s**2 for s in sums[0]))
    with pytest.raises(ValueError, match="redraws"):
        monte_carlo_guidance_cost(cost, prefix, estimate, redraws[:3])


def test_a_gradient_mask_keeps_the_guidance_step_to_the_masked_slots():
    layout = TokenLayout(frame_stack=2)  # token = 2 steps of [ax, ay, x, y, vx, vy]
    tokenizer = Tokenizer(layout, np.zeros(layout.step_dim), np.ones(layout.step_dim))
    mask = torch.as_tensor(tokenizer.action_mask())
    np.testing.assert_array_equal(mask.numpy(), [1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0])
    model = tiny_model(seed=5).eval()
    schedule = NoiseSchedule(1000, "linear")
    levels = np.array([[900, 600], [700, 300]])  # one guided row
    z0 = torch.randn(2, 16, generator=torch.Generator().manual_seed(3))
    cost = lambda tokens: tokens.pow(2).sum(dim=(1, 2))  # noqa: E731  every slot has a gradient

    def run(scale, gradient_mask=None):
        generator = torch.Generator().manual_seed(4)
        return sample(model, schedule, z0, levels, cost, scale, gradient_mask=gradient_mask, generator=generator).tokens

    free, masked, unguided = run(0.5), run(0.5, mask), run(0.0)
    actions = mask.bool()
    torch.testing.assert_close(masked[..., ~actions], unguided[..., ~actions])  # observations: no guidance step
    torch.testing.assert_close(masked[..., actions], free[..., actions])  # actions: the full guidance step
    assert (free[..., ~actions] - unguided[..., ~actions]).abs().max() > 1e-4


def test_guidance_scale_per_plan():
    """Scales [0, 0.5] for a batch of two: each plan is what a batch guided at its scale alone gives it."""
    model = tiny_model(seed=6).eval()
    schedule = NoiseSchedule(1000, "linear")
    levels = np.array([[900, 600], [700, 300]])
    z0 = torch.randn(2, 16, generator=torch.Generator().manual_seed(3))
    cost = lambda tokens: tokens.pow(2).sum(dim=(1, 2))  # noqa: E731

    def run(scale):
        return sample(model, schedule, z0, levels, cost, scale, generator=torch.Generator().manual_seed(1)).tokens

    mixed, unguided, guided = run(torch.tensor([0.0, 0.5])), run(0.0), run(0.5)
    torch.testing.assert_close(mixed[0], unguided[0])
    torch.testing.assert_close(mixed[1], guided[1])
    assert (guided[0] - unguided[0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="one per plan"):
        sample(model, schedule, z0, levels, cost, torch.tensor([0.1, 0.2, 0.3]))


def test_rows_without_guidance_weight_take_no_gradient_and_keep_the_random_stream():
    """The step to the clean token has guidance weight 0, so the sampler evaluates no cost there (one gradient
    fewer per plan); with MCG it still draws that row's redraw noise, so the generator ends where it would have
    had the gradient been taken: the initial noise, then per row the MCG redraws and the DDIM step's fresh noise."""
    model = tiny_model(seed=6).eval()
    schedule = NoiseSchedule(1000, "linear")
    levels = to_noise_levels(make_schedule("full_sequence", 3, 4), 4, 1000)
    weighted_rows = sum(
        bool((schedule.guidance_weight(torch.as_tensor(a), torch.as_tensor(b)) > 0).any())
        for a, b in zip(levels[:-1], levels[1:], strict=True)
    )
    assert weighted_rows == len(levels) - 2  # every row but the step to the clean tokens
    z0 = torch.randn(2, 16, generator=torch.Generator().manual_seed(3))
    calls = []

    def cost(tokens):
        calls.append(tokens.shape[0])
        return (tokens[..., :2] - 1.0).pow(2).sum(dim=(1, 2))

    sample(model, schedule, z0, levels, cost, 0.05, mcg_samples=1, generator=torch.Generator().manual_seed(4))
    assert len(calls) == weighted_rows

    generator = torch.Generator().manual_seed(4)
    sample(model, schedule, z0, levels, cost, 0.05, mcg_samples=3, generator=generator)
    replay = torch.Generator().manual_seed(4)
    torch.randn(2, 3, 12, generator=replay)
    for _ in range(len(levels) - 1):
        torch.randn(2, 2, 3, 12, generator=replay)
        torch.randn(2, 3, 12, generator=replay)
    assert torch.equal(generator.get_state(), replay.get_state())


def test_rows_below_the_guidance_weight_floor_step_unguided_with_the_same_random_draws():
    """min_guidance_weight f skips the gradient on exactly the rows whose largest weight is below f times the
    matrix's largest, computed here from NoiseSchedule.guidance_weight; such a row steps as an unguided one, and the
    random stream is the one of the fully guided sampler, so the plan changes only by the skipped rows' small
    guidance steps."""
    model = tiny_model(seed=6).eval()
    schedule = NoiseSchedule(1000, "linear")
    levels = to_noise_levels(make_schedule("pyramid", 4, 10), 10, 1000)
    weights = schedule.guidance_weight(torch.as_tensor(levels[:-1]), torch.as_tensor(levels[1:]))  # (rows - 1, T)
    z0 = torch.randn(2, 16, generator=torch.Generator().manual_seed(3))
    calls = []

    def cost(tokens):
        calls.append(tokens.shape[0])
        return (tokens[..., :2] - 1.0).pow(2).sum(dim=(1, 2))

    def run(floor, mcg=1):
        calls.clear()
        generator = torch.Generator().manual_seed(4)
        tokens = sample(model, schedule, z0, levels, cost, 0.5, mcg, generator=generator, min_guidance_weight=floor)
        return tokens.tokens, len(calls), generator.get_state()

    row_max = weights.amax(dim=1)
    full, full_calls, full_state = run(0.0)
    assert full_calls == int((row_max > 0).sum())
    for floor in (0.1, 0.5, 1.0):
        tokens, num_calls, state = run(floor)
        assert num_calls == int((row_max >= floor * row_max.max()).sum())
        assert torch.equal(state, full_state)
    assert run(0.1)[1] < full_calls  # the first rows down from pure noise are skipped
    skipped, _, _ = run(0.1)
    unguided = sample(model, schedule, z0, levels, generator=torch.Generator().manual_seed(4)).tokens
    assert 0 < (skipped - full).abs().max() < 0.1 * (full - unguided).abs().max()
    assert torch.equal(run(0.1, mcg=3)[2], run(0.0, mcg=3)[2])  # MCG's redraw noise drawn on skipped rows too
    with pytest.raises(ValueError, match="fraction"):
        sample(model, schedule, z0, levels, cost, 0.5, min_guidance_weight=1.5)


def test_res_mlp_and_level_embedding_compute_what_their_modules_compute():
    """The functional forwards of ResMLP, ResidualBlock and LevelEmbedding give bit for bit what calling their
    submodules one after the other gives (so checkpoints and plans are unchanged)."""
    from df_agent.model import sinusoidal_embedding

    torch.manual_seed(0)
    model = DiffusionForcingModel(ModelConfig(token_dim=6, latent_dim=16, width=32, depth=2, level_embedding_dim=8))
    x = torch.randn(3, 5, 6 + 8)
    expected = model.token_encoder.net[0](x)
    for block in model.token_encoder.net[1:-3]:
        expected = expected + block.net[2](block.net[1](block.net[0](block.norm(expected))))
    for layer in model.token_encoder.net[-3:]:
        expected = layer(expected)
    assert torch.equal(model.token_encoder(x), expected)
    levels = torch.tensor([[0, 10, 999], [500, 1, 2]])
    embedding = model.level_embedding
    first, silu, second = embedding.mlp
    assert torch.equal(embedding(levels), second(silu(first(sinusoidal_embedding(levels, 8)))))


@pytest.mark.parametrize("use_reward", [False, True])
def test_relative_position_tokens_round_trip_and_hold_positions_from_the_origin(use_reward):
    layout = TokenLayout(frame_stack=5, use_reward=use_reward, relative_positions=True)
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1, 1, (3, 20, 2)).astype(np.float32)
    next_obs = (rng.normal(size=(3, 20, 4)) * 3 + 10).astype(np.float32)
    origin = next_obs[:, 0] + rng.normal(size=(3, 4)).astype(np.float32) * 0.1
    rewards = rng.integers(0, 2, (3, 20)).astype(np.float32)
    tokenizer = Tokenizer.fit(layout, actions.reshape(-1, 2), next_obs.reshape(-1, 4), rewards.reshape(-1))
    tokens = tokenizer.encode(actions, next_obs, rewards, origin=origin)
    decoded = tokenizer.decode(tokens, origin)
    np.testing.assert_allclose(decoded["next_observations"], next_obs, atol=1e-4)
    np.testing.assert_allclose(decoded["actions"], actions, atol=1e-5)
    torch_decoded = tokenizer.decode(torch.as_tensor(tokens), torch.as_tensor(origin))
    np.testing.assert_allclose(torch_decoded["next_observations"].numpy(), next_obs, atol=1e-4)
    # the position slots hold (position - origin) / std: shifting the origin moves every decoded position with it,
    # and leaves the actions and the other observation entries alone
    shifted = tokenizer.decode(tokens, origin + np.array([1.0, -2.0, 5.0, 5.0], dtype=np.float32))
    np.testing.assert_allclose(shifted["next_observations"][..., :2], next_obs[..., :2] + [1.0, -2.0], atol=1e-4)
    np.testing.assert_allclose(shifted["next_observations"][..., 2:], next_obs[..., 2:], atol=1e-4)
    position_slot = layout.action_dim + int(use_reward)
    first = tokens[:, 0, position_slot : position_slot + 2]
    position_std = tokenizer.step_std[position_slot : position_slot + 2]
    np.testing.assert_allclose(first, (next_obs[:, 0, :2] - origin[:, :2]) / position_std, atol=1e-5)
    with pytest.raises(ValueError, match="pass origin"):
        tokenizer.decode(tokens)
    with pytest.raises(ValueError, match="origin must have shape"):
        tokenizer.encode(actions, next_obs, rewards, origin=origin[:2])
    # reorigin: the same absolute steps, held relative to another start (a warm start's)
    new_origin = origin + np.array([0.5, -1.5, 2.0, 2.0], dtype=np.float32)
    moved = tokenizer.reorigin(tokens, origin, new_origin)
    assert moved.shape == tokens.shape
    again = tokenizer.decode(moved, new_origin)
    np.testing.assert_allclose(again["next_observations"], next_obs, atol=1e-4)
    np.testing.assert_allclose(again["actions"], actions, atol=1e-5)
    step_back = first - moved[:, 0, position_slot : position_slot + 2]  # the new origin is this far ahead
    np.testing.assert_allclose(step_back, np.tile([0.5, -1.5] / position_std, (3, 1)), atol=1e-5)
    with pytest.raises(ValueError, match="relative positions"):
        Tokenizer.fit(TokenLayout(frame_stack=5), actions.reshape(-1, 2), next_obs.reshape(-1, 4)).reorigin(
            tokens, origin, new_origin
        )
