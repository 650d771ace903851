"""Diffusion Forcing on OGBench pointmaze: the dataset loader (envs.ogbench_datasets.load_ogbench_transitions) and a
tiny end-to-end run of scripts/df_ogbench.py on a tiny regenerated dataset."""

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from df_agent.agent import Agent
from df_agent.training import WindowSampler
from envs import ogbench_datasets as od
from envs.ogbench_eval import make_eval_env
from envs.ogbench_tasks import OGBenchDatasetMissing
from envs.records import read_records

ENV = "pointmaze-medium-navigate-v0"
EPISODES, ROWS = 12, 61  # each episode: 61 rows in the file, 60 transitions


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ogbench_data")
    kwargs = dict(num_episodes=EPISODES, episode_length=ROWS, seed=2, write_minari=False, progress=False)
    od.generate_dataset(ENV, directory, overwrite=True, **kwargs)
    return directory


@pytest.fixture(scope="module")
def data(dataset_dir):
    return od.load_ogbench_transitions(ENV, dataset_dir)


def test_the_loader_gives_transitions_of_ogbench_s_regular_layout(data, dataset_dir):
    n = EPISODES * (ROWS - 1)
    assert len(data) == n
    assert data.observations.shape == data.next_observations.shape == (n, 2)
    assert data.actions.shape == data.goals.shape == (n, 2) and data.rewards.shape == (n,)
    assert all(a.dtype == np.float32 for a in (data.observations, data.actions, data.next_observations, data.goals))
    np.testing.assert_array_equal(data.episode_lengths, np.full(EPISODES, ROWS - 1))
    np.testing.assert_array_equal(data.episode_starts, np.arange(EPISODES) * (ROWS - 1))
    np.testing.assert_array_equal(data.episode_ids, np.repeat(np.arange(EPISODES), ROWS - 1))
    np.testing.assert_array_equal(data.segment_ids, data.episode_ids)  # episodes never continue one another
    # the file's rows, less each episode's last one (its action has no next observation)
    with np.load(od.npz_paths(ENV, dataset_dir)[0]) as raw:
        keep = ~raw["terminals"]
        np.testing.assert_array_equal(data.observations, raw["observations"][keep])
        np.testing.assert_array_equal(data.actions, raw["actions"][keep])
        np.testing.assert_array_equal(data.next_observations, raw["observations"][np.roll(keep, 1)])
    # within an episode the next observation of step t is the observation of step t + 1
    same = data.episode_ids[1:] == data.episode_ids[:-1]
    np.testing.assert_array_equal(data.next_observations[:-1][same], data.observations[1:][same])
    assert not np.array_equal(data.next_observations[:-1][~same], data.observations[1:][~same])
    # hindsight goals: each episode's final position; rewards by OGBench's success radius
    ends = data.episode_starts + data.episode_lengths - 1
    np.testing.assert_array_equal(data.goals, np.repeat(data.next_observations[ends], ROWS - 1, axis=0))
    distance = np.linalg.norm(data.next_observations - data.goals, axis=-1)
    np.testing.assert_array_equal(data.rewards, (distance <= od.SUCCESS_RADIUS).astype(np.float32))
    assert np.all(data.rewards[ends] == 1.0)


def test_positions_are_the_whole_state(data):
    """OGBench's point moves by 0.2 * action and rests after every step: away from walls the next position is the
    position plus 0.2 * action exactly (float32 rounding), whatever came before."""
    moved = data.next_observations - data.observations
    free = np.abs(moved - 0.2 * data.actions).max(axis=-1) < 1e-5
    assert free.mean() > 0.95


def test_zero_velocity_layout_and_the_validation_split(data, dataset_dir):
    padded = od.load_ogbench_transitions(ENV, dataset_dir, zero_velocity=True)
    assert padded.observations.shape == (len(data), 4)
    np.testing.assert_array_equal(padded.observations[:, :2], data.observations)
    np.testing.assert_array_equal(padded.next_observations[:, :2], data.next_observations)
    assert not padded.observations[:, 2:].any() and not padded.next_observations[:, 2:].any()
    val = od.load_ogbench_transitions(ENV, dataset_dir, split="val")
    assert len(val) == (EPISODES // 10) * (ROWS - 1)
    np.testing.assert_array_equal(od.position_observation(np.ones((3, 2)), 4), [[1, 1, 0, 0]] * 3)
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        od.position_observation(np.ones((3, 4)), 4)
    with pytest.raises(ValueError, match="split"):
        od.load_ogbench_transitions(ENV, dataset_dir, split="test")


def test_a_missing_dataset_names_the_command(tmp_path):
    with pytest.raises(OGBenchDatasetMissing, match=r"python -m envs.ogbench_datasets --env pointmaze-large-stitch"):
        od.load_ogbench_transitions("pointmaze-large-stitch-v0", tmp_path)


@pytest.mark.parametrize("num_steps", [20, 60])
def test_windows_never_cross_an_episode(data, num_steps):
    sampler = WindowSampler.from_transitions(data, num_steps)
    ids = data.episode_ids
    assert np.all(ids[sampler.starts] == ids[sampler.starts + num_steps - 1])
    assert len(sampler.starts) == EPISODES * (ROWS - 1 - num_steps + 1)  # every window that fits, no other
    batch = sampler.sample(256, np.random.default_rng(0))
    # each window is one episode's consecutive steps: step k's next observation is step k + 1's observation
    starts = np.array([np.flatnonzero((data.observations == o).all(-1))[0] for o in batch["obs"]])
    observations = data.observations[starts[:, None] + np.arange(num_steps)]
    np.testing.assert_array_equal(batch["next_observations"][:, :-1], observations[:, 1:])
    with pytest.raises(ValueError, match="no continuous stretch"):
        WindowSampler.from_transitions(data, ROWS)  # longer than an episode's 60 transitions


def tiny_args(script, dataset_dir, runs_dir, **overrides):
    planner = replace(script.default_planner(), ddim_steps=2, horizon_tokens=2, mcg_samples=2)
    values = dict(
        env=ENV,
        dataset_dir=str(dataset_dir),
        total_steps=30,
        batch_size=8,
        window_tokens=4,
        frame_stack=5,
        width=32,
        latent_dim=16,
        log_every=10,
        checkpoint_every=20,
        planner=planner,
        eval_episodes_per_goal=1,
        eval_max_steps=25,
        runs_dir=str(runs_dir),
        device="cpu",
    )
    return script.Args(**{**values, **overrides})


@pytest.fixture
def recorded_actions(monkeypatch):
    """Every batch of actions the agents return, per run: ``runs[-1]`` collects the current run's."""
    runs = []
    act = Agent.act

    def recording(self, obs, goal=None, **kwargs):
        actions = act(self, obs, goal, **kwargs)
        runs[-1].append(np.array(actions))
        return actions

    monkeypatch.setattr(Agent, "act", recording)
    return runs


def test_the_planner_fits_the_action_step_when_the_goal_cost_measures_implied_positions(load_script, dataset_dir):
    """planner_config: asked to measure the (near-goal) goal cost on the positions the actions lead to, without an
    action_step, the script fits it on the task's training data (OGBench moves the point by 0.2 x the action); a
    given step is kept, and without implied positions nothing is fitted."""
    script = load_script("df_ogbench")
    task = script.get_ogbench_task(ENV)
    args = script.Args(env=ENV, dataset_dir=str(dataset_dir))
    assert script.planner_config(args, task).action_step is None
    near = replace(args, planner=replace(args.planner, near_goal_guide_implied_positions=True))
    assert script.planner_config(near, task).action_step == pytest.approx(0.2, abs=0.005)
    given = replace(args, planner=replace(args.planner, guide_implied_positions=True, action_step=0.3))
    assert script.planner_config(given, task).action_step == 0.3


def test_the_command_line_takes_the_defaults_of_the_env_s_maze_and_dataset(load_script):
    script = load_script("df_ogbench")
    navigate = script.cli([])  # the default env, medium-navigate: the plain model, subgoals and short plans
    assert navigate.planner.horizon_tokens == script.NAVIGATE_PLANNER["horizon_tokens"] == 10
    assert navigate.planner.guidance_scale == 4.0 and navigate.planner.near_goal_guidance_scale is None
    assert not navigate.goal_conditioned and navigate.subgoal_distance == script.NAVIGATE_SUBGOAL_DISTANCE == 8.0
    giant_navigate = script.cli(["--env", "pointmaze-giant-navigate-v0", "--subgoal-distance", "None"])
    assert giant_navigate.subgoal_distance is None and giant_navigate.planner.horizon_tokens == 10
    long_plans = script.cli(["--env", "pointmaze-large-navigate-v0", "--planner.horizon-tokens", "60"])
    assert long_plans.planner.horizon_tokens == 60
    # giant-stitch: the goal-conditioned recipe, with the maze's subgoal distance and short plans
    recipe = script.cli(["--env", "pointmaze-giant-stitch-v0"])
    assert recipe.goal_conditioned and recipe.hindsight_goal_steps == 200 and recipe.subgoal_distance == 8.0
    giant = recipe.planner
    assert (giant.horizon_tokens, giant.guidance_scale, giant.near_goal_guidance_scale) == (10, 2.0, None)
    assert giant.route_weight == 0.0 and giant.history_tokens == 0 and recipe.window_balance == 0.0
    # medium- and large-stitch: the plain model with the navigate planner, and near the subgoal short plans, replanned
    # often, whose goal cost is measured on where the actions lead, a route pull, and plans that carry their history
    assert script.STITCH_PLAIN_MAZES == ("medium", "large")
    per_maze = {"medium": (4.0, 0.25, 2), "large": (6.0, 1.0, 2)}  # near-goal radius, route pull, history tokens
    for maze, (radius, route, history) in per_maze.items():
        stitch = script.cli(["--env", f"pointmaze-{maze}-stitch-v0"])
        assert not stitch.goal_conditioned and stitch.hindsight_goal_steps is None and stitch.window_balance == 1.0
        assert stitch.subgoal_distance == script.STITCH_SUBGOAL_DISTANCE[maze] == 8.0
        planner = stitch.planner
        assert (planner.horizon_tokens, planner.guidance_scale, planner.near_goal_guidance_scale) == (10, 4.0, 16.0)
        assert (planner.near_goal_horizon_tokens, planner.near_goal_execute_steps) == (3, 2)
        assert planner.near_goal_guide_implied_positions and not planner.guide_implied_positions
        assert (planner.near_goal_radius, planner.route_weight, planner.history_tokens) == (radius, route, history)
    assert script.HORIZON_TOKENS["medium"] == 30 and script.HORIZON_TOKENS["large"] == 60
    assert navigate.window_balance == 0.0
    # plain DF on stitch: the flags the docs give switch the recipe and its short plans off
    plain = script.cli(["--env", "pointmaze-giant-stitch-v0", "--no-goal-conditioned", "--subgoal-distance", "None",
                        "--planner.guidance-scale", "1", "--planner.near-goal-guidance-scale", "None",
                        "--planner.horizon-tokens", "60", "--window-balance", "0"])  # fmt: skip
    assert not plain.goal_conditioned and plain.subgoal_distance is None and plain.window_balance == 0.0
    base = script.default_planner("giant")  # the recipe's near-goal radius stays, inert without a near-goal scale
    assert replace(plain.planner, near_goal_radius=base.near_goal_radius) == base
    plain_large = script.cli(["--env", "pointmaze-large-stitch-v0", "--no-goal-conditioned", "--subgoal-distance",
                              "None", "--planner.route-weight", "0", "--planner.guidance-scale", "1",
                              "--planner.near-goal-guidance-scale", "None", "--planner.horizon-tokens", "60",
                              "--window-balance", "0", "--planner.near-goal-guide-implied-positions", "None",
                              "--planner.near-goal-execute-steps", "None", "--planner.near-goal-horizon-tokens", "None",
                              "--planner.near-goal-radius", "1", "--planner.history-tokens", "0"])  # fmt: skip
    assert plain_large.planner == script.default_planner("large") and plain_large.window_balance == 0.0
    partial = script.cli(["--env", "pointmaze-giant-stitch-v0", "--no-goal-conditioned", "--subgoal-distance", "None"])
    assert partial.planner.horizon_tokens == 10  # without the planner flags, the recipe's short plans stay
    unrouted = script.cli(["--env", "pointmaze-medium-stitch-v0", "--planner.route-weight", "0"])
    assert unrouted.planner.route_weight == 0.0 and unrouted.subgoal_distance == 8.0
    giant = script.cli(["--env", "pointmaze-giant-stitch-v0", "--planner.guidance-scale", "3"])  # an explicit flag wins
    assert giant.planner.horizon_tokens == script.STITCH_SHORT_PLANS["giant"]["horizon_tokens"] == 10
    assert giant.planner.guidance_scale == 3.0 and giant.planner.mcg_samples == script.default_planner().mcg_samples
    explicit = script.cli(["--env=pointmaze-giant-navigate-v0", "--planner.horizon-tokens", "45"])
    assert explicit.planner.horizon_tokens == 45 and explicit.env == "pointmaze-giant-navigate-v0"
    with pytest.raises(SystemExit, match="pointmaze-medium-navigate-v0"):  # an unknown id names the valid ones
        script.cli(["--env", "pointmaze-tiny-navigate-v0"])


def test_script_trains_evaluates_and_reproduces_from_its_checkpoints(
    dataset_dir, tmp_path, load_script, recorded_actions
):
    script = load_script("df_ogbench")
    record_path = tmp_path / "records.jsonl"
    args = tiny_args(script, dataset_dir, tmp_path / "runs", record=str(record_path))
    recorded_actions.append([])
    summary = script.main(args)
    run_dir = tmp_path / "runs" / summary["run"]
    assert summary["train_steps"] == 30
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 30 and checkpoint["tokenizer"]["layout"]["obs_dim"] == 4
    agent = Agent.load(run_dir / "agent.pt")
    assert agent.planner.episode_length == 25 and agent.planner.seed == args.seed
    assert agent.tokenizer.layout.obs_dim == 4  # (x, y, 0, 0), the default
    assert all(torch.equal(v, checkpoint["ema_model"][k]) for k, v in agent.model.state_dict().items())
    (record,) = read_records(record_path)
    assert record["benchmark"] == "ogbench" and record["method"] == "Diffusion Forcing" and record["env_id"] == ENV
    assert record["episodes"]["task_ids"] == [1, 2, 3, 4, 5] and record["train_steps"] == 30
    assert record["settings"]["episode_length"] == record["settings"]["max_episode_steps"] == 25
    assert record["settings"]["observation"] == "x, y, 0, 0" and record["model"]["steps"] == 30
    assert summary[ENV]["success_rate"] == record["metrics"]["success_rate"]
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"losses/loss", "charts/SPS", "charts/learning_rate", "eval/success_rate", "eval/time_to_goal"}
    assert expected | {"eval/success_rate_task5"} <= tags
    assert events.Scalars("eval/success_rate")[0].step == 30
    actions = np.stack(recorded_actions[-1])
    assert actions.shape[1:] == (1, 2) and len(actions) >= 25  # one env per goal, at least one goal's full episode

    # --eval-only from the training checkpoint (EMA weights) and from the saved agent: the same evaluation exactly
    for i, path in enumerate([run_dir / "checkpoint.pt", run_dir / "agent.pt"]):
        recorded_actions.append([])
        again_args = tiny_args(script, dataset_dir, tmp_path / "runs", record=str(record_path), eval_only=True)
        again = script.main(replace(again_args, checkpoint=str(path), exp_name=f"again{i}", save_model=False))
        assert again["train_steps"] == 0
        np.testing.assert_array_equal(np.stack(recorded_actions[-1]), actions)
        repeat = read_records(record_path)[-1]
        assert repeat["episodes"] == record["episodes"]
        assert repeat["metrics"]["success_rate"] == summary[ENV]["success_rate"]
        assert repeat["settings"]["checkpoint"] == str(path)


def test_script_trains_on_positions_alone(dataset_dir, tmp_path, load_script):
    """--no-zero-velocity: a model of OGBench's 2-D observation trains and plans."""
    script = load_script("df_ogbench")
    args = tiny_args(script, dataset_dir, tmp_path, zero_velocity=False, total_steps=10, eval_episodes_per_goal=0)
    summary = script.main(args)
    agent = Agent.load(tmp_path / summary["run"] / "agent.pt")
    assert agent.tokenizer.layout.obs_dim == 2
    plan = agent.plan(np.zeros((3, 2)), np.ones(2), horizon=10)
    assert plan.actions.shape == (3, 10, 2) and plan.observations.shape == (3, 10, 2)


def test_an_agent_of_positions_alone_acts(dataset_dir, tmp_path, load_script):
    script = load_script("df_ogbench")
    args = tiny_args(script, dataset_dir, tmp_path, zero_velocity=False, total_steps=10, eval_max_steps=10)
    summary = script.main(args)
    agent = Agent.load(Path(args.runs_dir) / summary["run"] / "agent.pt")
    assert agent.tokenizer.layout.obs_dim == 2  # planned and acted on (x, y) alone, one episode per goal
    assert 1 <= summary[ENV]["time_to_goal"] <= 10 and 0.0 <= summary[ENV]["success_rate"] <= 1.0


def test_script_trains_a_goal_conditioned_agent_on_hindsight_goals(dataset_dir, tmp_path, load_script):
    """--goal-conditioned --hindsight-goal-steps: the model reads the goal, the evaluation conditions on each test
    goal, and the record says so. With --window-balance the agent's provenance says how its windows were drawn."""
    script = load_script("df_ogbench")
    record_path = tmp_path / "records.jsonl"
    args = tiny_args(
        script, dataset_dir, tmp_path, goal_conditioned=True, hindsight_goal_steps=40, total_steps=10,
        eval_max_steps=10, record=str(record_path), window_balance=1.0,
    )  # fmt: skip
    summary = script.main(args)
    agent = Agent.load(tmp_path / summary["run"] / "agent.pt")
    assert agent.tokenizer.layout.goal_dim == 2 and agent.model.config.obs_dim == 6
    assert agent.training["window_balance"] == {"power": 1.0, "cell": 4.0}
    unguided = agent.with_planner(guidance_scale=0.0)
    plans = [unguided.with_planner().plan(np.zeros((1, 4)), goal, horizon=10).actions for goal in ([0, 0], [8, 8])]
    assert not np.allclose(plans[0], plans[1])  # the goal reaches the plan through the model, not only guidance
    (record,) = read_records(record_path)
    assert record["settings"]["goal_conditioned"] is True
    assert record["model"]["window_balance"]["power"] == 1.0


def test_script_trains_an_agent_of_relative_positions(dataset_dir, tmp_path, load_script):
    """--relative-positions: tokens hold positions relative to the plan's start; the agent decodes its plans from the
    observation it plans from, guidance included, and warm-starts from tokens moved to that observation."""
    script = load_script("df_ogbench")
    record_path = tmp_path / "records.jsonl"
    args = tiny_args(
        script, dataset_dir, tmp_path, relative_positions=True, total_steps=10, eval_max_steps=10,
        record=str(record_path),
    )  # fmt: skip
    summary = script.main(args)
    agent = Agent.load(tmp_path / summary["run"] / "agent.pt")
    assert agent.tokenizer.layout.relative_positions
    obs = np.array([[2.0, 3.0, 0.0, 0.0], [10.0, -4.0, 0.0, 0.0]], dtype=np.float32)
    plan = agent.plan(obs, np.ones(2), horizon=20)
    decoded = agent.tokenizer.decode(plan.tokens, obs)["next_observations"][:, :20]
    np.testing.assert_allclose(plan.observations, decoded, atol=1e-5)
    from_zero = agent.tokenizer.decode(plan.tokens, np.zeros_like(obs))["next_observations"][:, :20, :2]
    np.testing.assert_allclose(plan.positions, from_zero + obs[:, None, :2], atol=1e-4)
    # a warm start takes tokens relative to the new plan's start (Tokenizer.reorigin moves them there)
    moved = obs + np.array([0.5, 0.5, 0.0, 0.0], dtype=np.float32)
    warm = agent.tokenizer.reorigin(plan.tokens[:, 1:], obs, moved)
    again = agent.plan(moved, np.ones(2), horizon=10, warm_tokens=warm, warm_start_level=0.5)
    assert again.observations.shape == (2, 10, 4) and np.isfinite(again.observations).all()
    (record,) = read_records(record_path)
    assert record["settings"]["relative_positions"] is True


def test_subgoal_distance_guides_the_agent_along_the_data_s_graph(dataset_dir, tmp_path, load_script, monkeypatch):
    """--subgoal-distance: the agent is guided toward points of the training data on the way, not the far test goal,
    and the record names the distance. With --planner.route-weight it also gets the data's way to each subgoal."""
    script = load_script("df_ogbench")
    desired, guided, routes = [], [], []
    act = Agent.act

    def recording(self, obs, goal=None, route=None, **kwargs):
        guided.append(np.array(goal))
        routes.append(route)
        return act(self, obs, goal, route=route, **kwargs)

    subgoal_act = script.SubgoalPolicy.act

    def recording_desired(self, obs, goal, **kwargs):
        desired.append(np.array(goal))
        return subgoal_act(self, obs, goal, **kwargs)

    monkeypatch.setattr(Agent, "act", recording)
    monkeypatch.setattr(script.SubgoalPolicy, "act", recording_desired)
    record_path = tmp_path / "records.jsonl"
    args = tiny_args(
        script, dataset_dir, tmp_path, total_steps=10, eval_max_steps=5, subgoal_distance=2.0, record=str(record_path)
    )
    script.main(args)
    desired_at, guided_at = np.concatenate(desired), np.concatenate(guided)
    assert len(desired_at) == len(guided_at) == 25  # five goals, one episode each, five steps
    moved = np.linalg.norm(guided_at - desired_at, axis=-1) > 1e-4
    assert moved.sum() >= 5  # a whole episode guided toward subgoals on the way (the tiny data reaches few goals)
    data = od.load_ogbench_transitions(ENV, dataset_dir)
    nearest_data = np.min(np.linalg.norm(guided_at[moved][:, None] - data.observations[None, :, :2], axis=-1), axis=1)
    assert nearest_data.max() < args.subgoal_cell * np.sqrt(2)  # each subgoal is a node: where the data has been
    (record,) = read_records(record_path)
    assert record["settings"]["subgoal_distance"] == 2.0 and record["settings"]["subgoal_cell"] == 0.5
    assert all(route is None for route in routes)

    guided.clear()
    routes.clear()
    routed = replace(args, planner=replace(args.planner, route_weight=2.0), eval_max_steps=2, record=None)
    script.main(routed)
    routes = np.concatenate(routes)
    assert routes.shape == (10, 9, 2)  # five goals x two steps; 2 / 0.25 + 1 points each
    np.testing.assert_allclose(routes[:, -1], np.concatenate(guided), atol=1e-5)  # to the subgoal
    with pytest.raises(SystemExit, match="subgoal-distance"):
        script.main(replace(routed, subgoal_distance=None))


def test_plot_plan_draws_an_ogbench_episode_over_its_maze_and_the_data_s_pieces(dataset_dir, tmp_path, load_script):
    """scripts/plot_plan.py on an OGBench id: the evaluation's start and goal for (task id, seed), the maze's walls
    from OGBench's map (4-unit cells), an episode ended at its first success or its step cap, dataset episodes."""
    from envs.ogbench_eval import make_eval_env, reset_episode

    train = load_script("df_ogbench")
    summary = train.main(tiny_args(train, dataset_dir, tmp_path, total_steps=10, eval_episodes_per_goal=0))
    checkpoint = str(tmp_path / summary["run"] / "agent.pt")
    script = load_script("plot_plan")
    args = script.Args(
        env=ENV, checkpoint=checkpoint, task_id=3, seed=7, max_steps=12, dataset_pieces=4, dataset_dir=str(dataset_dir)
    )
    scene = script.ogbench_scene(args)
    start, info = reset_episode(make_eval_env(ENV), 3, 7)
    np.testing.assert_allclose(scene.trajectory[0], start)
    np.testing.assert_allclose(scene.goal, info["goal"])
    assert 2 <= len(scene.trajectory) <= 13 and scene.cell_size == 4.0 and scene.goal_radius == 1.0
    assert len(scene.pieces) == 4 and all(piece.shape == (ROWS - 1, 2) for piece in scene.pieces)
    assert len(scene.wall_centres) == 64 - 26  # medium: an 8 x 8 grid with 26 free cells
    assert scene.way is None
    out = script.main(script.Args(**{**vars(args), "output": str(tmp_path / "plan.png")}))
    assert out.stat().st_size > 10_000
    # toward subgoals: the data's way starts at the node nearest the start (goal 5 from seed 7: the tiny data joins
    # the start's node to the node nearest the goal) and moves by steps of the data's grid, never through a wall
    guided = script.ogbench_scene(script.Args(**{**vars(args), "subgoal_distance": 2.0, "task_id": 5}))
    assert len(guided.way) > 10 and np.linalg.norm(guided.way[0] - guided.trajectory[0]) < 1.5
    assert np.linalg.norm(np.diff(guided.way, axis=0), axis=1).max() < 1.0
    # with a route pull the same episode plans along the way (same start, way and goal; the plan is guided otherwise)
    routed_args = {**vars(args), "subgoal_distance": 2.0, "task_id": 5, "route_weight": 4.0}
    routed = script.ogbench_scene(script.Args(**routed_args))
    np.testing.assert_allclose(routed.way, guided.way)
    np.testing.assert_allclose(routed.trajectory[0], guided.trajectory[0])
    assert not np.allclose(routed.plan.positions, guided.plan.positions)
    with pytest.raises(SystemExit, match="subgoal-distance"):
        script.ogbench_scene(script.Args(**{**vars(args), "route_weight": 4.0}))
    with pytest.raises(SystemExit, match="--checkpoint"):  # no packaged OGBench agent
        script.main(script.Args(env=ENV))


def test_the_agent_policy_passes_on_which_episodes_go_on_unless_told_to_plan_them_all(load_script):
    """The evaluation tells AgentPolicy which episodes of the batch still run; the agent then plans only for those.
    --eval-plan-ended plans for every env, as the evaluation did before the mask (its records reproduce exactly)."""
    script = load_script("df_ogbench")

    class Recorder:
        def act(self, obs, goal, active=None):
            self.obs, self.active = obs, active
            return np.zeros((len(obs), 2), np.float32)

    agent = SimpleNamespace(tokenizer=SimpleNamespace(layout=SimpleNamespace(obs_dim=4)))
    obs = {"observation": np.ones((2, 2)), "desired_goal": np.zeros((2, 2))}
    live = np.array([True, False])
    inner = Recorder()
    script.AgentPolicy(agent, inner).act(obs, active=live)
    np.testing.assert_array_equal(inner.active, live)
    assert inner.obs.shape == (2, 4)  # (x, y, 0, 0)
    script.AgentPolicy(agent, inner, plan_ended=True).act(obs, active=live)
    assert inner.active is None
    assert script.cli(["--eval-plan-ended"]).eval_plan_ended and not script.cli([]).eval_plan_ended


def test_one_goal_can_be_evaluated_alone_and_its_record_shows_only_that_goal(dataset_dir, tmp_path, load_script):
    """--eval-task-ids 2 runs goal 2's episodes with the full evaluation's seeds; RESULTS shows '-' for the others."""
    script = load_script("df_ogbench")
    make_results = load_script("make_results")
    record_path = tmp_path / "records.jsonl"
    args = tiny_args(script, dataset_dir, tmp_path / "runs", record=str(record_path), eval_task_ids=(2,))
    args = replace(args, eval_episodes_per_goal=2, total_steps=10, save_model=False)
    script.main(args)
    (record,) = read_records(record_path)
    assert record["episodes"]["task_ids"] == [2, 2] and record["episodes"]["seeds"] == [2, 3]
    assert record["settings"]["task_ids"] == [2]
    row = next(line for line in make_results.ogbench_table([record]).splitlines() if line.startswith("| Diffusion"))
    assert "| - / " in row and row.count(" - ") == 4  # goals 1, 3, 4, 5: not evaluated


def test_the_coverage_diagnostic_counts_every_row_in_a_free_cell(dataset_dir, load_script):
    """scripts/ogbench_coverage.py: each test goal's count is the number of the dataset's rows in its cell, and its
    rank a share of the free cells."""
    script = load_script("ogbench_coverage")
    coverage = script.goal_coverage(ENV, str(dataset_dir))
    data = od.load_ogbench_transitions(ENV, dataset_dir)
    assert coverage["rows"] == len(data)
    assert len(coverage["goals"]) == 5 and [g["task_id"] for g in coverage["goals"]] == [1, 2, 3, 4, 5]
    assert coverage["rows_per_cell_min"] <= coverage["rows_per_cell_median"] <= coverage["rows_per_cell_max"]
    cells = od.MazeGrid(make_eval_env(ENV)).xy_to_cell(data.observations[:, :2])
    for goal in coverage["goals"]:
        assert 0.0 <= goal["rank"] < 1.0
        assert goal["rows"] == int((cells == goal["cell"]).all(axis=1).sum())
