import json
import warnings
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import envs
from df_agent.agent import Agent, PlannerConfig
from df_agent.presets import MAZE_PLANNER_DEFAULTS, MAZE_SUBGOALS, maze_planner
from df_agent.tokens import TokenLayout
from df_agent.training import TrainConfig, Trainer, WindowSampler, coverage_weights, make_trainer
from envs.datasets import generate_dataset, load_transitions
from envs.records import read_records

LAYOUT = TokenLayout(frame_stack=5)
MODEL = {"latent_dim": 32, "width": 64, "depth": 1, "level_embedding_dim": 16}
CONFIG = TrainConfig(window_tokens=8, batch_size=32, learning_rate=2e-3, warmup_steps=20)


@pytest.fixture(scope="module")
def data():
    generate_dataset("umaze", num_steps=6000, seed=3, num_chains=4, overwrite=True, progress=False)
    return load_transitions("maze2d-umaze", generate=False, progress=False)


def window_sampler(data):
    return WindowSampler.from_transitions(data, 40)


@pytest.fixture(scope="module")
def trained(data):
    trainer = make_trainer(data, LAYOUT, MODEL, CONFIG, device="cpu", seed=0)
    sampler = window_sampler(data)
    fixed = sampler.sample(64, np.random.default_rng(123))

    def held_out_loss():
        trainer.generator.manual_seed(7)
        with torch.no_grad():
            return trainer.loss(fixed).item()

    before = held_out_loss()
    for _ in range(300):
        trainer.train_step(sampler.sample(CONFIG.batch_size, trainer.rng))
    trainer.held_out = (before, held_out_loss())
    return trainer


def test_training_lowers_the_loss(trained):
    before, after = trained.held_out
    assert after < 0.6 * before


def test_windows_never_cross_a_gap_between_runs(data):
    sampler = window_sampler(data)
    batch = sampler.sample(200, np.random.default_rng(0))
    # the batch is the rows picked by the same draws, each window one continuous run: o_{t+1} of step t is the
    # observation of step t + 1, and the window's first observation is o_t of its first step
    starts = sampler.starts[np.random.default_rng(0).integers(len(sampler.starts), size=200)]
    rows = starts[:, None] + np.arange(40)
    np.testing.assert_array_equal(batch["next_observations"], data.next_observations[rows])
    np.testing.assert_array_equal(data.observations[rows[:, 1:]], data.next_observations[rows[:, :-1]])
    np.testing.assert_array_equal(batch["obs"], data.observations[starts])
    with pytest.raises(ValueError, match="shorter windows"):
        WindowSampler.from_transitions(data, 5000)


def test_coverage_weights_give_every_cell_an_equal_share_at_power_one():
    """Rows in a common cell (900) and a rare one (100): windows of one row are drawn with equal total mass per cell
    at power 1, uniformly at power 0; a window of several rows weighs the sum over its rows."""
    positions = np.concatenate([np.full((900, 2), 0.5), np.full((100, 2), 5.5)])
    starts = np.arange(1000)
    probabilities = coverage_weights(positions, starts, 1, cell=4.0, power=1.0)
    assert probabilities[:900].sum() == pytest.approx(0.5) and probabilities[900:].sum() == pytest.approx(0.5)
    np.testing.assert_allclose(coverage_weights(positions, starts, 1, cell=4.0, power=0.0), 1e-3)
    # windows of 2 rows: the one across the boundary (rows 899, 900) weighs 1/900 + 1/100
    pairs = coverage_weights(positions, np.array([0, 899, 900]), 2, cell=4.0, power=1.0)
    np.testing.assert_allclose(pairs / pairs[0], [1.0, (1 / 900 + 1 / 100) / (2 / 900), 9.0])
    with pytest.raises(ValueError, match="power"):
        coverage_weights(positions, starts, 1, cell=4.0, power=-1.0)


def test_balanced_windows_visit_the_rare_cells_more_and_stay_continuous(data):
    uniform = window_sampler(data)
    balanced = WindowSampler.from_transitions(data, 40, balance_power=1.0, balance_cell=1.0)
    np.testing.assert_array_equal(balanced.starts, uniform.starts)
    cells = np.floor(data.observations[:, :2]).astype(int)
    _, cell_of, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    rare = counts[cell_of.reshape(-1)] < np.median(counts[cell_of.reshape(-1)])  # rows in the rarer half of the cells

    rare_cells = {tuple(c) for c in cells[rare]}

    def share_of_rare_rows(sampler):
        visited = np.floor(sampler.sample(2000, np.random.default_rng(0))["next_observations"][..., :2]).astype(int)
        return np.mean([tuple(c) in rare_cells for c in visited.reshape(-1, 2)])

    assert share_of_rare_rows(balanced) > share_of_rare_rows(uniform) + 0.02
    batch = balanced.sample(100, np.random.default_rng(1))  # each window is the 40 rows after its first observation
    for window, first in zip(batch["next_observations"], batch["obs"], strict=True):
        start = int(np.flatnonzero((data.observations == first).all(axis=1))[0])
        np.testing.assert_array_equal(window, data.next_observations[start : start + 40])
    twice = [balanced.sample(10, np.random.default_rng(2))["obs"] for _ in range(2)]
    np.testing.assert_array_equal(twice[0], twice[1])


def test_a_sampler_on_a_device_draws_the_same_windows_as_tensors(data):
    on_host = window_sampler(data).sample(50, np.random.default_rng(4))
    on_device = WindowSampler.from_transitions(data, 40, device="cpu").sample(50, np.random.default_rng(4))
    for key, value in on_host.items():
        assert isinstance(on_device[key], torch.Tensor) and on_device[key].dtype == torch.float32
        np.testing.assert_array_equal(on_device[key].numpy(), value)
    # the trainer takes either: the same batch gives the same loss
    trainer = make_trainer(data, LAYOUT, MODEL, CONFIG, device="cpu", seed=0)
    losses = []
    for batch in (on_host, on_device):
        trainer.generator.manual_seed(0)
        losses.append(trainer.loss(batch).item())
    assert losses[0] == losses[1]


def test_checkpoints_resume_exactly(data, tmp_path):
    sampler = window_sampler(data)
    trainer = make_trainer(data, LAYOUT, MODEL, CONFIG, device="cpu", seed=1)
    for _ in range(5):
        trainer.train_step(sampler.sample(CONFIG.batch_size, trainer.rng))
    path = trainer.save(tmp_path / "ckpt.pt")
    continued = [trainer.train_step(sampler.sample(CONFIG.batch_size, trainer.rng))["loss"] for _ in range(3)]
    resumed = Trainer.load(path, device="cpu")
    assert resumed.step == 5
    again = [resumed.train_step(sampler.sample(CONFIG.batch_size, resumed.rng))["loss"] for _ in range(3)]
    assert again == continued
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        Trainer.load(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer.load(tmp_path / "missing.pt")


def planner(**overrides):
    base = dict(ddim_steps=4, horizon_tokens=4, episode_length=300, mcg_samples=2, guidance_scale=0.5, seed=0)
    return PlannerConfig(**{**base, **overrides})


def test_save_load_round_trip_gives_identical_plans(trained, tmp_path):
    agent = Agent.from_trainer(trained, planner())
    obs, goal = np.array([[1.0, -1.0, 0.0, 0.0]], np.float32), np.array([[-1.0, 1.0]], np.float32)
    path = agent.save(tmp_path / "agent.pt")
    a = Agent.load(path, device="cpu").plan(obs, goal)
    b = Agent.load(path, device="cpu").plan(obs, goal)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.actions.shape == (1, 20, 2) and a.positions.shape == (1, 20, 2)
    assert a.level_history.shape[1] == 4 and (a.level_history[-1] == 0).all()
    # a training checkpoint loads as an agent too
    ckpt = trained.save(tmp_path / "train.pt")
    c = Agent.load(ckpt, device="cpu", **vars(planner())).plan(obs, goal)
    np.testing.assert_allclose(c.actions, a.actions, atol=1e-6)


def test_an_agent_saved_with_a_planner_setting_since_removed_still_loads(trained, tmp_path):
    """Planner fields a later version removed are dropped on load; one that was on says so, since the agent now plans
    without it."""
    path = Agent.from_trainer(trained, planner()).save(tmp_path / "agent.pt")
    state = torch.load(path, weights_only=False)
    state["planner"]["support_weight"] = 0.0  # a field of 2026-12-07, removed the same day
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Agent.load(path, device="cpu").planner == planner()
    state["planner"]["support_weight"] = 1.0
    torch.save(state, path)
    with pytest.warns(UserWarning, match="support_weight"):
        assert Agent.load(path, device="cpu").planner == planner()


def test_guided_plans_end_nearer_the_goal(trained):
    rng = np.random.default_rng(0)
    starts = envs.Maze.from_name("umaze").cell_to_xy(np.array([[3, 1], [3, 2], [3, 3], [2, 3]]))
    obs = np.concatenate([starts + rng.uniform(-0.1, 0.1, starts.shape), np.zeros((4, 2))], axis=1).astype(np.float32)
    goal = np.tile(np.array([[1.0, -1.0]], np.float32), (4, 1))

    def mean_final_distance(scale, mcg):
        agent = Agent.from_trainer(trained, planner(horizon_tokens=6, guidance_scale=scale, mcg_samples=mcg))
        distances = [
            np.linalg.norm(agent.plan(obs, goal).positions[:, -10:] - goal[:, None], axis=-1).mean() for _ in range(3)
        ]
        return float(np.mean(distances))

    unguided = mean_final_distance(0.0, 1)
    assert mean_final_distance(30.0, 1) < unguided - 0.1
    assert mean_final_distance(30.0, 4) < unguided - 0.1


def test_a_route_keeps_guided_plans_near_it(trained):
    """PlannerConfig.route_weight: every planned step is pulled toward the nearest point of the route given to
    plan / act (here a line 0.8 beside the start), so the plans lie nearer it than plans guided toward the goal
    alone; without a route the agent says what is missing."""
    obs = np.array([[1.0, 1.0, 0.0, 0.0]] * 4, np.float32)
    goal = np.array([[1.0, 3.0]] * 4, np.float32)
    route = np.stack([np.full(9, 1.8), np.linspace(1.0, 3.0, 9)], axis=1).astype(np.float32)  # beside the start

    def mean_route_distance(weight):
        agent = Agent.from_trainer(trained, planner(horizon_tokens=4, guidance_scale=30.0, route_weight=weight))
        positions = agent.plan(obs, goal, route=route).positions
        return np.linalg.norm(positions[:, :, None] - route[None, None], axis=-1).min(axis=-1).mean()

    unrouted, routed = mean_route_distance(0.0), mean_route_distance(10.0)
    assert routed < unrouted - 0.1, (routed, unrouted)
    agent = Agent.from_trainer(trained, planner(route_weight=1.0))
    with pytest.raises(ValueError, match="route"):
        agent.plan(obs, goal)
    with pytest.raises(ValueError, match="route must have shape"):
        agent.act(obs, goal, route=route[None, :, :1])
    assert agent.act(obs, goal, route=np.stack([route] * 4)).shape == (4, 2)


def test_guiding_implied_positions_brings_where_the_actions_lead_nearer_the_goal(trained):
    """PlannerConfig.guide_implied_positions: the goal cost measures the positions the plan's actions lead to
    (action_step per unit of action per step), so the actions themselves are pulled toward the goal; per call with
    plan(guide_implied_positions=...). Without an action_step the agent says what is missing."""
    obs = np.array([[1.0, 1.0, 0.0, 0.0]] * 8, np.float32)
    goal = np.array([[1.0, 3.0]] * 8, np.float32)
    agent = Agent.from_trainer(trained, planner(horizon_tokens=4, guidance_scale=30.0, action_step=0.05))

    def implied_distance(implied):
        actions = agent.plan(obs, goal, guide_implied_positions=implied).actions
        reached = obs[:, None, :2] + 0.05 * np.cumsum(actions, axis=1)
        return np.linalg.norm(reached[:, -1] - goal, axis=-1).mean()

    assert implied_distance(True) < implied_distance(False) - 0.1
    with pytest.raises(ValueError, match="action_step"):
        Agent.from_trainer(trained, planner(guide_implied_positions=True)).plan(obs, goal)


def test_act_in_a_plain_gymnasium_loop(trained):
    """In a Gymnasium loop, act() executes the plan made from the observation it was given when its queue ran out:
    a twin agent (same weights, same seed) asked for a plan of 2 tokens from that observation every token (5 steps)
    gives the same actions, in order."""
    env = gym.make("maze2d-umaze-v1")
    agent = Agent.from_trainer(trained, planner(horizon_tokens=2, ddim_steps=2))
    twin = Agent.from_trainer(trained, planner(horizon_tokens=2, ddim_steps=2))
    obs, _ = env.reset(seed=0)
    agent.reset()
    queue = []
    for t in range(12):
        if t % 5 == 0:
            queue = list(twin.plan(obs["observation"], obs["desired_goal"], horizon=10).actions[0, :5])
        action = agent.act(obs)
        assert action.shape == (2,)
        np.testing.assert_array_equal(action, queue.pop(0))
        obs, *_ = env.step(action)
    batch = agent.act({"observation": np.zeros((3, 4)), "desired_goal": np.ones((3, 2))})
    assert batch.shape == (3, 2)
    flat = agent.act(np.zeros(4), goal=np.ones(2))
    assert flat.shape == (2,)


def test_goal_hold_brakes_at_the_goal_and_plans_elsewhere(trained):
    agent = Agent.from_trainer(trained, planner(horizon_tokens=2, ddim_steps=2, goal_hold_radius=0.5))
    goal = np.array([[1.0, -1.0], [1.0, -1.0]], np.float32)
    obs = np.array([[1.1, -1.0, 2.0, 0.0], [-1.0, -1.0, 0.0, 0.0]], np.float32)  # at the goal, moving; far away
    actions = agent.act(obs, goal=goal)
    np.testing.assert_allclose(actions[0], [-1.0, 0.0], atol=1e-6)  # PD: 10 * (goal - position) - velocity, clipped
    assert (
        len(agent._queues[0]) == 0 and len(agent._queues[1]) == 5 - 1
    )  # only the far point planned (one token of 5 steps)
    pure = Agent.from_trainer(trained, planner(horizon_tokens=2, ddim_steps=2))
    pure.act(obs, goal=goal)
    assert len(pure._queues[0]) == 5 - 1  # off by default: DF plans at the goal too


def test_bad_observations_raise_clear_errors(trained):
    agent = Agent.from_trainer(trained, planner())
    with pytest.raises(ValueError, match=r"shape \(4,\) or \(batch, 4\)"):
        agent.act(np.zeros(3), goal=np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        agent.act(np.array([np.nan, 0, 0, 0]), goal=np.zeros(2))
    with pytest.raises(ValueError, match="no goal"):
        agent.act(np.zeros(4))
    with pytest.raises(ValueError, match="raises a token"):
        agent.plan(np.zeros(4), np.zeros(2), horizon=10, schedule=np.array([[4, 4], [2, 3], [3, 0], [0, 0]]))


def test_predict_runs_in_the_shared_evaluation(trained):
    from envs.evaluation import evaluate

    # The pretrained umaze agent, planning cheaply, reaches the goal in both episodes, so returns and first hits
    # are not all 0 / 300 and the comparison below has something to compare.
    def pretrained():
        return Agent.from_pretrained("maze2d-umaze", schedule="pyramid", ddim_steps=4, mcg_samples=1, horizon_tokens=6)

    result = evaluate(pretrained(), "maze2d-umaze", num_episodes=2, progress=False)
    assert result.success.all()
    # The same two episodes (seeds 0 and 1) run by hand in a lockstep loop with act(): the evaluation drives the
    # agent exactly so (reset, then one batched call per step) and counts its returns and first hits from them.
    twin = pretrained()
    episodes = [gym.make("maze2d-umaze-v1") for _ in range(2)]
    observations = [env.reset(seed=seed)[0] for seed, env in enumerate(episodes)]
    returns, first_hit = np.zeros(2), np.full(2, 300.0)
    for t in range(300):
        actions = twin.act({key: np.stack([o[key] for o in observations]) for key in observations[0]})
        for i, env in enumerate(episodes):
            observations[i], reward, *_ = env.step(actions[i])
            returns[i] += reward
            if reward and first_hit[i] == 300:
                first_hit[i] = t + 1
    np.testing.assert_array_equal(result.returns, returns)
    np.testing.assert_array_equal(result.time_to_goal, first_hit)
    agent = Agent.from_trainer(trained, planner(horizon_tokens=2, ddim_steps=2, mcg_samples=1))
    actions, state = agent.predict(
        {"observation": np.zeros((2, 4)), "desired_goal": np.ones((2, 2))}, episode_start=np.array([True, False])
    )
    assert actions.shape == (2, 2) and state is None


def test_script_runs_end_to_end(data, tmp_path, load_script):
    script = load_script("df_maze2d")
    args = script.Args(
        env="maze2d-umaze",
        total_steps=30,
        batch_size=8,
        window_tokens=4,
        frame_stack=5,
        width=32,
        latent_dim=16,
        depth=1,
        eval_episodes=1,
        ddim_steps=2,
        horizon_tokens=2,
        mcg_samples=2,
        log_every=10,
        checkpoint_every=20,
        runs_dir=str(tmp_path),
        device="cpu",
    )
    summary = script.main(args)
    run_dir = tmp_path / summary["run"]
    assert summary["train_steps"] == 30
    # the saved agent plans with the EMA weights of the final training checkpoint (the script's EMA is on)
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 30 and checkpoint["train_config"]["ema_decay"] == args.ema_decay > 0
    saved = Agent.load(run_dir / "agent.pt").model.state_dict()
    assert all(torch.equal(saved[name], checkpoint["ema_model"][name]) for name in saved)
    assert not all(torch.equal(saved[name], checkpoint["model"][name]) for name in saved)
    events = EventAccumulator(str(run_dir))
    events.Reload()
    # the summary reports the logged evaluation, whose score is D4RL's normalization of its return (umaze)
    (logged,) = events.Scalars("eval/normalized_score")
    (logged_return,) = events.Scalars("eval/return")
    assert logged.step == 30
    assert summary["maze2d-umaze-v1"]["normalized_score"] == pytest.approx(logged.value, rel=1e-6)
    assert logged.value == pytest.approx(100 * (logged_return.value - 23.85) / (161.86 - 23.85), rel=1e-5, abs=1e-4)
    tags = set(events.Tags()["scalars"])
    assert {
        "losses/loss",
        "charts/learning_rate",
        "charts/tokens_per_second",
        "eval/normalized_score",
        "eval_multi/normalized_score",
    } <= tags
    assert set(summary) >= {"maze2d-umaze-v1", "maze2d-umaze-multi-v1"}
    # the saved agent plans with the maze's default guidance; an explicit flag wins
    assert Agent.load(run_dir / "agent.pt").planner.guidance_scale == MAZE_PLANNER_DEFAULTS["umaze"]["guidance_scale"]
    large = envs.get_task("maze2d-large")
    assert script.planner_config(args, large).guidance_scale == MAZE_PLANNER_DEFAULTS["large"]["guidance_scale"]
    assert script.planner_config(script.Args(guidance_scale=0.0), large).guidance_scale == 0.0
    # plan lengths: the maze's default, a number of tokens, or 0 for plans to the episode's end (None)
    umaze = envs.get_task("maze2d-umaze")
    assert script.planner_config(script.Args(), umaze).horizon_tokens == 10
    assert script.planner_config(script.Args(), large).horizon_tokens == 30
    assert script.planner_config(script.Args(horizon_tokens=7), large).horizon_tokens == 7
    assert script.planner_config(script.Args(horizon_tokens=0), large).horizon_tokens is None
    assert script.planner_config(script.Args(execute_steps=5), large).execute_steps == 5
    # the subgoal defaults per maze: large guided toward data-graph subgoals, the others toward the goal
    assert script.subgoal_distance_for(script.Args(), large) == MAZE_SUBGOALS["large"].distance > 0
    assert script.subgoal_distance_for(script.Args(), umaze) == MAZE_SUBGOALS["umaze"].distance
    assert script.subgoal_distance_for(script.Args(subgoal_distance=0.0), large) is None
    assert script.subgoal_cell_for(script.Args(), large) == MAZE_SUBGOALS["large"].cell
    assert script.subgoal_cell_for(script.Args(subgoal_cell=0.5), large) == 0.5
    with pytest.raises(SystemExit, match="subgoal-distance"):
        script.subgoal_distance_for(script.Args(subgoal_distance=-1.0), large)
    # line of sight: on for umaze, off elsewhere, unless the command line says
    assert script.subgoal_line_of_sight_for(script.Args(), umaze) is True
    assert script.subgoal_line_of_sight_for(script.Args(), large) is False
    assert script.subgoal_line_of_sight_for(script.Args(subgoal_line_of_sight=False), umaze) is False
    assert script.subgoal_line_of_sight_for(script.Args(subgoal_line_of_sight=True), large) is True
    # evaluated again through SubgoalPolicy on the data's graph; the record says so
    record_file = tmp_path / "records.jsonl"
    again = script.main(
        script.Args(
            **{**vars(args), "eval_only": True, "checkpoint": str(run_dir / "agent.pt"), "eval_multi": False,
               "subgoal_distance": 1.0, "subgoal_cell": 0.5, "subgoal_line_of_sight": True,
               "record": str(record_file)}
        )
    )  # fmt: skip
    assert again["train_steps"] == 0 and "maze2d-umaze-v1" in again
    (record,) = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert record["settings"]["subgoal_distance"] == 1.0 and record["settings"]["subgoal_cell"] == 0.5
    assert record["settings"]["subgoal_line_of_sight"] is True


def test_the_package_exports_the_agent():
    import df_agent
    import df_agent.agent

    assert df_agent.Agent is df_agent.agent.Agent and df_agent.PlannerConfig is df_agent.agent.PlannerConfig


def test_the_agent_executes_its_plan_in_order_and_replans_on_time(trained, monkeypatch):
    """Spy on plan(): actions come from the queue in order, a plan every replan_every tokens (or execute_steps),
    the horizon shrinks to the episode's end unless shrink_horizon is off, and predict(episode_start) restarts one
    environment's clock."""
    assert LAYOUT.frame_stack == 5  # the numbers below count 5 steps per token

    def run(steps, **overrides):
        agent = Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=2, episode_length=22, **overrides))
        calls = []
        real_plan = agent.plan

        def spy(obs, goal=None, horizon=None, **kwargs):
            plan = real_plan(obs, goal, horizon=horizon, **kwargs)
            calls.append((len(obs), horizon))
            plan.actions[:] = np.arange(plan.actions.shape[1])[None, :, None] / 100 + len(calls)  # marks each step
            return plan

        monkeypatch.setattr(agent, "plan", spy)
        obs = {"observation": np.zeros((2, 4), np.float32), "desired_goal": np.ones((2, 2), np.float32)}
        actions = [agent.act(obs) for _ in range(steps)]
        return agent, calls, np.stack(actions)

    agent, calls, actions = run(22, replan_every=2)
    # a plan every 2 tokens = 10 steps; the horizon: 4 tokens (20 steps), then the 12 and the 2 steps left
    assert calls == [(2, 20), (2, 12), (2, 2)]
    expected = [1 + t / 100 for t in range(10)] + [2 + t / 100 for t in range(10)] + [3.0, 3.01]
    np.testing.assert_allclose(actions[:, 0, 0], expected, atol=1e-6)
    _, calls, _ = run(22, replan_every=2, shrink_horizon=False)
    assert [h for _, h in calls] == [20, 20, 20]  # keeps planning 4 tokens ahead near the end
    _, calls, actions = run(7, execute_steps=3)
    assert len(calls) == 3 and np.allclose(actions[:, 0, 0], [1, 1.01, 1.02, 2, 2.01, 2.02, 3], atol=1e-6)

    # a new episode in env 1 only: its queue is dropped and its clock restarts; env 0 carries on with its plan
    agent, calls, _ = run(3)
    calls.clear()
    obs = {"observation": np.zeros((2, 4), np.float32), "desired_goal": np.ones((2, 2), np.float32)}
    agent.predict(obs, episode_start=np.array([False, True]))
    assert calls == [(1, 20)] and list(agent._elapsed) == [4, 1]


def test_ended_episodes_neither_plan_nor_advance(trained, monkeypatch):
    """act(active=...): an env whose episode ended (a batch running on in lockstep) gets zero actions, is left out
    of every plan and keeps its clock and queue; the envs still going act exactly as they would alone."""
    agent = Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=2, episode_length=22, replan_every=1))
    sizes = []
    real_plan = agent.plan

    def spy(obs, goal=None, horizon=None, **kwargs):
        sizes.append(len(obs))
        return real_plan(obs, goal, horizon=horizon, **kwargs)

    monkeypatch.setattr(agent, "plan", spy)
    obs = {"observation": np.zeros((3, 4), np.float32), "desired_goal": np.ones((3, 2), np.float32)}
    first = agent.act(obs)
    assert sizes == [3] and np.abs(first).max() > 0
    live = np.array([True, False, True])
    for _ in range(LAYOUT.frame_stack + 2):  # past the end of the first token: the live envs replan
        actions = agent.act(obs, active=live)
        np.testing.assert_array_equal(actions[1], 0.0)
    assert sizes == [3, 2] and list(agent._elapsed) == [8, 1, 8]
    assert len(agent._queues[1]) == LAYOUT.frame_stack - 1  # env 1's queue is where it stopped
    # with the PD goal hold on, an ended env at its goal keeps its queue too (the hold drops only live envs' plans)
    held = Agent.from_trainer(trained, planner(horizon_tokens=4, ddim_steps=2, episode_length=22, goal_hold_radius=5.0))
    far = {"observation": np.zeros((2, 4), np.float32), "desired_goal": np.full((2, 2), 50.0, np.float32)}
    held.act(far)
    near = {"observation": np.zeros((2, 4), np.float32), "desired_goal": np.zeros((2, 2), np.float32)}
    actions = held.act(near, active=np.array([True, False]))
    assert len(held._queues[0]) == 0 and len(held._queues[1]) == LAYOUT.frame_stack - 1
    np.testing.assert_array_equal(actions[1], 0.0)
    with pytest.raises(ValueError, match="active must be a bool array of shape"):
        agent.act(obs, active=np.ones(2, dtype=bool))
    with pytest.raises(ValueError, match="active must be a bool array"):
        agent.act(obs, active=np.ones(3))


def test_the_pretrained_agent_acts_in_a_gymnasium_loop_right_after_install():
    agent = Agent.from_pretrained("maze2d-umaze-multi", ddim_steps=4, mcg_samples=1)  # the umaze agent
    assert agent.planner.episode_length == 300 and agent.planner.ddim_steps == 4
    env = gym.make("maze2d-umaze-v1")
    obs, _ = env.reset(seed=0)
    agent.reset()
    start = np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"])
    for _ in range(60):
        action = agent.act(obs)
        assert action.shape == (2,) and np.all(np.abs(action) <= 1)
        obs, *_ = env.step(action)
    # a trained planner makes progress toward the goal within 60 steps (the expert needs about 73 to arrive)
    assert np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"]) < start - 0.3


def test_from_pretrained_errors_name_the_command_that_recreates_the_agent(monkeypatch, tmp_path):
    import df_agent.agent as agent_module

    with pytest.raises(ValueError, match="unknown"):
        Agent.from_pretrained("maze2d-giant")
    monkeypatch.setattr(agent_module, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"python scripts/df_maze2d.py --env maze2d-large"):
        Agent.from_pretrained("maze2d-large")
    (tmp_path / "maze2d-large.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        Agent.from_pretrained("maze2d-large")


def test_for_task_loads_a_path_or_the_pretrained_agent_with_the_task_episode_length(trained, tmp_path):
    path = Agent.from_trainer(trained, PlannerConfig(episode_length=17)).save(tmp_path / "agent.pt")
    from_path = Agent.for_task(path, "maze2d-medium-multi", ddim_steps=3)
    assert from_path.planner.episode_length == 600 and from_path.planner.ddim_steps == 3  # medium's, not 17
    pretrained = Agent.for_task("pretrained", "maze2d-umaze", mcg_samples=2)
    reference = Agent.from_pretrained("maze2d-umaze")
    assert pretrained.planner.episode_length == 300 and pretrained.planner.mcg_samples == 2
    for a, b in zip(pretrained.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_agent_carries_where_its_weights_came_from(trained, tmp_path):
    agent = Agent.from_trainer(trained)
    minutes = round(trained.train_seconds / 60, 2)
    assert agent.training == {
        "steps": trained.step,
        "batch_size": CONFIG.batch_size,
        "device": "cpu",
        "minutes": minutes,
    }
    assert Agent.load(agent.save(tmp_path / "agent.pt")).training == agent.training
    checkpoint = trained.save(tmp_path / "checkpoint.pt")
    assert Agent.load(checkpoint).training["steps"] == trained.step


@pytest.mark.parametrize("maze", ["umaze", "medium", "large"])
def test_the_shipped_agents_plan_with_the_scripts_defaults(maze, load_script):
    """What `Agent.from_pretrained` gives is what `python scripts/df_maze2d.py --env maze2d-<maze>` evaluates: the
    planner saved in the shipped file equals the script's per-maze defaults (seed and episode length aside), which
    are the library's presets (a default changed without re-saving the agent fails)."""
    script = load_script("df_maze2d")
    task = envs.get_task(f"maze2d-{maze}")
    expected = script.planner_config(script.Args(env=task.env_id), task)
    assert maze_planner(maze, episode_length=task.max_episode_steps, seed=script.Args().seed) == expected
    shipped = Agent.from_pretrained(f"maze2d-{maze}").planner
    differing = {
        name: (getattr(shipped, name), getattr(expected, name))
        for name in PlannerConfig.__dataclass_fields__
        if name not in ("seed", "episode_length") and getattr(shipped, name) != getattr(expected, name)
    }
    assert not differing, f"shipped {maze} agent's planner differs from the script's defaults: {differing}"
    goal_dim = Agent.from_pretrained(f"maze2d-{maze}").tokenizer.layout.goal_dim
    assert goal_dim == 2 * script.GOAL_CONDITIONED[maze], f"shipped {maze} agent's goal conditioning is not the default"
    # trained by the script's budget: at most the maze's default steps (a time cap may stop it a little earlier)
    training = Agent.from_pretrained(f"maze2d-{maze}").training
    assert 0.95 * script.MAZE_TOTAL_STEPS[maze] <= training["steps"] <= script.MAZE_TOTAL_STEPS[maze]
    assert training["batch_size"] == script.Args().batch_size and training["minutes"] <= 60


def test_plot_plan_draws_the_rows_of_the_schedule_and_the_episode(trained, tmp_path, load_script):
    agent = Agent.from_trainer(trained, planner(horizon_tokens=3, ddim_steps=2, mcg_samples=1))
    plan = agent.plan(np.zeros(4, np.float32), goal=np.ones(2, np.float32), return_history=True)
    rows = len(plan.level_history) - 1  # one clean estimate per sampling row
    assert plan.row_positions.shape == (rows, 1, 15, 2)
    np.testing.assert_allclose(plan.row_positions[-1], plan.positions, atol=1e-5)  # the last row's estimate is the plan
    path = agent.save(tmp_path / "agent.pt")
    script = load_script("plot_plan")
    out = script.main(script.Args(env="maze2d-umaze", checkpoint=str(path), output=str(tmp_path / "plan.png")))
    assert out.stat().st_size > 10_000


def test_plan_continuity_measures_steps_inside_tokens_at_boundaries_and_from_the_start(load_script):
    script = load_script("plan_continuity")
    start = np.zeros((1, 2))
    # frame stack 3, two tokens: a first step of 0.5, steps of 0.1 inside tokens, a jump of 1.0 into the second
    xs = np.array([0.5, 0.6, 0.7, 1.7, 1.8, 1.9])
    stats = script.continuity(start, np.stack([xs, np.zeros(6)], axis=-1)[None], frame_stack=3)
    np.testing.assert_allclose(stats["first_step"], [0.5])
    np.testing.assert_allclose(stats["inside_step"], [0.1])
    np.testing.assert_allclose(stats["boundary_step"], [1.0])


def test_plan_continuity_records_the_plans_an_agent_makes_from_held_out_starts(trained, tmp_path, load_script):
    path = Agent.from_trainer(trained, planner(horizon_tokens=3, ddim_steps=2, mcg_samples=1)).save(tmp_path / "a.pt")
    script = load_script("plan_continuity")
    args = script.Args(
        env="maze2d-umaze", checkpoint=str(path), starts=3, guidance_scales=(0.0, 2.0), record=str(tmp_path / "r.jsonl")
    )
    records = script.main(args)
    assert [r["settings"]["guidance_scale"] for r in read_records(tmp_path / "r.jsonl")] == [0.0, 2.0]
    assert all(r["benchmark"] == "diagnostic" and len(r["plans"]["first_step"]) == 3 for r in records)
    # the first step it reports is the distance from each start to the plan's first position, planned independently
    env = envs.make("maze2d-umaze-v1")
    obs = [env.reset(seed=100 + i)[0] for i in range(3)]
    observations = np.array([o["observation"] for o in obs], np.float32)
    goals = np.array([o["desired_goal"] for o in obs], np.float32)
    agent = Agent.for_task(path, "maze2d-umaze-v1", guidance_scale=2.0)
    plan = agent.plan(observations, goals, horizon=3 * agent.tokenizer.layout.frame_stack)
    expected = np.linalg.norm(plan.positions[:, 0] - observations[:, :2], axis=-1)
    np.testing.assert_allclose(records[1]["plans"]["first_step"], expected, rtol=1e-4, atol=1e-5)
    table = load_script("make_results").continuity_table(records)  # RESULTS.md's table of these records
    assert table.count("| maze2d-umaze |") == 2 and f"| {records[1]['metrics']['first_step_median']:.3f} |" in table
    # with an action step it also reports how far each plan's actions lead from its last predicted position, here
    # with the goal cost measured on where the actions lead
    implied = replace(args, guidance_scales=(2.0,), action_step=0.05, guide_implied_positions=True, record=None)
    (record,) = script.main(implied)
    agent = Agent.for_task(path, "maze2d-umaze-v1", guidance_scale=2.0, guide_implied_positions=True, action_step=0.05)
    plan = agent.plan(observations, goals, horizon=3 * agent.tokenizer.layout.frame_stack)
    reached = observations[:, :2] + 0.05 * plan.actions.sum(axis=1)
    gap = np.linalg.norm(plan.positions[:, -1] - reached, axis=-1)
    np.testing.assert_allclose(record["plans"]["action_gap"], gap, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        record["plans"]["implied_final_distance"], np.linalg.norm(reached - goals, axis=-1), rtol=1e-4
    )
    gaps = load_script("make_results").action_gap_table([record])
    assert f"| {record['metrics']['action_gap_median']:.2f} |" in gaps and "where the actions lead" in gaps
    with pytest.raises(SystemExit, match="action-step"):
        script.main(replace(implied, action_step=None))
    with pytest.raises(SystemExit, match="OGBench"):
        script.main(replace(args, start=(1.0, 1.0)))


def test_planner_settings_are_immutable_and_with_planner_gives_a_new_agent(trained, tmp_path):
    import dataclasses

    agent = Agent.from_trainer(trained, planner(horizon_tokens=2, ddim_steps=2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        agent.planner.episode_length = 10
    obs, goal = np.array([[1.0, -1.0, 0.0, 0.0]], np.float32), np.array([[-1.0, 1.0]], np.float32)
    other = agent.with_planner(mcg_samples=1, seed=3)
    # the same model, tokenizer and noise schedule, other settings; the agent itself is unchanged
    assert other.model is agent.model and other.tokenizer is agent.tokenizer
    assert other.noise_schedule is agent.noise_schedule and other.training == agent.training
    assert other.planner == dataclasses.replace(agent.planner, mcg_samples=1, seed=3) and agent.planner.seed == 0
    # a fresh generator seeded from the new settings, as a new agent's; keep_random_state goes on from this one's
    fresh = Agent.from_trainer(trained, other.planner)
    np.testing.assert_array_equal(other.plan(obs, goal).actions, fresh.plan(obs, goal).actions)
    first = agent.plan(obs, goal)
    going_on = agent.with_planner(keep_random_state=True).plan(obs, goal)
    np.testing.assert_array_equal(going_on.actions, agent.plan(obs, goal).actions)
    assert not np.array_equal(going_on.actions, first.actions)
    replaced = agent.with_planner(planner(ddim_steps=3), episode_length=50).planner
    assert replaced.ddim_steps == 3 and replaced.episode_length == 50

    # plan()'s overrides equal the same settings in the planner: guidance 0 included, None keeps the planner's
    for overrides in ({"guidance_scale": 0.0}, {"mcg_samples": 1, "ddim_steps": 3}, {"schedule": "full_sequence"}):
        a = agent.with_planner().plan(obs, goal, **overrides)
        b = agent.with_planner(**overrides).plan(obs, goal)
        np.testing.assert_array_equal(a.actions, b.actions)
    for name in ("horizon", "ddim_steps", "mcg_samples"):
        with pytest.raises(ValueError, match=f"{name} must be at least 1"):
            agent.plan(obs, goal, **{name: 0})

    # an agent saved before the newest planner fields existed loads with their defaults
    state = torch.load(agent.save(tmp_path / "agent.pt"), weights_only=False)
    for name in ("stall_steps", "stall_distance", "near_goal_horizon_tokens", "warm_start_level"):
        del state["planner"][name]
    torch.save(state, tmp_path / "old.pt")
    old = Agent.load(tmp_path / "old.pt").planner
    assert old == dataclasses.replace(agent.planner, stall_steps=0, stall_distance=0.5, warm_start_level=0.0)
