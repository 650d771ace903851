import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import envs
from baselines.mppi import Args, MPPIPlanner, main
from envs.evaluation import evaluate
from envs.simulator import MAX_SPEED, BatchedPointMaze


def test_batched_rollout_matches_the_env_with_the_velocity_clip_active():
    """MPPI's rollouts give the env's states for the same actions, also at full speed along a corridor."""
    maze = envs.Maze.from_name("umaze")
    start = maze.cell_to_xy(np.array([3, 1]))  # west end of the bottom corridor (3 cells long)
    steps = 80
    push_east = np.tile([1.0, 0.0], (steps, 1))  # full throttle: the velocity clip acts, then the east wall
    rng = np.random.default_rng(0)
    random_actions = rng.uniform(-1, 1, size=(steps, 2))
    actions = np.stack([push_east, random_actions, -push_east])  # a batch: each row must not affect the others
    sim = BatchedPointMaze("umaze")
    qpos, qvel = sim.rollout(np.tile(start, (3, 1)), np.zeros((3, 2)), actions)
    for b in range(3):
        env = envs.make("maze2d-umaze")
        env.reset(seed=0, options={"reset_pos": start, "goal": maze.cell_to_xy(np.array([1, 1]))})
        env.unwrapped.point_env.set_state(start, np.zeros(2))
        clipped = 0
        for t in range(steps):
            obs, *_ = env.step(actions[b, t])
            np.testing.assert_allclose(obs["observation"], np.r_[qpos[b, t], qvel[b, t]], rtol=0, atol=1e-9)
            clipped += int(np.abs(obs["observation"][2:]).max() > MAX_SPEED)  # the next step starts clipped
        env.close()
        if b == 0:
            assert clipped >= 10, "the corridor run must exercise the velocity clip"
            assert qpos[0, -1, 0] > maze.cell_to_xy(np.array([3, 3]))[0]  # and reach the far end (wall contact)


def test_mppi_reaches_a_nearby_goal_in_the_open():
    maze = envs.Maze.from_name("umaze")
    start, goal = maze.cell_to_xy(np.array([3, 1])), maze.cell_to_xy(np.array([3, 2]))  # same corridor, 1 m apart
    env = envs.make("maze2d-umaze")
    obs, _ = env.reset(seed=0, options={"reset_pos": start, "goal": goal})
    planner = MPPIPlanner("umaze", horizon=25, num_samples=64, seed=0)
    planner.reset(1)
    distances = []
    for _ in range(120):
        action = planner({key: value[None] for key, value in obs.items()})
        assert action.shape == (1, 2) and np.abs(action).max() <= 1.0
        obs, *_ = env.step(action[0])
        distances.append(np.linalg.norm(obs["achieved_goal"] - goal))
    env.close()
    assert min(distances) < 0.1
    assert distances[-1] < 0.2  # and it stays there


def test_mppi_runs_through_the_shared_evaluation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = Args(
        env="maze2d-umaze-multi",
        seed=5,
        eval_seed=5,
        num_episodes=2,
        horizon=8,
        num_samples=8,
        timing_steps=5,
        progress=False,
    )
    metrics = main(args)
    result = metrics["result"]
    # The script evaluates the planner its flags describe (horizon 8, 8 samples, noise seeded with --seed 5) on
    # episodes seeded 5 and 6 (--eval-seed 5): the same planner built by hand and evaluated on those episodes
    # acts identically.
    assert result.seeds == [5, 6]
    planner = MPPIPlanner("umaze", horizon=8, num_samples=8, seed=5)
    by_hand = evaluate(planner, "maze2d-umaze-multi", 2, seed=5, progress=False)
    np.testing.assert_array_equal(result.returns, by_hand.returns)
    np.testing.assert_array_equal(result.time_to_goal, by_hand.time_to_goal)
    assert result.success.all()  # both goals are near enough for this short horizon: the comparison is not 0 == 0
    assert metrics["control_steps_per_second"] > 0
    (run,) = list((tmp_path / "runs").iterdir())
    assert run.name.startswith("maze2d-umaze-multi-v1__mppi__5__")
    events = EventAccumulator(str(run))
    events.Reload()
    assert {"eval/normalized_score", "eval/success_rate", "charts/control_steps_per_second"} <= set(
        events.Tags()["scalars"]
    )
    (logged,) = events.Scalars("eval/normalized_score")
    assert logged.value == pytest.approx(result.normalized_score, rel=1e-6, abs=1e-4)
