"""The Diffusion Forcing agent: plans with guided sampling and acts in an ordinary Gymnasium loop.

``act(obs)`` plans from the current observation, executes the plan's own diffused actions (clipped to the action
range) and replans every ``replan_every`` tokens, the horizon shrinking to the episode's end (paper Section 4.2,
Appendix D). Observations are Gymnasium-Robotics dicts (``observation``, ``desired_goal``) or flat observations
with a separate goal, one or a batch.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from df_agent.checkpoints import save_atomically
from df_agent.diffusion import NoiseSchedule
from df_agent.guidance import GoalCost
from df_agent.model import CausalModel, ModelConfig, build_model
from df_agent.sampler import sample
from df_agent.schedules import make_schedule, to_noise_levels, validate_schedule, warm_start
from df_agent.tokens import Tokenizer
from df_agent.training import TrainConfig, Trainer, default_device, load_checkpoint

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


@dataclass(frozen=True)
class PlannerConfig:
    """How the agent plans: an immutable value. ``Agent.with_planner`` gives an agent with other settings,
    ``dataclasses.replace`` a config with other settings, and ``Agent.plan`` overrides a few of them per call."""

    ddim_steps: int = 20
    """denoising steps per token (the paper uses 50)"""
    schedule: str = "pyramid"
    """name of the scheduling matrix (which token is denoised how far at each sampling row; not the noise
    schedule, which is the model's, ``Agent.noise_schedule``): pyramid, full_sequence, autoregressive or
    stabilized_autoregressive (``df_agent.schedules``)"""
    uncertainty_scale: float = 1.0
    """pyramid only: extra denoising steps by which each token lags the one before it"""
    guidance_scale: float = 1.0
    """step size of the goal guidance (0: unguided). Higher reaches the goal sooner until episodes start to
    fail (scripts/df_maze2d.py picks it per maze: 4 on umaze, 3 on medium and large, toward data-graph subgoals)"""
    mcg_samples: int = 4
    """futures averaged by Monte Carlo Guidance (1: plain guidance)"""
    min_guidance_weight: float = 0.0
    """skip the guidance gradient on sampling rows whose largest guidance weight is below this fraction of the
    plan's largest (0: guide every row; ``df_agent.sampler.sample``). The first rows down from pure noise carry
    almost no weight, and each guided row costs a forward and backward pass"""
    stay_velocity_weight: float = 0.0
    """goal-state guidance: weight of the speed of planned steps near the goal (0: goal distance only). With it
    the plan comes to rest at the goal instead of passing through it (``df_agent.guidance.goal_state_cost``)"""
    stay_action_weight: float = 0.0
    """goal-state guidance: weight of the force of planned steps near the goal"""
    stay_radius: float = 1.0
    """goal-state guidance: distance scale of the gate exp(-(d / radius)^2) that turns the stay terms on"""
    stay_near_goal_only: bool = False
    """apply the stay terms only to plans that start within ``stay_start_radius`` of the goal, so that they never
    slow the way there"""
    stay_start_radius: float | None = None
    """with ``stay_near_goal_only``, the distance to the goal within which a plan's start turns the stay terms on
    (None: ``near_goal_radius``). The goal's own radius (0.5 on maze2d) asks only a point that has arrived to stop;
    a wider one also brakes a point on its way in, short of the goal"""
    start_weight: float = 0.0
    """weight of the pull of each plan's first predicted observation toward the observation it starts at
    (``df_agent.guidance.start_cost``; 0: off). The goal pull alone can move a plan's first steps toward the goal,
    so the plan starts where the point is not, and its actions overshoot the goal"""
    route_weight: float = 0.0
    """weight of the pull of every planned step toward a route to the goal, passed to ``act`` / ``plan`` as
    ``route`` (``df_agent.guidance.route_distance_cost``; 0: off). With ``df_agent.subgoals.SubgoalPolicy(...,
    route=True)`` the route is the training data's own way toward the subgoal, which keeps a plan in the corridor
    where a straight pull toward the subgoal would cut through a wall"""
    guide_implied_positions: bool = False
    """measure the goal cost on the positions the plan's actions lead to, each step adding ``action_step`` times the
    action from the point's position (``df_agent.guidance.implied_positions``, walls ignored), instead of on the
    model's predicted positions. Guidance can move the predicted positions to the goal while the executed actions
    stay on the data's course; this pulls the actions themselves. For points moved kinematically (OGBench), and for
    the last stretch to a goal (``near_goal_guide_implied_positions``), where no wall lies between"""
    action_step: float | None = None
    """displacement per unit of action in one control step, for ``guide_implied_positions``
    (``df_agent.guidance.fit_action_step`` on the training data; OGBench's pointmaze: 0.2)"""
    near_goal_guidance_scale: float | None = None
    """guidance scale for plans that start within ``near_goal_radius`` of the goal (None: ``guidance_scale``).
    Strong guidance far from the goal can pull a plan through walls, near it there is no wall to cross: a
    stronger pull there keeps the point at the goal without risking the way there"""
    near_goal_radius: float = 1.0
    """distance to the goal within which ``near_goal_guidance_scale`` applies"""
    guide_actions_only: bool = False
    """apply the guidance step to the tokens' action slots only: the predicted observations then follow the
    guided actions through the model instead of being moved by the gradient themselves"""
    near_goal_condition_distance: float | None = None
    """a goal-conditioned model's goal *input* for plans that start within ``near_goal_radius`` of the goal: the
    point on the ray from the point through the goal, this far from the point (None: the goal itself). The guidance
    still pulls toward the goal. Trained on data whose goals are redrawn on arrival, the model has rarely started
    beside its goal input, and there its estimate of the point's own motion is off (docs/diffusion_forcing.md)"""
    near_goal_warm_start_level: float | None = None
    """``warm_start_level`` for plans that start within ``near_goal_radius`` of the goal (None: as far from it): each
    near-goal replan starts from the previous plan, so consecutive plans near the goal agree, while the way there
    keeps its own setting"""
    near_goal_start_weight: float | None = None
    """``start_weight`` for plans that start within ``near_goal_radius`` of the goal (None: as far from it)"""
    near_goal_guide_actions_only: bool | None = None
    """``guide_actions_only`` for plans that start within ``near_goal_radius`` of the goal (None: as far from it)"""
    near_goal_guide_implied_positions: bool | None = None
    """``guide_implied_positions`` for plans that start within ``near_goal_radius`` of the goal (None: as far from
    it)"""
    horizon_tokens: int | None = 30
    """longest plan in tokens (None: to the episode's end, as in the paper; 30 scored better on maze2d-large)"""
    replan_every: int = 1
    """tokens executed between two plans"""
    execute_steps: int | None = None
    """control steps executed between two plans, if fewer than ``replan_every`` tokens (None: whole tokens).
    Shorter open-loop stretches correct drift sooner, at the cost of more plans"""
    near_goal_execute_steps: int | None = None
    """control steps executed between two plans for a point within ``near_goal_radius`` of the goal (None: as far
    from it). The data never stays at a goal, so a plan's open-loop actions near it drift; replanning after fewer
    steps there closes the loop with the planner's own actions, only where it matters"""
    near_goal_horizon_tokens: int | None = None
    """plan length in tokens for a point within ``near_goal_radius`` of the goal (None: ``horizon_tokens``). Short
    plans there are cheap, which pays for replanning them often"""
    near_goal_schedule: str | None = None
    """scheduling matrix for plans that start within ``near_goal_radius`` of the goal (None: ``schedule``), e.g.
    full_sequence on the way and the pyramid at the goal"""
    near_goal_mcg_samples: int | None = None
    """Monte Carlo Guidance futures for plans that start within ``near_goal_radius`` of the goal (None:
    ``mcg_samples``). Near the goal every future ends there, so there is little to average; 1 makes the frequent
    near-goal replans about half as expensive"""
    near_goal_ddim_steps: int | None = None
    """DDIM steps per token for plans that start within ``near_goal_radius`` of the goal (None: ``ddim_steps``).
    The near-goal plans are short and replanned every few steps; fewer denoising steps make each cheaper"""
    near_goal_min_guidance_weight: float | None = None
    """``min_guidance_weight`` for plans that start within ``near_goal_radius`` of the goal (None: as far from it).
    Near the goal there is no route left to choose, and the frequent near-goal replans are where acting spends its
    time"""
    shrink_horizon: bool = True
    """plan only to the episode's end (the paper). False keeps planning ``horizon_tokens`` ahead near the end too:
    the goal cost then still asks the plan to stay at the goal, instead of guiding only its last few tokens"""
    episode_length: int = 800
    """steps in an episode, for the shrinking horizon"""
    goal_hold_radius: float = 0.0
    """within this distance of the goal, hold it with a PD law instead of planning (0: off, pure DF). The data
    never stays at a goal, so a DF plan passes through it (paper, Appendix D.5); Diffuser's PD controller holds
    its last waypoint the same way. Off by default; scores with it on are reported separately."""
    warm_start_level: float = 0.0
    """warm start of each replan (0: off, every plan starts from pure noise). With f in (0, 1], ``act`` starts a
    new plan from the previous plan's clean tokens shifted by the steps executed since, noised to level round(f * K)
    (SDEdit-style), and skips the sampling rows above that level for them; tokens past the old plan's end start from
    pure noise. Lower f keeps more of the previous route (consecutive plans agree more), f = 1 re-noises fully"""
    stall_steps: int = 0
    """warm start's way out of a dead end (0: off): every ``stall_steps`` control steps the agent checks how far
    the point has moved; if less than ``stall_distance`` while it is farther than ``near_goal_radius`` from the goal,
    the next plan starts cold (from pure noise) instead of from the previous plan, so a route that leads nowhere
    is dropped rather than kept"""
    stall_distance: float = 0.5
    """net displacement over ``stall_steps`` below which the point counts as stalled"""
    history_tokens: int = 0
    """the latent summarises the past (paper, Section 3): each plan starts from the observation ``history_tokens``
    tokens back and carries the steps executed since as clean tokens (level 0) before the planned ones, so the model
    infers where the point is and how it moves from what it did, not from one observation alone (0: off, each plan
    starts from the current observation). Episodes younger than that plan without history"""
    ddim_eta: float = 0.0
    seed: int = 0


def goal_input_along_ray(points: np.ndarray, goals: np.ndarray, distance: float) -> np.ndarray:
    """(B, 2): the point ``distance`` from each point (B, 2) on its ray through its goal (B, 2), +x where the two
    coincide; ``PlannerConfig.near_goal_condition_distance`` conditions a goal-conditioned model on it."""
    offset = np.asarray(goals, dtype=np.float64) - np.asarray(points, dtype=np.float64)
    length = np.linalg.norm(offset, axis=-1, keepdims=True)
    direction = np.where(length > 1e-6, offset / np.maximum(length, 1e-6), np.array([1.0, 0.0]))
    return (np.asarray(points, dtype=np.float64) + distance * direction).astype(np.float32)


def _planner_from_saved(saved: dict, path) -> PlannerConfig:
    """A saved agent's planner settings as a ``PlannerConfig``: a field that no longer exists is dropped (with a
    warning when it was on, since the agent now plans without it)."""
    known = {f.name for f in fields(PlannerConfig)}
    gone = {name: value for name, value in saved.items() if name not in known}
    if any(gone.values()):
        warnings.warn(
            f"{path} was saved with planner settings this version no longer has: {gone}; it plans without them",
            stacklevel=3,
        )
    return PlannerConfig(**{name: value for name, value in saved.items() if name in known})


@dataclass
class Plan:
    actions: np.ndarray  # (B, H, action_dim), clipped to [-1, 1]
    positions: np.ndarray  # (B, H, 2) predicted (x, y) after each action
    observations: np.ndarray  # (B, H, obs_dim) predicted next observations
    level_history: np.ndarray  # (rows, T) noise level of each token after each sampling row
    tokens: np.ndarray  # (B, T, token_dim) normalized clean tokens
    row_positions: np.ndarray | None = None  # (rows, B, H, 2) predicted positions of each row's clean estimate


class Agent:
    """A trained Diffusion Forcing model with its tokenizer, noise schedule and planner settings (``planner``, a
    frozen ``PlannerConfig``: ``with_planner`` gives an agent with other settings)."""

    def __init__(
        self,
        model: CausalModel,
        tokenizer: Tokenizer,
        noise_schedule: NoiseSchedule,
        planner: PlannerConfig | None = None,
        prediction: str = "x0",
        device: torch.device | str | None = None,
    ):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.noise_schedule = noise_schedule.to(self.device)
        """the model's noise levels (``PlannerConfig.schedule`` names the scheduling matrix instead)"""
        self.planner = planner or PlannerConfig()
        self.prediction = prediction
        self.training: dict = {}
        """where the weights came from (steps, batch size, device), saved with the agent and copied into records"""
        if self.planner.history_tokens and tokenizer.layout.use_reward:
            raise ValueError("history_tokens needs a token layout without the reward slot (the agent sees no reward)")
        self.generator = torch.Generator(device=self.device).manual_seed(self.planner.seed)
        self.reset()

    def with_planner(
        self, planner: PlannerConfig | None = None, /, *, keep_random_state: bool = False, **overrides
    ) -> Agent:
        """An agent that plans with other settings: ``planner`` (default: this agent's) with the fields given by
        keyword replaced, e.g. ``agent.with_planner(episode_length=600)``; this agent stays as it is.

        The new agent shares this agent's model, tokenizer and noise schedule (no copy of the weights), carries its
        provenance (``training``) and starts with no plans. Its generator is seeded from the new settings' ``seed``,
        as a newly built agent's is; with ``keep_random_state`` it starts where this agent's generator stands
        instead, so that it draws what this agent would have drawn next (one agent evaluated task after task)."""
        config = replace(self.planner if planner is None else planner, **overrides)
        agent = type(self)(self.model, self.tokenizer, self.noise_schedule, config, self.prediction, self.device)
        agent.training = dict(self.training)
        if keep_random_state:
            agent.generator.set_state(self.generator.get_state())
        return agent

    # --- construction and persistence ---
    @classmethod
    def from_trainer(cls, trainer: Trainer, planner: PlannerConfig | None = None) -> Agent:
        agent = cls(
            trainer.sampling_model,
            trainer.tokenizer,
            trainer.schedule,
            planner,
            trainer.config.prediction,
            trainer.device,
        )
        agent.training = training_summary(
            trainer.step, trainer.config.batch_size, trainer.device, trainer.train_seconds / 60
        )
        return agent

    def save(self, path: str | os.PathLike) -> Path:
        """Everything needed to rebuild the agent alone (weights, tokenizer statistics, configs), atomically."""
        state = {
            "version": 1,
            "kind": "agent",
            "model_config": self.model.config.to_dict(),
            "model": self.model.state_dict(),
            "tokenizer": self.tokenizer.state_dict(),
            "noise": {"num_levels": self.noise_schedule.num_levels, "kind": self.noise_schedule.kind},
            "prediction": self.prediction,
            "planner": asdict(self.planner),
            "training": self.training,
        }
        return save_atomically(state, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None, **planner_overrides) -> Agent:
        """Load an agent saved by ``save`` or a training checkpoint (which plans with its EMA weights if any)."""
        state = load_checkpoint(path, device)
        model = build_model(ModelConfig(**state["model_config"]))
        tokenizer = Tokenizer.from_state_dict(state["tokenizer"])
        if state.get("kind") == "agent":
            model.load_state_dict(state["model"])
            noise_schedule = NoiseSchedule(state["noise"]["num_levels"], state["noise"]["kind"])
            planner = _planner_from_saved(state["planner"], path)  # fields saved before a field existed: its default
            prediction = state["prediction"]
            training = state.get("training", {})  # agents saved before provenance was kept have none
        else:  # a Trainer checkpoint
            train = TrainConfig(**state["train_config"])
            model.load_state_dict(state["ema_model"] if state.get("ema_model") else state["model"])
            noise_schedule = NoiseSchedule(train.num_levels, train.noise_schedule)
            planner = PlannerConfig()
            prediction = train.prediction
            seconds = state.get("train_seconds")
            training = training_summary(
                state["step"], train.batch_size, None, None if seconds is None else seconds / 60
            )
        planner = replace(planner, **planner_overrides)
        agent = cls(model, tokenizer, noise_schedule, planner, prediction, device)
        agent.training = training
        return agent

    @classmethod
    def from_pretrained(
        cls, env_id: str = "maze2d-large", device: torch.device | str | None = None, **planner_overrides
    ) -> Agent:
        """The agent shipped with the package for a maze2d task (``maze2d-umaze``, ``-medium``, ``-large``; the
        multi-goal ids map to the same agent), trained by ``scripts/df_maze2d.py``'s defaults; its episode length is
        set from the task. Planner settings can be overridden by keyword, as in ``load``."""
        import envs

        task = envs.get_task(env_id)  # a clear error for an unknown id
        path = PRETRAINED_DIR / f"maze2d-{task.maze}.pt"
        remake = f"python scripts/df_maze2d.py --env maze2d-{task.maze}"
        if not path.is_file():
            raise FileNotFoundError(
                f"no pretrained agent for maze2d-{task.maze} at {path}; train one with `{remake}` and load its "
                "runs/<run>/agent.pt with Agent.load"
            )
        try:
            agent = cls.load(path, device=device, **{"episode_length": task.max_episode_steps, **planner_overrides})
        except (ValueError, TypeError, KeyError, RuntimeError) as error:
            raise ValueError(
                f"the pretrained agent {path} does not fit this version of df-agent ({error}); re-create it with "
                f"`{remake}` and copy runs/<run>/agent.pt to {path}"
            ) from error
        return agent

    @classmethod
    def for_task(
        cls, checkpoint: str | os.PathLike, env_id: str, device: torch.device | str | None = None, **planner_overrides
    ) -> Agent:
        """The agent a script evaluates on a task: ``checkpoint`` is a path (an agent or a training checkpoint) or
        ``"pretrained"`` (the agent shipped for the task's maze); the episode length comes from the task. Planner
        settings can be overridden by keyword, as in ``load``."""
        if str(checkpoint) == "pretrained":
            return cls.from_pretrained(env_id, device=device, **planner_overrides)
        import envs

        overrides = {"episode_length": envs.get_task(env_id).max_episode_steps, **planner_overrides}
        return cls.load(checkpoint, device=device, **overrides)

    # --- episode state ---
    def reset(self, num_envs: int | None = None) -> None:
        """Forget plans and step counts (call at each episode start; the shared evaluation does). ``act`` sizes the
        per-env state to its batch itself; ``num_envs`` only does it ahead."""
        n = num_envs or 0
        action_dim = self.tokenizer.layout.action_dim
        self._queues = [np.zeros((0, action_dim), np.float32) for _ in range(n)]  # planned actions not yet executed
        self._elapsed = np.zeros(n, dtype=np.int64)  # per env: steps since its episode started
        self._last_tokens: list[np.ndarray | None] = [None] * n  # per env: the last plan's clean tokens (T, token_dim)
        self._since_plan = np.zeros(n, dtype=np.int64)  # per env: steps executed since that plan
        self._last_origin = np.zeros((n, self.tokenizer.layout.obs_dim), np.float32)  # per env: that plan's start
        self._anchor_xy = np.zeros((n, 2))  # per env: position at the last stall check
        self._anchor_elapsed = np.full(n, -1, dtype=np.int64)  # per env: its step count then (-1: not yet set)
        self._stalled = np.zeros(n, dtype=bool)  # per env: the next plan starts cold
        steps = self.planner.history_tokens * self.tokenizer.layout.frame_stack  # kept for the plans' history
        self._trail_obs = [deque(maxlen=steps + 1) for _ in range(n)]  # per env: its latest observations
        self._trail_actions = [deque(maxlen=steps) for _ in range(n)]  # and the actions taken from them

    def _forget(self, env: int) -> None:
        """A new episode in one env: no plan, a fresh clock, nothing to warm-start from."""
        self._queues[env] = self._queues[env][:0]
        self._elapsed[env] = 0
        self._last_tokens[env] = None
        self._since_plan[env] = 0
        self._anchor_elapsed[env] = -1
        self._stalled[env] = False
        self._trail_obs[env].clear()
        self._trail_actions[env].clear()

    def _parse(self, obs, goal) -> tuple[np.ndarray, np.ndarray, bool]:
        obs_dim = self.tokenizer.layout.obs_dim
        if isinstance(obs, dict):
            if "observation" not in obs:
                raise ValueError("dict observations need an 'observation' key (Gymnasium-Robotics layout)")
            if goal is None:
                goal = obs.get("desired_goal")
            obs = obs["observation"]
        if goal is None:
            raise ValueError("no goal: pass a dict observation with 'desired_goal' or goal=(x, y)")
        obs = np.asarray(obs, dtype=np.float32)
        goal = np.asarray(goal, dtype=np.float32)
        single = obs.ndim == 1
        obs, goal = np.atleast_2d(obs), np.atleast_2d(goal)
        if obs.ndim != 2 or obs.shape[1] != obs_dim:
            raise ValueError(f"observation must have shape ({obs_dim},) or (batch, {obs_dim}), got {obs.shape}")
        if goal.shape[1] != 2 or len(goal) not in (1, len(obs)):
            raise ValueError(f"goal must have shape (2,) or ({len(obs)}, 2), got {goal.shape}")
        if not (np.all(np.isfinite(obs)) and np.all(np.isfinite(goal))):
            raise ValueError("observation or goal contains NaN or infinity")
        return obs, np.broadcast_to(goal, (len(obs), 2)).copy(), single

    # --- planning ---
    def plan(
        self,
        obs,
        goal=None,
        horizon: int | None = None,
        schedule: str | np.ndarray | None = None,
        mcg_samples: int | None = None,
        guidance_scale: float | None = None,
        ddim_steps: int | None = None,
        min_guidance_weight: float | None = None,
        guide_actions_only: bool | None = None,
        start_weight: float | None = None,
        guide_implied_positions: bool | None = None,
        return_history: bool = False,
        warm_tokens: np.ndarray | None = None,
        warm_start_level: float | None = None,
        route: np.ndarray | None = None,
        history: np.ndarray | None = None,
        history_start: np.ndarray | None = None,
    ) -> Plan:
        """Plan ``horizon`` steps (rounded up to whole tokens) from observations toward goals.

        ``horizon``, ``schedule``, ``mcg_samples``, ``guidance_scale``, ``ddim_steps``, ``min_guidance_weight``,
        ``guide_actions_only``, ``start_weight``, ``guide_implied_positions`` and ``warm_start_level`` override the
        planner's settings for this call; None (the default) keeps the planner's. A horizon of None plans
        ``horizon_tokens`` tokens (None: to the episode's end); a guidance scale of 0 plans unguided.

        ``schedule`` is the name of a scheduling matrix (see ``df_agent.schedules``) or a matrix of denoising-step
        indices (rows, tokens) with entries in [0, ddim_steps], validated.

        ``warm_tokens`` (B, W, token_dim), normalized clean tokens (e.g. a previous plan's, shifted), warm-start the
        plan's first min(W, tokens) tokens at ``warm_start_level`` (a fraction of the noise scale K; 0: no warm
        start), see ``PlannerConfig.warm_start_level``. With relative positions they must be relative to ``obs``
        (``Tokenizer.reorigin`` moves a previous plan's tokens there; ``act`` does it).

        ``route`` (B, K, 2) or (K, 2): points every planned step is pulled toward (the nearest of them) with
        ``route_weight``, see ``PlannerConfig.route_weight``; needed when that weight is above 0, unused otherwise.

        ``history`` (B, k, token_dim), normalized clean tokens of the k * frame_stack steps that led to ``obs``
        (relative layouts: relative to ``history_start``), and ``history_start`` (B, obs_dim), the observation they
        start from: the model's initial state is made from ``history_start`` and the history enters the sequence at
        level 0, ahead of the planned tokens (see ``PlannerConfig.history_tokens``). The plan returned starts at
        ``obs`` as without history.
        """
        obs, goal, _ = self._parse(obs, goal)
        num_history = 0
        if history is not None:
            history = np.asarray(history, dtype=np.float32)
            token_dim = self.tokenizer.layout.token_dim
            if history.ndim != 3 or history.shape[0] != len(obs) or history.shape[2] != token_dim:
                raise ValueError(f"history must have shape ({len(obs)}, k, {token_dim}), got {history.shape}")
            history_start = np.asarray(history_start, dtype=np.float32)
            if history_start.shape != obs.shape:
                raise ValueError(f"history_start must have shape {obs.shape}, got {history_start.shape}")
            if self.planner.start_weight > 0 or (start_weight or 0) > 0:
                raise ValueError("start_weight pulls a plan's first step and is not supported with history")
            num_history = history.shape[1]
        origin = obs if num_history == 0 else history_start  # where the token sequence starts
        route_tensor = self._route(route, len(obs)) if self.planner.route_weight > 0 else None
        for name, value in (("horizon", horizon), ("ddim_steps", ddim_steps), ("mcg_samples", mcg_samples)):
            if value is not None and not value >= 1:
                raise ValueError(f"{name} must be at least 1 (None: the planner's), got {value}")
        overrides = {
            "schedule": schedule if isinstance(schedule, str) else None,  # a name; a matrix is used as given
            "mcg_samples": mcg_samples,
            "guidance_scale": guidance_scale,
            "ddim_steps": ddim_steps,
            "min_guidance_weight": min_guidance_weight,
            "guide_actions_only": guide_actions_only,
            "start_weight": start_weight,
            "guide_implied_positions": guide_implied_positions,
            "warm_start_level": warm_start_level,
        }
        p = replace(self.planner, **{name: value for name, value in overrides.items() if value is not None})
        if p.guide_implied_positions and p.action_step is None:
            raise ValueError(
                "guide_implied_positions needs the planner's action_step, the displacement per unit of action in one "
                "step (df_agent.guidance.fit_action_step on the training data; OGBench's pointmaze: 0.2)"
            )
        frame_stack = self.tokenizer.layout.frame_stack
        if horizon is None:
            horizon = (p.horizon_tokens or math.ceil(p.episode_length / frame_stack)) * frame_stack
        num_tokens = max(1, math.ceil(horizon / frame_stack))
        steps = p.ddim_steps
        if schedule is None or isinstance(schedule, str):
            kwargs = {"uncertainty_scale": p.uncertainty_scale} if p.schedule == "pyramid" else {}
            matrix = make_schedule(p.schedule, num_tokens, steps, **kwargs)
        else:
            matrix = validate_schedule(schedule, num_tokens, steps)
        levels = to_noise_levels(matrix, steps, self.noise_schedule.num_levels)
        warm_fraction = p.warm_start_level
        if not warm_fraction >= 0:
            raise ValueError(f"warm_start_level must be >= 0, got {warm_fraction}")
        token_dim = self.tokenizer.layout.token_dim
        # the tokens that start from given values (warm tokens, history) and where they are, (B, T, D) and (B, T)
        initial = np.zeros((len(obs), num_tokens, token_dim), dtype=np.float32)
        mask = np.zeros((len(obs), num_tokens), dtype=bool)
        if warm_tokens is not None and warm_fraction > 0:
            warm_tokens = np.asarray(warm_tokens, dtype=np.float32)
            if warm_tokens.ndim != 3 or warm_tokens.shape[0] != len(obs) or warm_tokens.shape[2] != token_dim:
                raise ValueError(f"warm_tokens must have shape ({len(obs)}, W, {token_dim}), got {warm_tokens.shape}")
            num_warm = min(warm_tokens.shape[1], num_tokens)
            if num_warm > 0:
                num_levels = self.noise_schedule.num_levels
                levels = warm_start(levels, num_warm, min(num_levels, int(round(warm_fraction * num_levels))))
                warm = warm_tokens[:, :num_warm]
                if num_history and self.tokenizer.layout.relative_positions:  # from obs to the sequence's start
                    warm = self.tokenizer.reorigin(warm, obs, history_start)
                initial[:, :num_warm] = warm
                mask[:, :num_warm] = True
        if num_history:  # the history's columns are clean from the first row on, ahead of the plan's
            levels = np.concatenate([np.zeros((len(levels), num_history), dtype=levels.dtype), levels], axis=1)
            initial = np.concatenate([history, initial], axis=1)
            mask = np.concatenate([np.ones((len(obs), num_history), dtype=bool), mask], axis=1)
        initial_tokens = initial_mask = None
        if mask.any():
            initial_tokens = torch.as_tensor(initial, device=self.device)
            initial_mask = torch.as_tensor(mask, device=self.device)
        scale = p.guidance_scale
        distance = np.linalg.norm(obs[:, :2] - goal, axis=-1)  # each plan's start to its goal
        near = distance <= p.near_goal_radius
        if p.near_goal_guidance_scale is not None:
            scale = np.where(near, p.near_goal_guidance_scale, scale).astype(np.float32)
        velocity_weight, action_weight = p.stay_velocity_weight, p.stay_action_weight
        if p.stay_near_goal_only:
            start_radius = p.near_goal_radius if p.stay_start_radius is None else p.stay_start_radius
            stays = distance <= start_radius
            velocity_weight = torch.as_tensor(np.where(stays, velocity_weight, 0.0), dtype=torch.float32)
            action_weight = torch.as_tensor(np.where(stays, action_weight, 0.0), dtype=torch.float32)
        device = self.device
        steps_ahead = torch.arange(num_tokens * frame_stack, device=device)
        step_mask = (steps_ahead < horizon).float()[None].expand(len(obs), -1)
        if num_history:  # the history is not guided
            step_mask = torch.cat([torch.zeros(len(obs), num_history * frame_stack, device=device), step_mask], dim=1)
        cost = None
        if np.any(np.asarray(scale) > 0):
            cost = GoalCost(
                self.tokenizer,
                torch.as_tensor(goal, device=device),
                step_mask,
                velocity_weight=velocity_weight,
                action_weight=action_weight,
                stay_radius=p.stay_radius,
                start=torch.as_tensor(obs, dtype=torch.float32, device=device) if p.start_weight > 0 else None,
                start_weight=p.start_weight,
                origin=torch.as_tensor(origin, dtype=torch.float32, device=device),
                route=route_tensor,
                route_weight=p.route_weight,
                implied_step=p.action_step if p.guide_implied_positions else None,
            )
        action_mask = torch.as_tensor(self.tokenizer.action_mask(), device=device) if p.guide_actions_only else None
        condition_goal = goal
        if p.near_goal_condition_distance is not None and self.tokenizer.layout.goal_dim and near.any():
            moved = goal_input_along_ray(obs[:, :2], goal, p.near_goal_condition_distance)
            condition_goal = np.where(near[:, None], moved, goal).astype(np.float32)
        with torch.no_grad():
            z0 = self.model.initial_latent(
                torch.as_tensor(self.tokenizer.condition(origin, condition_goal), device=device)
            )
        result = sample(
            self.model,
            self.noise_schedule,
            z0,
            levels,
            cost=cost,
            guidance_scale=scale,
            mcg_samples=p.mcg_samples,
            min_guidance_weight=p.min_guidance_weight,
            prediction=self.prediction,
            eta=p.ddim_eta,
            generator=self.generator,
            gradient_mask=action_mask,
            return_history=return_history,
            **({} if initial_tokens is None else {"initial_tokens": initial_tokens, "initial_mask": initial_mask}),
        )
        row_positions = None
        if result.history is not None:
            rows = torch.stack(result.history).cpu().numpy()[:, :, num_history:]
            origins = np.broadcast_to(origin, (len(rows), *origin.shape))
            row_positions = self.tokenizer.decode(rows, origins)["next_observations"][:, :, :horizon, :2]
        tokens = result.tokens.cpu().numpy()[:, num_history:]
        if num_history and self.tokenizer.layout.relative_positions:  # the plan's tokens, relative to obs
            tokens = self.tokenizer.reorigin(tokens, history_start, obs)
        decoded = self.tokenizer.decode(tokens, obs)
        next_obs = decoded["next_observations"][:, :horizon]
        return Plan(
            actions=np.clip(decoded["actions"][:, :horizon], -1.0, 1.0),
            positions=next_obs[..., :2],
            observations=next_obs,
            level_history=levels[:, num_history:],
            tokens=tokens,
            row_positions=row_positions,
        )

    def _route(self, route, batch: int) -> torch.Tensor:
        """``route`` checked and batched: (B, K, 2) float32 on the agent's device."""
        if route is None:
            raise ValueError("the planner's route_weight is above 0: pass route=(K, 2) or (B, K, 2) points")
        route = np.asarray(route, dtype=np.float32)
        if route.ndim == 2:
            route = np.broadcast_to(route, (batch, *route.shape))
        if route.ndim != 3 or route.shape[0] != batch or route.shape[2] != 2 or route.shape[1] == 0:
            raise ValueError(f"route must have shape (K, 2) or ({batch}, K, 2) with K >= 1, got {route.shape}")
        if not np.all(np.isfinite(route)):
            raise ValueError("route contains NaN or infinity")
        return torch.as_tensor(np.ascontiguousarray(route), device=self.device)

    # --- acting ---
    def act(self, obs, goal=None, route=None, active=None) -> np.ndarray:
        """The next action for one observation (returns (2,)) or a batch (returns (B, 2)). ``route``: see
        ``plan``; the route of the envs that replan at this step is used. ``active`` (B,) bool: the envs whose
        episode goes on (default: all); the others (episodes that ended while a batch runs on in lockstep) neither
        plan nor advance their clock, and get zero actions."""
        obs_arr, goal_arr, single = self._parse(obs, goal)
        batch = len(obs_arr)
        if len(self._queues) != batch:
            self.reset(batch)
        if active is None:
            active = np.ones(batch, dtype=bool)
        else:
            active = np.asarray(active)
            if active.shape != (batch,) or active.dtype != bool:
                raise ValueError(f"active must be a bool array of shape ({batch},), got {active.dtype} {active.shape}")
        distance = np.linalg.norm(obs_arr[:, :2] - goal_arr, axis=-1)  # per env, to its goal
        self._check_stall(obs_arr[:, :2], distance)
        keep = self.planner.history_tokens > 0
        if keep:
            for env in np.flatnonzero(active):
                self._trail_obs[env].append(obs_arr[env])
        holding = np.zeros(batch, dtype=bool)
        if self.planner.goal_hold_radius > 0:
            holding = active & (distance <= self.planner.goal_hold_radius)  # an ended env keeps its queue
            for env in np.flatnonzero(holding):  # drop the plan: once the point leaves the radius, plan afresh
                self._queues[env] = self._queues[env][:0]
                self._last_tokens[env] = None  # the point moves off the plan: no warm start from it
        need = np.array([len(q) == 0 for q in self._queues]) & ~holding & active
        if need.any():
            routes = None
            if self.planner.route_weight > 0:
                routes = self._route(route, batch).cpu().numpy()
            self._replan(np.flatnonzero(need), obs_arr, goal_arr, distance, routes)
        hold = np.zeros_like(goal_arr)
        if holding.any():  # D4RL's PD law toward the goal (the expert's) for the points that hold it
            from envs.expert import pd_action

            velocity = obs_arr[:, 2:4] if obs_arr.shape[1] >= 4 else np.zeros_like(obs_arr[:, :2])  # (x, y): at rest
            hold = pd_action(goal_arr, obs_arr[:, :2], velocity).astype(np.float32)
        actions = np.zeros_like(goal_arr, dtype=np.float32)
        for i in np.flatnonzero(active):
            actions[i] = hold[i] if holding[i] else self._queues[i][0]
            self._queues[i] = self._queues[i][1:]
            if keep:
                self._trail_actions[i].append(actions[i].copy())
        self._elapsed += active
        self._since_plan += active
        return actions[0] if single else actions

    def _check_stall(self, xy: np.ndarray, distance: np.ndarray) -> None:
        """Every ``stall_steps`` steps, mark the envs whose point moved less than ``stall_distance`` (away from the
        goal) since the last check: their next plan starts cold."""
        p = self.planner
        if p.stall_steps <= 0 or p.warm_start_level <= 0:
            return
        fresh = self._anchor_elapsed < 0
        self._anchor_xy[fresh], self._anchor_elapsed[fresh] = xy[fresh], self._elapsed[fresh]
        due = self._elapsed - self._anchor_elapsed >= p.stall_steps
        moved = np.linalg.norm(xy - self._anchor_xy, axis=-1)
        far = distance > p.near_goal_radius
        self._stalled |= due & (moved < p.stall_distance) & far
        self._anchor_xy[due], self._anchor_elapsed[due] = xy[due], self._elapsed[due]

    def _replan(
        self, envs: np.ndarray, obs: np.ndarray, goal: np.ndarray, distance: np.ndarray, routes: np.ndarray | None
    ) -> None:
        """Plan for the envs whose queue ran out, together, to the furthest of their episode ends (envs near the
        goal with ``near_goal_horizon_tokens``, if set, and envs that warm-start alike in their own batches)."""
        p = self.planner
        frame_stack = self.tokenizer.layout.frame_stack
        remaining = int(max(1, (p.episode_length - self._elapsed[envs]).max()))
        if p.horizon_tokens is None:
            horizon = remaining
        elif p.shrink_horizon:
            horizon = min(remaining, p.horizon_tokens * frame_stack)
        else:
            horizon = p.horizon_tokens * frame_stack
        execute = min(horizon, p.replan_every * frame_stack)
        if p.execute_steps is not None:
            execute = max(1, min(execute, p.execute_steps))
        horizons = np.full(len(obs), horizon, dtype=np.int64)
        execute = np.full(len(obs), execute, dtype=np.int64)
        near = distance <= p.near_goal_radius
        if p.near_goal_horizon_tokens is not None:
            horizons[near] = min(horizon, p.near_goal_horizon_tokens * frame_stack)
            execute = np.minimum(execute, horizons)
        if p.near_goal_execute_steps is not None:
            execute[near] = np.clip(p.near_goal_execute_steps, 1, execute[near])
        # one sampler call per group of envs that share a plan length, a number of warm tokens (the tokens of their
        # last plan left after the steps executed since; none: cold) and the near-goal settings: a batch shares them
        warm = {env: None for env in envs}
        near_warm = p.near_goal_warm_start_level
        if p.warm_start_level > 0 or (near_warm or 0) > 0:
            for env in envs:
                level = near_warm if near[env] and near_warm is not None else p.warm_start_level
                if level > 0 and not self._stalled[env]:
                    warm[env] = self._shifted_tokens(env, math.ceil(horizons[env] / frame_stack), obs[env])
            self._stalled[envs] = False
        near_overrides = {
            name: value
            for name, value in (
                ("schedule", p.near_goal_schedule),
                ("mcg_samples", p.near_goal_mcg_samples),
                ("ddim_steps", p.near_goal_ddim_steps),
                ("min_guidance_weight", p.near_goal_min_guidance_weight),
                ("guide_actions_only", p.near_goal_guide_actions_only),
                ("start_weight", p.near_goal_start_weight),
                ("guide_implied_positions", p.near_goal_guide_implied_positions),
                ("warm_start_level", p.near_goal_warm_start_level),
            )
            if value is not None
        }
        history = {env: self._history(env) for env in envs}
        groups: dict[tuple[int, int, bool, bool], list[int]] = {}
        for env in envs:
            apart = bool(near[env]) and bool(near_overrides)  # near envs plan with their own matrix, MCG or steps
            key = (int(horizons[env]), 0 if warm[env] is None else len(warm[env]), apart, history[env] is not None)
            groups.setdefault(key, []).append(env)
        for (length, num_warm, is_near, with_history), members in groups.items():
            members = np.asarray(members)
            kwargs = {"warm_tokens": np.stack([warm[env] for env in members])} if num_warm else {}
            if with_history:
                kwargs["history"] = np.stack([history[env][0] for env in members])
                kwargs["history_start"] = np.stack([history[env][1] for env in members])
            if is_near:
                kwargs.update(near_overrides)
            if routes is not None:
                kwargs["route"] = routes[members]
            plan = self.plan(obs[members], goal[members], horizon=length, **kwargs)
            self._store(members, plan, execute, obs[members])

    def _history(self, env: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The env's last ``history_tokens`` tokens of executed steps (normalized clean tokens, relative layouts:
        relative to their start) and the observation they start from; None while the episode is younger."""
        steps = self.planner.history_tokens * self.tokenizer.layout.frame_stack
        trail_obs, trail_actions = self._trail_obs[env], self._trail_actions[env]
        if steps == 0 or len(trail_actions) < steps or len(trail_obs) < steps + 1:
            return None
        start, *later = trail_obs  # the deques hold exactly the history's steps once full
        actions = np.stack(trail_actions)[None]
        next_obs = np.stack(later)[None]
        tokens = self.tokenizer.encode(actions, next_obs, origin=start[None])[0]
        return tokens, start

    def _store(self, envs: np.ndarray, plan: Plan, execute: np.ndarray, origins: np.ndarray) -> None:
        """Queue each env's first ``execute[env]`` planned actions and keep the plan (and the observation it started
        from) for the next warm start."""
        for i, env in enumerate(envs):
            self._queues[env] = plan.actions[i, : execute[env]]
            self._last_tokens[env] = np.array(plan.tokens[i])
            self._last_origin[env] = origins[i]
            self._since_plan[env] = 0

    def _shifted_tokens(self, env: int, num_tokens: int, obs: np.ndarray) -> np.ndarray | None:
        """The env's last plan shifted by the steps executed since: its whole tokens left, at most ``num_tokens``
        (a partial token at the end, after a shift by part of a token, is dropped); None without a last plan. With
        relative positions its positions are moved from that plan's origin to ``obs``, the new plan's."""
        tokens = self._last_tokens[env]
        if tokens is None:
            return None
        layout = self.tokenizer.layout
        if layout.relative_positions:
            tokens = self.tokenizer.reorigin(tokens, self._last_origin[env], obs)
        steps = tokens.reshape(-1, layout.step_dim)[self._since_plan[env] :]  # steps are normalized alike
        left = min(len(steps) // layout.frame_stack, num_tokens)
        if left == 0:
            return None
        return steps[: left * layout.frame_stack].reshape(left, layout.token_dim)

    def __call__(self, obs) -> np.ndarray:
        """Batch policy for ``envs.evaluation.evaluate``."""
        return self.act(obs)

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        """Stable-Baselines3-style ``predict`` (for ``evaluate_policy`` and VecEnvs): returns (actions, state)."""
        if episode_start is not None and np.any(episode_start):
            starts = np.atleast_1d(np.asarray(episode_start, dtype=bool))
            if len(starts) == len(self._queues):
                for env in np.flatnonzero(starts):
                    self._forget(env)
            else:
                self.reset()
        return self.act(observation), state


def training_summary(
    steps: int, batch_size: int, device: torch.device | str | None, minutes: float | None = None
) -> dict:
    """The provenance an agent carries: gradient steps, windows per step (per process), the device's name and,
    when known, the minutes of wall time the training took (``Trainer.train_seconds``)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = device.type if device is not None else "unknown"
    summary = {"steps": int(steps), "batch_size": int(batch_size), "device": name}
    if minutes is not None:
        summary["minutes"] = round(float(minutes), 2)
    return summary
