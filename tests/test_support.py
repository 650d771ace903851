import numpy as np
import pytest
import torch

from df_agent.guidance import GoalCost, support_distance_cost
from df_agent.support import DataSupport
from df_agent.tokens import Tokenizer, TokenLayout


def l_shaped_data(rng: np.random.Generator) -> np.ndarray:
    """Positions filling an L: a corridor along x in [0, 4] at y in [0, 1], then up along x in [0, 1] to y = 4."""
    along = np.stack([rng.uniform(0, 4, 4000), rng.uniform(0, 1, 4000)], axis=1)
    up = np.stack([rng.uniform(0, 1, 4000), rng.uniform(0, 4, 4000)], axis=1)
    return np.concatenate([along, up])


def test_the_field_is_zero_where_the_data_has_been_and_grows_away_from_it():
    support = DataSupport(l_shaped_data(np.random.default_rng(0)), cell=0.25)
    points = torch.tensor([[0.5, 0.5], [3.5, 0.5], [0.5, 3.5], [2.0, 2.0], [3.0, 3.0], [3.5, 3.5]])
    distance = support.distance(points).numpy()
    assert distance[:3] == pytest.approx(0.0)  # in the L
    # the inside corner of the L, off the data: about 1 from both arms (cell centres, so within half a cell)
    assert distance[3] == pytest.approx(1.0, abs=0.25)
    assert distance[3] < distance[4] < distance[5]  # farther from both arms, larger
    assert support.num_visited == pytest.approx(2 * (16 * 4) - 16, abs=8)  # two 4 x 1 arms of 0.25 cells, overlapping


def test_the_gradient_points_away_from_the_data_so_descent_moves_back_onto_it():
    support = DataSupport(l_shaped_data(np.random.default_rng(1)), cell=0.25)
    # beside the vertical arm (x > 1) and above the horizontal arm (y > 1)
    points = torch.tensor([[1.8, 3.0], [3.0, 1.8], [0.5, 0.5]], requires_grad=True)
    support.distance(points).sum().backward()
    grad = points.grad.numpy()
    assert grad[0, 0] > 0.5 and abs(grad[0, 1]) < 0.3  # descent moves it left, onto the vertical arm
    assert grad[1, 1] > 0.5 and abs(grad[1, 0]) < 0.3  # descent moves it down, onto the horizontal arm
    np.testing.assert_allclose(grad[2], 0.0)  # on the data: no pull


def test_the_field_is_constant_beyond_its_border_and_survives_a_state_dict():
    data = l_shaped_data(np.random.default_rng(2))
    support = DataSupport(data, cell=0.5, margin=2)
    far = torch.tensor([[100.0, 100.0], [101.0, 100.0]], requires_grad=True)
    values = support.distance(far)
    assert values[0].item() == pytest.approx(values[1].item()) and values[0].item() > 0
    values.sum().backward()
    np.testing.assert_allclose(far.grad.numpy(), 0.0)
    copy = DataSupport.from_state_dict(support.state_dict())
    points = torch.as_tensor(np.random.default_rng(3).uniform(-2, 6, (50, 2)), dtype=torch.float32)
    np.testing.assert_array_equal(copy.distance(points).numpy(), support.distance(points).numpy())
    # the batch shape is kept, and float64 works as float32 does
    assert support.distance(points.reshape(5, 10, 2)).shape == (5, 10)
    assert support.distance(points.double()).dtype == torch.float64


@pytest.mark.parametrize(
    "positions, cell, match",
    [
        (np.zeros((0, 2)), 0.5, "shape"),
        (np.zeros((4, 3)), 0.5, "shape"),
        (np.array([[0.0, np.nan]]), 0.5, "NaN"),
        (np.zeros((4, 2)), 0.0, "cell"),
    ],
)
def test_bad_data_is_a_clear_error(positions, cell, match):
    with pytest.raises(ValueError, match=match):
        DataSupport(positions, cell=cell)


def test_the_support_cost_adds_the_steps_distances_and_needs_the_support():
    layout = TokenLayout(frame_stack=2)
    tokenizer = Tokenizer(layout, np.zeros(layout.step_dim), np.ones(layout.step_dim))
    support = DataSupport(l_shaped_data(np.random.default_rng(4)), cell=0.25)
    steps = torch.zeros(1, 4, layout.step_dim)  # [ax, ay, x, y, vx, vy] per step
    steps[0, :, 2:4] = torch.tensor([[0.5, 0.5], [2.0, 2.0], [3.0, 3.0], [0.5, 3.5]])
    tokens = steps.reshape(1, 2, layout.token_dim).requires_grad_(True)
    positions = tokenizer.decode(tokens)["next_observations"][..., :2]
    per_step = support.distance(positions)
    assert support_distance_cost(positions, support).item() == pytest.approx(per_step.sum().item())
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert support_distance_cost(positions, support, mask).item() == pytest.approx(per_step[0, :2].sum().item())
    goal = torch.tensor([[0.5, 3.5]])
    plain = GoalCost(tokenizer, goal)(tokens)
    supported = GoalCost(tokenizer, goal, support=support, support_weight=2.0)
    assert supported(tokens).item() == pytest.approx(plain.item() + 2.0 * per_step.sum().item(), rel=1e-6)
    # only the two steps off the data are pushed; MCG futures of one plan share the support
    (supported(tokens) - plain).sum().backward()
    grad = tokens.grad.reshape(1, 4, layout.step_dim)[0, :, 2:4].numpy()
    assert np.abs(grad[[1, 2]]).sum(axis=1).min() > 0.5
    np.testing.assert_allclose(grad[[0, 3]], 0.0, atol=1e-6)
    assert supported(torch.cat([tokens, tokens])).detach().numpy() == pytest.approx([supported(tokens).item()] * 2)
    with pytest.raises(ValueError, match="support"):
        GoalCost(tokenizer, goal, support_weight=1.0)
