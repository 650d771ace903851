import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import envs
from envs.evaluation import evaluate, log_evaluation
from envs.expert import WaypointExpert
from envs.simulator import BatchedPointMaze


def random_policy(seed=0):
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1, 1, size=(len(obs["observation"]), 2))


@pytest.mark.parametrize("env_id", ["maze2d-umaze", "maze2d-medium", "maze2d-large", "maze2d-large-multi"])
def test_expert_reaches_the_goal_and_random_does_not(env_id):
    maze = envs.get_task(env_id).maze
    expert = evaluate(WaypointExpert(maze), env_id, num_episodes=8, progress=False)
    assert expert.success_rate >= 0.85
    # D4RL's reference maximum is the expert, so it must score near or above 100 (ours scores above; see README).
    assert expert.normalized_score > 80
    assert (expert.time_to_goal[expert.success] < envs.get_task(env_id).max_episode_steps).all()
    random = evaluate(random_policy(), env_id, num_episodes=8, progress=False)
    assert random.normalized_score < 30
    assert random.normalized_score < expert.normalized_score - 50


def test_evaluation_is_deterministic_and_independent_of_batching():
    a = evaluate(WaypointExpert("umaze", seed=3), "maze2d-umaze-multi", num_episodes=6, seed=11, progress=False)
    b = evaluate(WaypointExpert("umaze", seed=3), "maze2d-umaze-multi", num_episodes=6, seed=11, progress=False)
    np.testing.assert_array_equal(a.returns, b.returns)
    # Each episode has its own seed, so a policy that ignores its batch gives the same episodes in any batching.
    still = lambda obs: np.zeros((len(obs["observation"]), 2))  # noqa: E731
    full = evaluate(still, "maze2d-umaze-multi", num_episodes=6, seed=11, progress=False)
    split = evaluate(still, "maze2d-umaze-multi", num_episodes=6, seed=11, num_envs=4, progress=False)
    np.testing.assert_array_equal(full.returns, split.returns)
    np.testing.assert_array_equal(full.time_to_goal, split.time_to_goal)
    assert full.seeds == list(range(11, 17))


def test_metrics_are_consistent_per_episode():
    result = evaluate(WaypointExpert("medium"), "maze2d-medium-multi", num_episodes=6, progress=False)
    horizon = envs.get_task("maze2d-medium").max_episode_steps
    for ret, ok, ttg in zip(result.returns, result.success, result.time_to_goal, strict=False):
        if ok:  # no reward before the goal is first reached
            assert 1 <= ttg <= horizon and ret <= horizon - ttg + 1
        else:
            assert ttg == horizon and ret == 0
    np.testing.assert_allclose(result.normalized_scores, envs.get_normalized_score("maze2d-medium", result.returns))
    assert set(result.metrics()) >= {"normalized_score", "success_rate", "time_to_goal", "episodes_per_second"}


class PlannerSpy:
    """An SB3-style policy with a reset hook, recording how the evaluation drives it."""

    def __init__(self):
        self.resets = []

    def reset(self, num_envs):
        self.resets.append(num_envs)

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        assert deterministic
        return np.zeros((len(obs["observation"]), 2)), None


def test_predict_policies_and_reset_hook():
    spy = PlannerSpy()
    result = evaluate(spy, "maze2d-umaze", num_episodes=5, num_envs=2, progress=False)
    assert result.num_episodes == 5
    assert spy.resets == [2, 2, 2]


def test_wrong_action_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"shape \(3,\).*expected \(3, 2\)"):
        evaluate(lambda obs: np.zeros(3), "maze2d-umaze", num_episodes=3, progress=False)


def test_tensorboard_tags_are_shared(tmp_path):
    result = evaluate(WaypointExpert("umaze"), "maze2d-umaze", num_episodes=2, progress=False)
    writer = SummaryWriter(tmp_path)
    log_evaluation(writer, result, global_step=5)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/normalized_score", "eval/success_rate", "eval/time_to_goal", "eval/return"} <= tags
    (event,) = events.Scalars("eval/normalized_score")
    assert event.step == 5 and event.value == pytest.approx(result.normalized_score)


def test_batched_simulator_matches_the_env_step_by_step():
    env = envs.make("maze2d-large")
    obs, _ = env.reset(seed=4)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(1, 300, 2)) * 1.5  # out-of-range actions are clipped by both
    sim = BatchedPointMaze("large")
    qpos, qvel = sim.rollout(obs["observation"][None, :2], obs["observation"][None, 2:], actions)
    max_speed = 0.0
    for t in range(300):
        obs, *_ = env.step(np.clip(actions[0, t], -1, 1))
        np.testing.assert_allclose(obs["observation"], np.r_[qpos[0, t], qvel[0, t]], atol=1e-9)
        max_speed = max(max_speed, np.abs(obs["observation"][2:]).max())
    assert max_speed > 1.0  # the run exercised real motion (and wall contacts in 300 random steps)


def test_reach_then_stay_score_against_a_hand_computation():
    """Three umaze episodes: first reach on step 1, on the last step, never."""
    from envs.evaluation import EvalResult

    # By hand: umaze episodes last 300 steps; first reach at step 1 -> 300 steps counted, at step 300 -> 1 step,
    # never -> 0; D4RL's umaze references are 23.85 / 161.86.
    result = EvalResult(
        env_id="maze2d-umaze-v1",
        returns=np.array([120.0, 1.0, 0.0]),
        normalized_scores=np.zeros(3),
        success=np.array([True, True, False]),
        time_to_goal=np.array([1.0, 300.0, 300.0]),
        seconds=1.0,
        episode_length=300,
    )
    np.testing.assert_array_equal(result.stay_returns, [300.0, 1.0, 0.0])
    expected = 100 * (np.array([300.0, 1.0, 0.0]) - 23.85) / (161.86 - 23.85)
    np.testing.assert_allclose(result.stay_scores, expected)
    assert result.reach_stay_score == pytest.approx(expected.mean())
    assert result.reach_stay_score_stderr == pytest.approx(expected.std(ddof=1) / np.sqrt(3))
    assert {"reach_stay_score", "reach_stay_score_stderr"} <= set(result.metrics())


def test_reach_then_stay_equals_the_return_of_an_agent_that_stays():
    """The expert holds its last waypoint, the goal: once there it never leaves, so both returns agree; a policy
    that leaves the goal scores less than its reach-then-stay return."""
    expert = evaluate(WaypointExpert("umaze"), "maze2d-umaze-multi", num_episodes=4, seed=5, progress=False)
    assert expert.success.all()
    np.testing.assert_array_equal(expert.returns, expert.stay_returns)
    assert expert.episode_length == 300

    def leave_after_arrival(obs):  # the expert until within the radius, then push away at full force
        actions = WaypointExpert("umaze")(obs)
        away = np.sign(obs["achieved_goal"] - obs["desired_goal"])
        near = np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"], axis=-1) <= 0.5
        return np.where(near[:, None], away, actions)

    leaver = evaluate(leave_after_arrival, "maze2d-umaze-multi", num_episodes=4, seed=5, progress=False)
    assert leaver.success.all()
    assert (leaver.returns < leaver.stay_returns).all()
    assert leaver.reach_stay_score > leaver.normalized_score
