from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from baselines.diffuser import (
    Args,
    Diffuser,
    DiffuserConfig,
    DiffuserPlanner,
    StateActionWindows,
    load_checkpoint,
    main,
)

TINY = dict(
    env="maze2d-umaze",
    horizon=32,
    diffusion_steps=8,
    dim=8,
    dim_mults=(1, 2),
    batch_size=8,
    ema_start=10,
    ema_every=2,
    log_every=10,
    checkpoint_every=0,
    eval_episodes=2,
    progress=False,
)


def tiny_diffuser(seed=0):
    torch.manual_seed(seed)
    config = DiffuserConfig("umaze", 32, 8, 8, (1, 2), 5, mins=[-1, -1, -2, -2, -5, -5], maxs=[1, 1, 2, 2, 5, 5])
    return Diffuser(config).eval()


def test_inpainting_holds_start_and_goal_at_every_denoising_step():
    diffuser = tiny_diffuser()
    states = torch.tensor([[-1.0, -1.0, 0.3, -0.2], [1.0, 0.0, 0.0, 0.0], [0.5, 1.2, -4.0, 2.0]])
    goals = torch.tensor([[-1.0, 1.0], [0.0, -1.0], [1.2, -0.9]])
    generator = torch.Generator().manual_seed(0)
    actions, observations, chain = diffuser.plan(states, goals, generator=generator, return_chain=True)
    assert chain.shape == (8 + 1, 3, 32, 6) and actions.shape == (3, 32, 2) and observations.shape == (3, 32, 4)
    # The conditions by hand: min-max normalization to [-1, 1] with the bounds of tiny_diffuser, x, y in [-2, 2] and
    # vx, vy in [-5, 5], is a division by (2, 2, 5, 5); the goal row is [goal, 0, 0].
    start = states / torch.tensor([2.0, 2.0, 5.0, 5.0])
    end = torch.cat([goals / 2.0, torch.zeros(3, 2)], dim=-1)
    for x in chain:  # the initial noise and every denoising step
        torch.testing.assert_close(x[:, 0, 2:], start, atol=1e-6, rtol=0)
        torch.testing.assert_close(x[:, -1, 2:], end, atol=1e-6, rtol=0)
    # the final sample itself, unnormalized, starts at the state and ends at the goal at rest
    raw = diffuser.unnormalize(chain[-1])
    torch.testing.assert_close(raw[:, 0, 2:], states, atol=1e-5, rtol=0)
    torch.testing.assert_close(raw[:, -1, 2:], torch.cat([goals, torch.zeros(3, 2)], dim=-1), atol=1e-5, rtol=0)
    # and the rest of the plan is not pinned: the rows in between are the model's
    assert (raw[:, 1:-1, 2:4] - states[:, None, :2]).abs().amax(dim=(1, 2)).min() > 1e-3


def test_planner_modes_act_on_the_plan():
    diffuser = tiny_diffuser()
    obs = {
        "observation": np.array([[-1.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.1, 0.0]]),
        "desired_goal": np.array([[-1.0, 1.0], [1.0, -1.0]]),
    }
    pd, actions = DiffuserPlanner(diffuser, "pd", seed=0), DiffuserPlanner(diffuser, "actions", seed=0)
    for planner in (pd, actions):
        planner.reset(2)
    a_pd, a_actions = pd(obs), actions(obs)
    plan = pd.observations  # same seed, same plan for both
    np.testing.assert_array_equal(plan, actions.observations)
    state = obs["observation"]
    expected = np.clip((plan[:, 1, :2] - state[:, :2]) + (plan[:, 1, 2:] - state[:, 2:]), -1, 1)
    np.testing.assert_allclose(a_pd, expected, atol=1e-6)
    np.testing.assert_allclose(a_actions, np.clip(actions.actions[:, 0], -1, 1))
    for _ in range(40):  # past the horizon: pd holds the last waypoint, actions replans
        pd(obs), actions(obs)
    assert pd.num_plans == 1 and actions.num_plans == 2


def test_train_plan_evaluate_and_checkpoint_round_trip(tiny_umaze_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = main(Args(**TINY, total_steps=30, save_model=True))
    assert set(out["results"]) == {"pd", "actions"}
    for result in out["results"].values():
        assert result.num_episodes == 2 and result.seeds == [
            0,
            1,
        ]  # the test episodes start at seed 0 (--eval-seed), as for every method
        # D4RL's umaze references, 23.85 and 161.86
        np.testing.assert_allclose(result.normalized_scores, 100 * (result.returns - 23.85) / (161.86 - 23.85))
    run = tmp_path / "runs" / out["run_name"]
    assert out["run_name"].startswith("maze2d-umaze-v1__diffuser__1__")
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"losses/diffusion_loss", "charts/steps_per_second", "eval/normalized_score"} <= tags
    assert {"eval_diffused_actions/normalized_score", "eval_diffused_actions/success_rate"} <= tags

    # the checkpoint gives the same plans for a fixed seed, and holds the normalization
    _, ema, state = load_checkpoint(out["checkpoint"])
    assert state["step"] == 30
    torch.testing.assert_close(ema.mins, out["ema"].mins, rtol=0, atol=0)
    states, goals = torch.tensor([[1.0, -1.0, 0.0, 0.0]]), torch.tensor([[-1.0, 1.0]])
    plan_a = out["ema"].plan(states, goals, generator=torch.Generator().manual_seed(5))
    plan_b = ema.plan(states, goals, generator=torch.Generator().manual_seed(5))
    for a, b in zip(plan_a, plan_b, strict=True):
        assert torch.equal(a, b)

    # --eval-only --checkpoint PATH reproduces the run's final evaluation in both modes (same EMA weights, same
    # planner seed, same episodes), and --modes picks the modes
    evaluated = main(Args(**TINY, eval_only=True, checkpoint=out["checkpoint"]))
    assert evaluated["step"] == 30
    for mode, result in out["results"].items():
        np.testing.assert_array_equal(evaluated["results"][mode].returns, result.returns)
        np.testing.assert_array_equal(evaluated["results"][mode].time_to_goal, result.time_to_goal)
    pd_only = main(Args(**{**TINY, "eval_episodes": 1}, eval_only=True, checkpoint=out["checkpoint"], modes=("pd",)))
    assert set(pd_only["results"]) == {"pd"}


def test_resuming_a_checkpoint_continues_the_same_run(tiny_umaze_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quiet = {**TINY, "eval_episodes": 0}
    first = main(Args(**quiet, total_steps=20, save_model=True))
    resumed = main(Args(**quiet, total_steps=30, resume=first["checkpoint"]))
    straight = main(Args(**quiet, total_steps=30))
    assert resumed["step"] == straight["step"] == 30
    for name in ("diffuser", "ema"):
        for p, q in zip(resumed[name].parameters(), straight[name].parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_time_budget_stops_training_early_and_saves_the_step_reached(tiny_umaze_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quiet = {**TINY, "eval_episodes": 0}
    # a budget of a few microseconds is spent by the first optimizer step, whatever the machine's speed
    out = main(Args(**quiet, total_steps=1000, train_minutes=1e-7, save_model=True))
    assert out["step"] == 1
    assert load_checkpoint(out["checkpoint"])[2]["step"] == 1
    with pytest.raises(ValueError, match="--train-minutes must be positive"):
        main(Args(**quiet, train_minutes=0))


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt or not a Diffuser checkpoint"):
        load_checkpoint(str(tmp_path / "bad.pt"))


def test_windows_stay_inside_continuous_segments():
    # Two segments of 5 and 8 steps: 8-step windows fit only in the second, 3-step ones in both.
    segments = np.array([0] * 5 + [1] * 8)
    data = SimpleNamespace(
        actions=np.zeros((13, 2)), observations=np.arange(52, dtype=np.float32).reshape(13, 4), segment_ids=segments
    )
    np.testing.assert_array_equal(StateActionWindows(data, 3, "cpu").starts, [0, 1, 2, 5, 6, 7, 8, 9, 10])
    windows = StateActionWindows(data, 8, "cpu").sample(4, np.random.default_rng(0))
    np.testing.assert_array_equal(windows[:, :, 2], np.tile(np.arange(5, 13) * 4, (4, 1)))  # x of rows 5..12
    with pytest.raises(ValueError, match="lower it"):
        StateActionWindows(data, 9, "cpu")
