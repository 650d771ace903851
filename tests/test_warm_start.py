"""Warm-started replanning (PlannerConfig.warm_start_level): the level matrix, the sampler's start and the agent's
bookkeeping of its last plan. Reuses the tiny trained model of test_df_agent."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import test_df_agent
import torch
from test_df_model_sampler import tiny_model

import df_agent.agent as agent_module
from df_agent.agent import Agent
from df_agent.diffusion import NoiseSchedule
from df_agent.sampler import sample
from df_agent.schedules import make_schedule, to_noise_levels, warm_start
from df_agent.tokens import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_results  # noqa: E402

LAYOUT, planner = test_df_agent.LAYOUT, test_df_agent.planner
data, trained = test_df_agent.data, test_df_agent.trained  # the module's fixtures, shared


def test_warm_start_clips_the_warm_columns_and_drops_rows_that_change_nothing():
    levels = make_schedule("pyramid", 4, 4)  # K = S = 4: levels are the step indices
    matrix = warm_start(levels, num_warm=3, warm_level=2)
    expected = [[2, 2, 2, 4], [1, 2, 2, 4], [0, 1, 2, 3], [0, 0, 1, 2], [0, 0, 0, 1], [0, 0, 0, 0]]
    np.testing.assert_array_equal(matrix, expected)
    # nothing warm: the matrix as it was; everything warm at 0: one row of clean tokens, kept as two rows
    np.testing.assert_array_equal(warm_start(levels, 0, 2), levels)
    np.testing.assert_array_equal(warm_start(levels, 4, 0), np.zeros((2, 4)))
    # the autoregressive matrix skips every step above the warm level of every warm token
    auto = warm_start(make_schedule("autoregressive", 3, 4), 2, 1)
    assert auto[0].tolist() == [1, 1, 4] and len(auto) == 1 + 1 + 1 + 4
    assert np.all(np.diff(auto, axis=0) <= 0) and not np.any(np.all(np.diff(auto, axis=0) == 0, axis=1))
    with pytest.raises(ValueError, match="num_warm"):
        warm_start(levels, 5, 2)


@pytest.mark.parametrize("guided", [False, True])
def test_the_sampler_starts_warm_tokens_from_the_given_estimate(guided):
    model, schedule = tiny_model().eval(), NoiseSchedule(1000, "linear")
    z0 = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    levels = to_noise_levels(make_schedule("pyramid", 5, 4), 4, 1000)
    cost = lambda tokens: (tokens[..., :2] - 1.0).pow(2).sum(dim=(1, 2))  # noqa: E731
    kwargs = dict(cost=cost, guidance_scale=0.05) if guided else {}
    initial = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(1))

    def run(matrix, **extra):
        return sample(model, schedule, z0, matrix, generator=torch.Generator().manual_seed(2), **kwargs, **extra)

    # warm tokens at level 0 are final from the start: returned exactly
    matrix = warm_start(levels, 2, 0)
    mask = torch.tensor([[True, True, False, False, False]] * 2)
    result = run(matrix, initial_tokens=initial, initial_mask=mask)
    torch.testing.assert_close(result.tokens[:, :2], initial[:, :2], rtol=0, atol=0)
    assert not torch.allclose(result.tokens[:, 2:], initial[:, 2:])
    # no token warm: exactly the cold sampler
    cold = run(levels).tokens
    none_warm = run(levels, initial_tokens=initial, initial_mask=torch.zeros(2, 5, dtype=torch.bool)).tokens
    torch.testing.assert_close(none_warm, cold, rtol=0, atol=0)
    with pytest.raises(ValueError, match="initial_tokens must have shape"):
        run(levels, initial_tokens=initial[:, :3], initial_mask=mask[:, :3])


def spy_on_sample(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        result = sample(*args, **kwargs)
        calls.append({"levels": args[3], "args": args, **kwargs, "result": result.tokens.clone()})
        return result

    monkeypatch.setattr(agent_module, "sample", spy)
    return calls


def obs_batch(n):
    return {"observation": np.zeros((n, 4), np.float32), "desired_goal": np.ones((n, 2), np.float32)}


def test_warm_start_level_zero_acts_as_before(trained):
    """Off (the default), act() executes plans made from pure noise: a twin that plans every token by hand gives the
    same actions for a batch of envs; on, the actions differ."""
    agent = Agent.from_trainer(trained, planner(horizon_tokens=3, ddim_steps=3, warm_start_level=0.0))
    twin = Agent.from_trainer(trained, planner(horizon_tokens=3, ddim_steps=3))
    warm = Agent.from_trainer(trained, planner(horizon_tokens=3, ddim_steps=3, warm_start_level=0.5))
    rng = np.random.default_rng(0)
    different = False
    for t in range(15):
        obs = {"observation": rng.normal(size=(2, 4)).astype(np.float32), "desired_goal": np.ones((2, 2), np.float32)}
        if t % 5 == 0:
            queue = twin.plan(obs["observation"], obs["desired_goal"], horizon=15).actions
        np.testing.assert_array_equal(agent.act(obs), queue[:, t % 5])
        different |= not np.array_equal(warm.act(obs), queue[:, t % 5])
    assert different


def test_the_agent_warm_starts_from_its_last_plan_shifted_by_the_steps_executed(trained, monkeypatch):
    assert LAYOUT.frame_stack == 5
    calls = spy_on_sample(monkeypatch)
    agent = Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=4, warm_start_level=0.5))
    num_levels = agent.noise_schedule.num_levels
    for _ in range(6):  # plans at steps 0 and 5
        agent.act(obs_batch(1))
    assert len(calls) == 2 and "initial_tokens" not in calls[0]  # the first plan starts cold
    warm = calls[1]
    np.testing.assert_array_equal(warm["initial_mask"].numpy(), [[True, True, True, False]])
    torch.testing.assert_close(warm["initial_tokens"][:, :3], calls[0]["result"][:, 1:], rtol=0, atol=0)
    assert warm["levels"][0].tolist() == [num_levels // 2] * 3 + [num_levels]
    assert np.all(np.diff(warm["levels"], axis=0) <= 0) and (warm["levels"][-1] == 0).all()
    assert len(warm["levels"]) < len(calls[0]["levels"])  # the rows above the warm level are skipped

    # a shift by part of a token: the steps move within tokens, the partial last token starts cold
    calls.clear()
    agent = Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=4, warm_start_level=0.5, execute_steps=3))
    for _ in range(4):  # plans at steps 0 and 3
        agent.act(obs_batch(1))
    step_dim = LAYOUT.step_dim
    old_steps = calls[0]["result"].reshape(1, -1, step_dim)
    np.testing.assert_array_equal(calls[1]["initial_mask"].numpy(), [[True, True, True, False]])
    torch.testing.assert_close(calls[1]["initial_tokens"][:, :3], old_steps[:, 3:18].reshape(1, 3, -1), rtol=0, atol=0)


def test_with_relative_positions_the_warm_start_moves_the_last_plan_to_the_new_start(trained, monkeypatch):
    """A relative layout's tokens hold positions from the plan's start: the warm tokens of the next plan are the last
    plan's remaining steps at the same absolute positions, seen from where the point is now."""
    calls = spy_on_sample(monkeypatch)
    agent = Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=4, warm_start_level=0.5))
    layout = dataclasses.replace(agent.tokenizer.layout, relative_positions=True)
    agent.tokenizer = Tokenizer(layout, agent.tokenizer.step_mean, agent.tokenizer.step_std)
    starts = [np.array([[0.0, 0.0, 0.0, 0.0]], np.float32), np.array([[0.7, -0.4, 0.1, 0.2]], np.float32)]
    for t in range(6):  # plans at steps 0 (from the first start) and 5 (from the second)
        agent.act({"observation": starts[t // 5], "desired_goal": np.ones((1, 2), np.float32)})
    assert len(calls) == 2 and "initial_tokens" not in calls[0]
    old = agent.tokenizer.decode(calls[0]["result"][:, 1:].numpy(), starts[0])
    warm = agent.tokenizer.decode(calls[1]["initial_tokens"][:, :3].numpy(), starts[1])
    np.testing.assert_allclose(warm["next_observations"], old["next_observations"], atol=1e-4)
    np.testing.assert_allclose(warm["actions"], old["actions"], atol=1e-5)
    assert not np.allclose(calls[1]["initial_tokens"][:, :3].numpy(), calls[0]["result"][:, 1:].numpy(), atol=1e-3)


def test_the_warm_start_follows_the_shrinking_horizon(trained, monkeypatch):
    calls = spy_on_sample(monkeypatch)
    agent = Agent.from_trainer(
        trained, planner(horizon_tokens=4, ddim_steps=2, episode_length=22, replan_every=2, warm_start_level=0.5)
    )
    for _ in range(22):  # plans of 4, 3 and 1 tokens at steps 0, 10 and 20
        agent.act(obs_batch(1))
    assert [c["levels"].shape[1] for c in calls] == [4, 3, 1]
    np.testing.assert_array_equal(calls[1]["initial_mask"].numpy(), [[True, True, False]])
    torch.testing.assert_close(calls[1]["initial_tokens"][:, :2], calls[0]["result"][:, 2:], rtol=0, atol=0)
    np.testing.assert_array_equal(calls[2]["initial_mask"].numpy(), [[True]])
    torch.testing.assert_close(calls[2]["initial_tokens"], calls[1]["result"][:, 2:], rtol=0, atol=0)


def test_episode_start_and_reset_forget_the_last_plan(trained, monkeypatch):
    calls = spy_on_sample(monkeypatch)
    agent = Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=2, warm_start_level=0.5))
    for _ in range(5):
        agent.act(obs_batch(2))
    calls.clear()
    # both queues ran out; env 1 starts a new episode: env 0 plans warm, env 1 cold, in two sampler calls
    agent.predict(obs_batch(2), episode_start=np.array([False, True]))
    assert len(calls) == 2
    (warm,) = [c for c in calls if "initial_tokens" in c]
    (cold,) = [c for c in calls if "initial_tokens" not in c]
    assert warm["result"].shape[0] == 1 and cold["result"].shape[0] == 1
    assert cold["levels"][0].min() == agent.noise_schedule.num_levels
    assert len(agent._last_tokens) == 2 and all(t is not None for t in agent._last_tokens)
    # mid-plan, a new episode in env 1 drops its plan: it replans cold, alone
    agent.act(obs_batch(2))
    calls.clear()
    agent.predict(obs_batch(2), episode_start=np.array([False, True]))
    assert (
        len(calls) == 1
        and "initial_tokens" not in calls[0]
        and calls[0]["levels"][0].min() == agent.noise_schedule.num_levels
    )
    agent.reset()
    assert agent._last_tokens == []
    calls.clear()
    agent.act(obs_batch(2))
    assert len(calls) == 1 and "initial_tokens" not in calls[0]


def test_a_stalled_point_replans_cold_and_a_moving_one_stays_warm(trained, monkeypatch):
    """stall_steps=10: at step 10 env 0 has not moved (it stalls: its plan at step 10 starts cold), env 1 has moved
    by 1 (warm); env 2 has not moved but sits at its goal (warm: staying put is the job there)."""
    calls = spy_on_sample(monkeypatch)
    agent = Agent.from_trainer(
        trained, planner(horizon_tokens=4, ddim_steps=2, warm_start_level=0.5, stall_steps=10, stall_distance=0.5)
    )
    goal = np.array([[3.0, 3.0], [3.0, 3.0], [0.0, 0.0]], np.float32)
    for t in range(11):  # plans at steps 0, 5 and 10 (stall check at 10)
        obs = np.zeros((3, 4), np.float32)
        obs[1, 0] = t / 10  # env 1 moves 1.0 in 10 steps
        agent.act({"observation": obs, "desired_goal": goal})
    last = calls[-2:]  # the step-10 replan: a cold call for env 0, a warm one for envs 1 and 2
    (warm,) = [c for c in last if "initial_tokens" in c]
    (cold,) = [c for c in last if "initial_tokens" not in c]
    assert cold["result"].shape[0] == 1 and warm["result"].shape[0] == 2
    assert cold["levels"][0].min() == agent.noise_schedule.num_levels
    assert not agent._stalled.any()  # the cold plan consumed the flag: the next replan of env 0 is warm again
    # off (the default): the same run keeps every plan warm
    calls.clear()
    agent = Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=2, warm_start_level=0.5))
    for _ in range(11):
        agent.act({"observation": np.zeros((3, 4), np.float32), "desired_goal": goal})
    assert all("initial_tokens" in c for c in calls[1:]) and len(calls) == 3


def test_near_the_goal_the_agent_executes_fewer_steps_between_plans(trained, monkeypatch):
    calls = spy_on_sample(monkeypatch)
    agent = Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=2, near_goal_execute_steps=2))
    far = {"observation": np.zeros((1, 4), np.float32), "desired_goal": np.full((1, 2), 3.0, np.float32)}
    near = {"observation": np.zeros((1, 4), np.float32), "desired_goal": np.full((1, 2), 0.5, np.float32)}
    for _ in range(5):  # far from the goal: one plan for a whole token (5 steps)
        agent.act(far)
    assert len(calls) == 1
    for _ in range(6):  # within near_goal_radius (1.0): a plan every 2 steps
        agent.act(near)
    assert len(calls) == 4


def test_near_the_goal_plans_can_be_shorter(trained, monkeypatch):
    """near_goal_horizon_tokens=2: a batch with one env far from its goal and one near it plans in two calls, of 4
    and 2 tokens; the near env executes its 2 steps, the far one a whole token."""
    calls = spy_on_sample(monkeypatch)
    agent = Agent.from_trainer(
        trained, planner(horizon_tokens=4, ddim_steps=2, near_goal_horizon_tokens=2, near_goal_execute_steps=2)
    )
    obs = {"observation": np.zeros((2, 4), np.float32), "desired_goal": np.array([[3.0, 3.0], [0.5, 0.0]], np.float32)}
    agent.act(obs)
    assert sorted(c["levels"].shape[1] for c in calls) == [2, 4] and all(c["result"].shape[0] == 1 for c in calls)
    assert [len(q) for q in agent._queues] == [4, 1]  # 5 and 2 queued, one executed


def test_near_the_goal_plans_can_use_their_own_scheduling_matrix(trained, monkeypatch):
    """near_goal_schedule='full_sequence' with the pyramid far away: the near env's plan denoises every token
    together (equal levels in each row), the far env's keeps the pyramid's later tokens noisier."""
    calls = spy_on_sample(monkeypatch)
    agent = Agent.from_trainer(
        trained, planner(schedule="pyramid", horizon_tokens=4, ddim_steps=2, near_goal_schedule="full_sequence")
    )
    obs = {"observation": np.zeros((2, 4), np.float32), "desired_goal": np.array([[3.0, 3.0], [0.5, 0.0]], np.float32)}
    agent.act(obs)
    assert len(calls) == 2 and all(c["result"].shape[0] == 1 for c in calls)
    full = [c for c in calls if np.all(c["levels"] == c["levels"][:, :1])]
    assert len(full) == 1  # exactly one call (the near env's) used the full-sequence matrix


def test_near_the_goal_plans_can_use_their_own_mcg_samples(trained, monkeypatch):
    """near_goal_mcg_samples=1 with MCG 3 far away: the near env plans alone with plain guidance, the far one with
    its three futures."""
    calls = spy_on_sample(monkeypatch)
    agent = Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=2, mcg_samples=3, near_goal_mcg_samples=1))
    obs = {"observation": np.zeros((2, 4), np.float32), "desired_goal": np.array([[3.0, 3.0], [0.5, 0.0]], np.float32)}
    agent.act(obs)
    assert sorted(c["mcg_samples"] for c in calls) == [1, 3] and all(c["result"].shape[0] == 1 for c in calls)


def test_near_the_goal_plans_can_use_their_own_ddim_steps(trained, monkeypatch):
    """near_goal_ddim_steps=3 with 2 DDIM steps far away: the near env plans alone on a grid of 3 denoising steps
    (4 distinct noise levels, K to 0), the far one on 2; unset, both plan together on 2."""
    calls = spy_on_sample(monkeypatch)
    obs = {"observation": np.zeros((2, 4), np.float32), "desired_goal": np.array([[3.0, 3.0], [0.5, 0.0]], np.float32)}
    Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=2, near_goal_ddim_steps=3)).act(obs)
    assert sorted(len(np.unique(c["levels"])) for c in calls) == [3, 4]
    assert all(c["result"].shape[0] == 1 for c in calls)
    calls.clear()
    Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=2)).act(obs)
    assert len(calls) == 1 and len(np.unique(calls[0]["levels"])) == 3 and calls[0]["result"].shape[0] == 2


def test_near_the_goal_plans_can_use_their_own_guidance_weight_floor(trained, monkeypatch):
    """near_goal_min_guidance_weight=0.5 with 0 far away: the near env plans alone with the floor, the far one
    guides every row; the planner's min_guidance_weight reaches the sampler for plans far from the goal."""
    calls = spy_on_sample(monkeypatch)
    obs = {"observation": np.zeros((2, 4), np.float32), "desired_goal": np.array([[3.0, 3.0], [0.5, 0.0]], np.float32)}
    Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=2, near_goal_min_guidance_weight=0.5)).act(obs)
    floors = {tuple(c["cost"].goal[0].tolist()): c["min_guidance_weight"] for c in calls}
    assert floors == {(3.0, 3.0): 0.0, (0.5, 0.0): 0.5}  # the near env (goal 0.5 away) alone plans with the floor
    assert all(c["result"].shape[0] == 1 for c in calls)
    calls.clear()
    Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=2, min_guidance_weight=0.3)).act(obs)
    assert len(calls) == 1 and calls[0]["min_guidance_weight"] == 0.3 and calls[0]["result"].shape[0] == 2


def test_benchmark_df_writes_a_speed_record_that_make_results_tables(trained, tmp_path, load_script):
    """scripts/benchmark_df.py --speed-record: the batch replan timings and agent.act in one env (overall, split by
    distance to the goal, over an episode boundary), then a Speed table in RESULTS.md."""
    path = Agent.from_trainer(trained, planner(horizon_tokens=2, ddim_steps=2, near_goal_radius=100.0)).save(
        tmp_path / "agent.pt"
    )
    bench = load_script("benchmark_df")
    record_file = tmp_path / "results" / "speed.jsonl"
    bench.main(
        bench.Args(
            env="maze2d-umaze", checkpoint=str(path), plan_batch=2, horizon_tokens=(2,), ddim_steps=(2,),
            mcg_samples=(1, 2), act_steps=302, act_with_saved_planner=True, speed_record=str(record_file),
            act_subgoal_distance=1.0, act_subgoal_cell=0.5,
        )
    )  # fmt: skip
    (record,) = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert record["kind"] == "speed" and record["env_id"] == "maze2d-umaze-v1" and record["commit"] is not None
    assert [t["mcg_samples"] for t in record["measurements"]["replans"]] == [1, 2]
    act = record["measurements"]["act"]
    # near_goal_radius 100: every step counts as near the goal; 302 steps run past the 300-step episode
    assert act["steps"] == 302 and act["near_goal_steps"] == 302 and act["steps_per_second_far"] is None
    assert act["steps_per_second"] > 0 and record["settings"]["near_goal_radius"] == 100.0
    assert record["settings"]["subgoal_distance"] == 1.0 and record["settings"]["subgoal_cell"] == 0.5
    text = make_results.main(
        make_results.Args(records=str(record_file), output=str(tmp_path / "R.md"), figures=str(tmp_path / "f"))
    )
    row = next(line for line in text.split("## Speed")[1].splitlines() if line.startswith("| maze2d-umaze"))
    assert f"{act['steps_per_second']:.0f} (- / " in row and "2 x 2 tokens, MCG 2" in row
    assert "data-graph subgoals 1 ahead (cells of 0.5)" in row


def test_a_plan_with_history_keeps_the_history_clean_and_starts_the_latent_from_its_start(trained, monkeypatch):
    """PlannerConfig.history_tokens: the executed steps enter the sequence as clean tokens (level 0 in every row,
    returned unchanged), the initial state is made from the observation they start from, and the plan returned
    covers only the steps ahead."""
    calls = spy_on_sample(monkeypatch)
    agent = Agent.from_trainer(trained, planner(horizon_tokens=3, ddim_steps=3))
    rng = np.random.default_rng(3)
    start = rng.normal(size=(2, 4)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(2, 5, 2)).astype(np.float32)
    next_obs = start[:, None] + np.cumsum(rng.normal(size=(2, 5, 4)).astype(np.float32) * 0.05, axis=1)
    history = agent.tokenizer.encode(actions, next_obs)
    goal = np.ones((2, 2), np.float32)
    plan = agent.plan(next_obs[:, -1], goal, horizon=15, history=history, history_start=start)
    (call,) = calls
    assert (call["levels"][:, 0] == 0).all() and (call["levels"][0, 1:] > 0).all()
    torch.testing.assert_close(call["result"][:, 0], torch.as_tensor(history[:, 0]), rtol=0, atol=0)
    z0 = agent.model.initial_latent(torch.as_tensor(agent.tokenizer.condition(start, goal)))
    torch.testing.assert_close(call["args"][2], z0, rtol=0, atol=0)
    assert plan.actions.shape == (2, 15, 2) and plan.tokens.shape[1] == 3
    np.testing.assert_array_equal(plan.tokens, call["result"][:, 1:].numpy())
    with pytest.raises(ValueError, match="history must have shape"):
        agent.plan(next_obs[:, -1], goal, horizon=15, history=history[:1], history_start=start)


def test_the_agent_plans_with_the_steps_it_executed_as_history(trained, monkeypatch):
    plans = []
    plan = Agent.plan

    def spy(self, obs, goal=None, **kwargs):
        plans.append({"obs": np.array(obs), **kwargs})
        return plan(self, obs, goal, **kwargs)

    monkeypatch.setattr(Agent, "plan", spy)
    agent = Agent.from_trainer(trained, planner(horizon_tokens=2, ddim_steps=2, history_tokens=1, execute_steps=3))
    rng = np.random.default_rng(4)
    seen, taken = [], []
    for _ in range(7):  # plans at steps 0 and 3 (too young for a token of history) and 6 (history: steps 1-5)
        obs = {"observation": rng.normal(size=(1, 4)).astype(np.float32), "desired_goal": np.ones((1, 2), np.float32)}
        seen.append(obs["observation"][0])
        taken.append(agent.act(obs)[0])
    assert len(plans) == 3 and "history" not in plans[0] and "history" not in plans[1]
    last = plans[2]
    np.testing.assert_array_equal(last["history_start"][0], seen[1])
    decoded = agent.tokenizer.decode(last["history"])
    np.testing.assert_allclose(decoded["actions"][0], np.stack(taken[1:6]), atol=1e-5)
    np.testing.assert_allclose(decoded["next_observations"][0], np.stack(seen[2:7]), atol=1e-4)


def test_a_relative_layout_plans_with_history_and_returns_tokens_relative_to_the_current_observation(
    trained, monkeypatch
):
    """The sampled sequence starts at the history's start, so its positions are relative to that; the plan returned
    holds the same absolute steps, relative to the current observation."""
    calls = spy_on_sample(monkeypatch)
    agent = Agent.from_trainer(trained, planner(horizon_tokens=2, ddim_steps=2))
    layout = dataclasses.replace(agent.tokenizer.layout, relative_positions=True)
    agent.tokenizer = Tokenizer(layout, agent.tokenizer.step_mean, agent.tokenizer.step_std)
    rng = np.random.default_rng(5)
    start = rng.normal(size=(1, 4)).astype(np.float32)
    next_obs = start[:, None] + np.cumsum(rng.normal(size=(1, 5, 4)).astype(np.float32) * 0.05, axis=1)
    history = agent.tokenizer.encode(rng.uniform(-1, 1, (1, 5, 2)).astype(np.float32), next_obs, origin=start)
    obs = next_obs[:, -1]
    plan = agent.plan(obs, np.ones((1, 2), np.float32), horizon=10, history=history, history_start=start)
    sampled = agent.tokenizer.decode(calls[0]["result"][:, 1:].numpy(), start)  # the plan's part, from the start
    np.testing.assert_allclose(sampled["next_observations"], plan.observations, atol=1e-4)
    decoded = agent.tokenizer.decode(plan.tokens, obs)
    np.testing.assert_allclose(decoded["next_observations"], plan.observations, atol=1e-4)
    assert not np.allclose(plan.tokens, calls[0]["result"][:, 1:].numpy(), atol=1e-3)  # moved to the new origin


def test_history_needs_a_layout_without_the_reward_slot(trained):
    agent = Agent.from_trainer(trained, planner())
    layout = dataclasses.replace(agent.tokenizer.layout, use_reward=True)
    tokenizer = Tokenizer(layout, np.zeros(layout.step_dim, np.float32), np.ones(layout.step_dim, np.float32))
    with pytest.raises(ValueError, match="reward slot"):
        Agent(agent.model, tokenizer, agent.noise_schedule, planner(history_tokens=1))
    Agent(agent.model, tokenizer, agent.noise_schedule, planner())  # without history it is fine


def test_near_the_goal_plans_can_have_their_own_warm_start_guidance_mask_and_start_pull(trained, monkeypatch):
    """Cold far from the goal, warm near it (near_goal_warm_start_level=0.5): the far env's replans start from noise,
    the near env's second plan from its first; near the goal the guidance is masked to the action slots and the first
    planned step is pulled to the observation, far from it neither."""
    calls = spy_on_sample(monkeypatch)
    agent = Agent.from_trainer(
        trained,
        planner(
            horizon_tokens=4,
            ddim_steps=2,
            near_goal_warm_start_level=0.5,
            near_goal_guide_actions_only=True,
            near_goal_start_weight=2.0,
        ),
    )
    obs = {"observation": np.zeros((2, 4), np.float32), "desired_goal": np.array([[3.0, 3.0], [0.5, 0.0]], np.float32)}
    for _ in range(6):  # plans at step 0 and, a token (5 steps) later, at step 5
        agent.act(obs)
    assert len(calls) == 4 and all(c["result"].shape[0] == 1 for c in calls)
    near = [c for c in calls if c["gradient_mask"] is not None]
    far = [c for c in calls if c["gradient_mask"] is None]
    assert len(near) == 2 and len(far) == 2
    assert "initial_tokens" not in near[0] and "initial_tokens" in near[1]
    assert all("initial_tokens" not in c for c in far)
    mask = near[0]["gradient_mask"].numpy()
    np.testing.assert_array_equal(mask, agent.tokenizer.action_mask())
    assert all(c["cost"].start_weight == 2.0 for c in near) and all(c["cost"].start_weight == 0.0 for c in far)


def test_stay_terms_can_wait_for_a_plan_that_starts_inside_the_stay_start_radius(trained, monkeypatch):
    """stay_near_goal_only with stay_start_radius=0.5: of two plans within near_goal_radius (1.0), the one that starts
    0.8 from its goal gets no stay terms, the one 0.3 away does; without stay_start_radius both do."""
    calls = spy_on_sample(monkeypatch)
    obs = np.zeros((2, 4), np.float32)
    goals = np.array([[0.8, 0.0], [0.3, 0.0]], np.float32)
    settings = dict(stay_velocity_weight=2.0, stay_action_weight=1.0, stay_near_goal_only=True)
    Agent.from_trainer(trained, planner(**settings, stay_start_radius=0.5)).plan(obs, goals)
    Agent.from_trainer(trained, planner(**settings)).plan(obs, goals)
    waiting, plain = calls[0]["cost"], calls[1]["cost"]
    assert waiting.velocity_weight.tolist() == [0.0, 2.0] and waiting.action_weight.tolist() == [0.0, 1.0]
    assert plain.velocity_weight.tolist() == [2.0, 2.0] and plain.action_weight.tolist() == [1.0, 1.0]
