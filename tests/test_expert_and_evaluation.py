import gymnasium as gym
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


# Our expert over 100 episodes (seeds 0-99) scores 129.0 / 152.9 / 208.6 / 217.8 (umaze / medium / large /
# large-multi), with a per-episode spread of 31-44 points, so a mean of 8 episodes has a standard error of 11-16.
# Each threshold is about 2.5 standard errors below the 100-episode mean: every one of the twelve disjoint 8-episode
# blocks of seeds 0-95 clears it (lowest block means 113.9 / 140.4 / 187.9 / 195.2), a controller 30% weaker does not.
EXPERT_SCORE_FLOOR_8_EPISODES = {
    "maze2d-umaze": 100.0,
    "maze2d-medium": 125.0,
    "maze2d-large": 170.0,
    "maze2d-large-multi": 175.0,
}


@pytest.mark.parametrize("env_id", sorted(EXPERT_SCORE_FLOOR_8_EPISODES))
def test_expert_reaches_the_goal_and_random_does_not(env_id):
    maze = envs.get_task(env_id).maze
    expert = evaluate(WaypointExpert(maze), env_id, num_episodes=8, progress=False)
    assert expert.success_rate == 1.0
    assert expert.normalized_score > EXPERT_SCORE_FLOOR_8_EPISODES[env_id]
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
    recorder = FirstObservations()
    split = evaluate(recorder, "maze2d-umaze-multi", num_episodes=6, seed=11, num_envs=4, progress=False)
    np.testing.assert_array_equal(full.returns, split.returns)
    np.testing.assert_array_equal(full.time_to_goal, split.time_to_goal)
    assert split.seeds == [11, 12, 13, 14, 15, 16]
    # Episode i really started where a reset with seed 11 + i starts: two batches of 4, the last 2 envs unused.
    starts = [batch[i] for batch in recorder.first for i in range(4)][:6]
    for i, (start, goal) in enumerate(starts):
        obs, _ = envs.make("maze2d-umaze-multi").reset(seed=11 + i)
        np.testing.assert_array_equal(start, obs["observation"])
        np.testing.assert_array_equal(goal, obs["desired_goal"])


class FirstObservations:
    """A policy that stands still and records the first observation (state, goal) of each batch of episodes."""

    def __init__(self):
        self.first, self.fresh = [], False

    def reset(self, num_envs):
        self.fresh = True

    def __call__(self, obs):
        if self.fresh:
            self.first.append(list(zip(obs["observation"].copy(), obs["desired_goal"].copy(), strict=True)))
            self.fresh = False
        return np.zeros((len(obs["observation"]), 2))


def test_metrics_are_consistent_per_episode():
    result = evaluate(WaypointExpert("medium"), "maze2d-medium-multi", num_episodes=6, progress=False)
    horizon = envs.get_task("maze2d-medium").max_episode_steps
    for ret, ok, ttg in zip(result.returns, result.success, result.time_to_goal, strict=False):
        if ok:  # no reward before the goal is first reached
            assert 1 <= ttg <= horizon and ret <= horizon - ttg + 1
        else:
            assert ttg == horizon and ret == 0
    # D4RL's medium references, 13.13 and 277.39
    np.testing.assert_allclose(result.normalized_scores, 100 * (result.returns - 13.13) / (277.39 - 13.13))
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


class RecordPositions(gym.Wrapper):
    """Records the position and the goal after every step of the episode (a fresh list at each reset)."""

    log: list = []

    def reset(self, **kwargs):
        self.episode = []
        RecordPositions.log.append(self.episode)
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.episode.append((obs["achieved_goal"].copy(), obs["desired_goal"].copy()))
        return obs, reward, terminated, truncated, info


def test_evaluation_metrics_against_a_hand_computation_on_scripted_trajectories(monkeypatch):
    """Three scripted umaze episodes in one batch: the expert (reaches the goal and stays), the expert until its
    first step within 0.5 of the goal then full force away (reaches, then leaves), standing still (never reaches).
    Every metric is recomputed by hand from the recorded positions: return = steps within D4RL's 0.5 of the goal,
    first hit = the first such step (1-based; 300 if none), success = any, D4RL-normalized score, its standard
    error, the reach-then-stay return."""
    import envs.evaluation as evaluation

    RecordPositions.log = []
    monkeypatch.setattr(evaluation, "make", lambda env_id: RecordPositions(envs.make(env_id)))
    expert, reached = WaypointExpert("umaze"), np.zeros(3, dtype=bool)

    def scripted(obs):
        actions = expert(obs)
        away = np.sign(obs["achieved_goal"][1] - obs["desired_goal"][1])
        reached[1] |= np.linalg.norm(obs["achieved_goal"][1] - obs["desired_goal"][1]) <= 0.5
        if reached[1]:
            actions[1] = away
        actions[2] = 0.0
        return actions

    result = evaluate(scripted, "maze2d-umaze", num_episodes=3, seed=2, progress=False)

    assert len(RecordPositions.log) == 3 and all(len(episode) == 300 for episode in RecordPositions.log)
    within = np.array([[np.linalg.norm(p - g) <= 0.5 for p, g in episode] for episode in RecordPositions.log])
    returns = within.sum(axis=1).astype(float)
    success = within.any(axis=1)
    first_hit = np.where(success, within.argmax(axis=1) + 1, 300).astype(float)
    scores = 100 * (returns - 23.85) / (161.86 - 23.85)  # D4RL's umaze references
    # the script exercised each case: stays, leaves after reaching, never reaches
    assert success.tolist() == [True, True, False]
    assert returns[0] == 300 - first_hit[0] + 1 and 0 < returns[1] < 300 - first_hit[1] + 1 and returns[2] == 0

    np.testing.assert_array_equal(result.returns, returns)
    np.testing.assert_array_equal(result.success, success)
    np.testing.assert_array_equal(result.time_to_goal, first_hit)
    np.testing.assert_allclose(result.normalized_scores, scores)
    assert result.normalized_score == pytest.approx(scores.mean())
    assert result.normalized_score_stderr == pytest.approx(np.sqrt(((scores - scores.mean()) ** 2).sum() / 2 / 3))
    assert result.mean_return == pytest.approx(returns.mean())
    assert result.success_rate == pytest.approx(2 / 3)
    assert result.mean_time_to_goal == pytest.approx(first_hit.mean())
    np.testing.assert_array_equal(result.stay_returns, [300 - first_hit[0] + 1, 300 - first_hit[1] + 1, 0])
