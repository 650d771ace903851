import numpy as np
import pytest
import torch

from df_agent.diffusion import NoiseSchedule
from df_agent.schedules import (
    autoregressive,
    full_sequence,
    make_schedule,
    pyramid,
    stabilized_autoregressive,
    to_noise_levels,
    validate_schedule,
)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_runs_from_clean_to_noise(kind):
    schedule = NoiseSchedule(1000, kind)
    alpha_bar = schedule.alphas_cumprod
    assert alpha_bar[0] == 1 and alpha_bar[-1] < 1e-3
    assert torch.all(alpha_bar[1:] < alpha_bar[:-1])


@pytest.mark.parametrize("prediction", ["x0", "epsilon", "v"])
def test_parameterizations_are_consistent(prediction):
    schedule = NoiseSchedule(1000, "cosine")
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 6, 3, generator=gen), torch.randn(4, 6, 3, generator=gen)
    levels = torch.randint(1, 1001, (4, 6), generator=gen)
    x_k = schedule.add_noise(x0, levels, noise)
    target = schedule.target(x0, levels, noise, prediction)
    torch.testing.assert_close(schedule.to_x0(x_k, levels, target, prediction), x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(schedule.epsilon(x_k, levels, x0), noise, atol=2e-3, rtol=1e-3)


def test_ddim_with_an_oracle_returns_the_data():
    schedule = NoiseSchedule(1000, "linear")
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 5, 4, generator=gen)
    x = torch.randn(3, 5, 4, generator=gen)
    levels = torch.full((3, 5), 1000)
    path = list(range(1000, -1, -50))
    for next_level in path[1:]:
        x = schedule.ddim_step(x, levels, torch.full_like(levels, next_level), x0)
        levels = torch.full_like(levels, next_level)
        if next_level > 0:  # deterministic DDIM keeps the initial noise: x stays on q(x_k | x0) with that noise
            eps = schedule.epsilon(x, levels, x0)
            torch.testing.assert_close(schedule.add_noise(x0, levels, eps), x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x, x0)


def test_ddim_per_token_levels_and_corner_cases():
    schedule = NoiseSchedule(1000, "linear")
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(1, 4, 2, generator=gen)
    x = torch.randn(1, 4, 2, generator=gen)
    levels = torch.tensor([[0, 500, 500, 1000]])
    next_levels = torch.tensor([[0, 0, 500, 900]])
    out = schedule.ddim_step(x, levels, next_levels, x0, generator=gen)
    torch.testing.assert_close(out[0, 0], x[0, 0])  # already clean: copied
    torch.testing.assert_close(out[0, 1], x0[0, 1])  # to level 0: the clean estimate
    assert not torch.allclose(out[0, 2], x[0, 2])  # stays at 500: resampled around x0
    with pytest.raises(ValueError, match="lower noise"):
        schedule.ddim_step(x, next_levels, levels, x0)


def test_deterministic_ddim_is_the_limit_of_the_stochastic_step():
    """eta 0 (the planner's) takes a short path of its own: the general step with a vanishing sigma, drawing the
    same noise (the stay tokens' resampling and the random stream after the step are the general path's)."""
    schedule = NoiseSchedule(1000, "linear")
    gen = torch.Generator().manual_seed(3)
    x0, x = torch.randn(2, 6, 3, generator=gen), torch.randn(2, 6, 3, generator=gen)
    levels = torch.tensor([[0, 100, 500, 500, 1000, 700]] * 2)
    next_levels = torch.tensor([[0, 0, 250, 500, 900, 650]] * 2)
    generators = [torch.Generator().manual_seed(4) for _ in range(3)]
    exact = schedule.ddim_step(x, levels, next_levels, x0, eta=0.0, generator=generators[0])
    limit = schedule.ddim_step(x, levels, next_levels, x0, eta=1e-12, generator=generators[1])
    torch.testing.assert_close(exact, limit, rtol=0, atol=1e-6)
    assert torch.equal(generators[0].get_state(), generators[1].get_state())
    noisy = schedule.ddim_step(x, levels, next_levels, x0, eta=1.0, generator=generators[2])
    assert not torch.allclose(noisy[:, 2], exact[:, 2], atol=1e-3)  # eta matters: the comparison can tell


def test_guidance_weight_follows_the_noise_each_step_removes():
    schedule = NoiseSchedule(1000, "linear")
    levels = torch.tensor([1000, 500, 250, 50, 300, 0])
    next_levels = torch.tensor([950, 250, 0, 0, 300, 0])
    weight = schedule.guidance_weight(levels, next_levels)
    # no guidance on the step to the clean token, on a token that stays at its level, or on a clean token
    assert weight[2] == 0 and weight[3] == 0 and weight[4] == 0 and weight[5] == 0
    # a step that removes much noise gets far more weight than a step out of pure noise
    assert weight[1] > 10 * weight[0] > 0
    abar = schedule.alphas_cumprod
    expected = (1 - abar[500]) - (1 - abar[500]).sqrt() * (1 - abar[250]).sqrt()
    torch.testing.assert_close(weight[1], expected)
    with pytest.raises(ValueError, match="positive integer"):
        NoiseSchedule("linear")


def test_resampling_at_the_same_level_keeps_the_marginal():
    schedule = NoiseSchedule(1000, "linear")
    x0 = torch.full((20000, 1, 1), 2.0)
    levels = torch.full((20000, 1), 300)
    out = schedule.ddim_step(torch.zeros_like(x0), levels, levels, x0, generator=torch.Generator().manual_seed(0))
    a = schedule.alphas_cumprod[300]
    assert out.mean().item() == pytest.approx(2.0 * a.sqrt().item(), abs=0.03)
    assert out.std().item() == pytest.approx((1 - a).sqrt().item(), abs=0.03)


def _check_common(matrix, tokens, steps):
    assert matrix.shape[1] == tokens
    assert (matrix[0] == steps).all() and (matrix[-1] == 0).all()
    assert (np.diff(matrix, axis=0) <= 0).all()
    validate_schedule(matrix, tokens, steps)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_pyramid_keeps_the_future_noisier(scale):
    matrix = pyramid(6, 10, uncertainty_scale=scale)
    _check_common(matrix, 6, 10)
    assert len(matrix) == 10 + int(np.ceil(scale * 5)) + 1
    assert (np.diff(matrix, axis=1) >= 0).all()  # in every row, later tokens are at least as noisy
    assert (matrix[:, 1:] > matrix[:, :-1]).any()


def test_full_sequence_and_autoregressive_matrices():
    full = full_sequence(5, 8)
    _check_common(full, 5, 8)
    assert (full == full[:, :1]).all() and len(full) == 9
    auto = autoregressive(4, 3)
    _check_common(auto, 4, 3)
    in_progress = (auto > 0) & (auto < 3)
    assert (in_progress.sum(axis=1) <= 1).all()  # one token at a time
    for t in range(1, 4):  # token t starts only once token t-1 is clean
        first_move = np.argmax(auto[:, t] < 3)
        assert auto[first_move, t - 1] == 0


def test_stabilized_autoregressive_holds_history_at_a_small_level():
    matrix = stabilized_autoregressive(3, 5, stabilization_step=2)
    _check_common(matrix, 3, 5)
    assert set(np.unique(matrix[:-1])) <= {2, 3, 4, 5}
    assert (matrix[-2] == 2).all()
    with pytest.raises(ValueError, match="stabilization_step"):
        stabilized_autoregressive(3, 5, stabilization_step=5)


@pytest.mark.parametrize(
    "matrix, message",
    [
        (np.zeros((3, 4)), r"shape"),
        (np.array([[5, 5, 5], [6, 0, 0], [0, 0, 0]]), r"\[0, 5\]"),
        (np.array([[5, 5, 5], [2, 3, 5], [3, 0, 0], [0, 0, 0]]), r"row 2 raises"),
        (np.array([[5, 5, 5], [1, 1, 1]]), r"last row"),
        (np.array([[5, 5, 5], [2.5, 1, 1], [0, 0, 0]]), r"integers"),
    ],
)
def test_bad_matrices_are_refused(matrix, message):
    with pytest.raises(ValueError, match=message):
        validate_schedule(matrix, 3, 5)


def test_named_schedules_and_level_mapping():
    with pytest.raises(ValueError, match="pyramid"):
        make_schedule("spiral", 3, 5)
    levels = to_noise_levels(make_schedule("pyramid", 3, 20), 20, 1000)
    assert levels.max() == 1000 and levels.min() == 0 and levels[0, 0] == 1000
