"""The measured best planner and subgoal settings per maze2d maze: what the shipped agents plan with and what
``scripts/df_maze2d.py`` defaults to. Each was chosen on held-out episodes (seeds >= 100); the comments give the
probes (their records are in ``results/``, the tables in RESULTS.md).

``maze_planner(maze, **overrides)`` is a maze's ``PlannerConfig``; ``MAZE_SUBGOALS[maze]`` its data-graph subgoals,
which ``SubgoalPolicy.for_task`` applies.
"""

from __future__ import annotations

from dataclasses import dataclass

# The planner's defaults per maze (PlannerConfig fields; on df_maze2d.py's command line a value replaces them), each
# chosen on held-out episodes (seeds >= 100, RESULTS.md):
# - guidance_scale: umaze 6 since 2026-12-07 (results/probes_umaze_screen.jsonl; held-out, paired against 4, single /
#   multi-goal): +2.4 +- 0.9 / +1.4 +- 0.8 on seeds 100-299, the best of a screen of six one-setting changes fixed
#   in advance (near-goal radius 1.5 +1.8 / +1.1, subgoals 2.5 ahead +1.0 / +0.0, near-goal radius 0.75 -0.3 /
#   -0.9, MCG 4 on the way +0.0 / -2.3, subgoals 1.5 ahead -2.2 / -1.5), then +3.2 +- 0.7 / +2.3 +- 0.9 on seeds
#   300-499, reaching the goal 4.3 / 2.4 steps sooner. A second screen from 6: 8 +2.3 +- 0.6 / +0.8 +- 0.7 (6 with
#   near-goal radius 1.5: +1.9 / +0.7) on seeds 100-299, then +1.2 +- 0.5 / +0.2 +- 1.1 on seeds 500-699, 1.7 / 0.0
#   steps sooner: umaze guides with 8. Each step was taken by a rule fixed before its probes. Before the subgoals,
#   4 reached the goal sooner on umaze; guided toward the goal itself, large failed to reach it in 37
#   of 100 test episodes at 4 and kept 1 (2: 137.2 against 141.5), and medium's goal-conditioned model needed 1 too.
#   Guided toward the data-graph subgoals (MAZE_SUBGOALS, below) a straight pull runs into fewer walls, and
#   medium and large pull with 3.
# - near_goal_guidance_scale on umaze: 64 since 2026-12-07, by a third screen (rule fixed in advance; against guidance
#   8's defaults, seeds 100-299, single / multi-goal): near-goal scale 64 +0.0 +- 0.1 / +3.2 +- 0.7, replanning every
#   2 steps near the goal -0.2 / +1.7, near-goal radius 1.5 +0.9 / +0.3, 8 near-goal futures -0.4 / +0.3, scale 256
#   -0.2 / -1.5, 5-token near-goal plans -0.5 / -5.3; 64 on seeds 700-899: -0.1 +- 0.1 / +3.6 +- 0.7, all of it in
#   staying (at guidance 4 on the way, 64 had scored 139.0 / 161.4 against 142.0 / 159.0).
# - near_goal_radius on umaze: 2.0 since 2026-12-07 (1.0, then 1.5 before), by three rounds of a fourth screen (rules
#   fixed in advance; against the defaults re-run at the same commit, single / multi-goal). Round 1: 1.5 +1.10 +- 0.50
#   / +1.16 +- 0.57 and 1.25 +0.41 / +0.43 on seeds 100-299; 1.5 on seeds 1100-1299: -0.05 +- 0.67 / +0.51 +- 0.50,
#   2.0 steps sooner to a multi-goal goal. It had been second in each earlier screen (+1.8 / +1.1, +1.9 / +0.7, +0.9 /
#   +0.3). A wider radius hands the point to the short, strongly guided plans before it reaches the U's corner, so it
#   turns toward a goal in the connecting cell instead of swinging wide into the outer wall (docs/diffusion_forcing.md).
#   Round 2, from 1.5: 2.0 +3.21 +- 0.53 / +1.10 +- 0.53, 1.75 +0.91 / -0.11, but at 2.0 nearly every plan is a
#   near-goal plan (a subgoal lies at most 2.0 ahead) and umaze acted at 84-87 control steps/s against 106-111 at 1.5:
#   below real time. Round 3 (seeds 100-299, against 1.5 with 4 near-goal futures): radius 2.0 with 2 near-goal
#   futures +2.45 +- 0.55 / +0.14 +- 0.64, with 1 future +1.58 / -0.38; 2.0 with 2 futures acted at 101 / 105 / 108
#   control steps/s (the defaults 120 / 125 / 124, alternating) and on seeds 1500-1699 scored +2.03 +- 0.50 / +0.11 +-
#   0.46, 2.7 / 0.3 steps sooner: umaze plans near its goal within 2.0, with 2 futures.
#   Medium and large keep 1.0: the same day, 1.5 on medium +4.64 +- 1.70 / +1.87 +- 1.13 on seeds 100-299 but -0.04 /
#   +0.19 on 300-499, and it acted at 98-105 control steps/s (one run under 100); on large -22.1 / -9.0 (86% / 94%
#   success, seeds 150-349: the pull crosses walls). Earlier, on older planners, large's 1.5 was within noise (below).
# - schedule, mcg_samples: on umaze the autoregressive matrix with plain guidance scored 129.6 +- 7.8 against the
#   pyramid's 125.2 +- 9.2 (MCG 4) and 115.3 +- 10.3 (MCG 1); on medium the pyramid scored higher than the
#   autoregressive matrix (65.4 against 51.5, MCG 1). With the near-goal plans, medium and large plan
#   full_sequence on the way and the pyramid near the goal (near_goal_schedule): large 141.5 (90% success, 362 steps
#   to the goal) against 115.7 (84%, 424) with the pyramid throughout, medium 126.6 against 119.2; the full-sequence
#   matrix reaches sooner, the pyramid stays better.
# - warm_start_level: on umaze 0.75 scored 130.0 / 90.4 (single / multi-goal) against 127.7 / 80.3 cold, on medium
#   77.2 (0.5: 76.3) against 73.7 cold. Large replans cold: with the near-goal plans keeping the point at the goal,
#   115.7 (84% success) against 96.8 (56%) warm-started at 0.5; warm start's gain there had been staying.
# - near_goal_execute_steps, near_goal_horizon_tokens: near the goal, plans of 5 tokens replanned every 3 steps: umaze
#   133.3 / 133.6 (single / multi-goal) against 119.0 / 94.3, medium 119.2 / 136.5 against 81.7 / 53.8, large 96.8
#   against 58.0 with near_goal_guidance_scale 4 (at 128 it lost the goal: 8.9; 2 / 8 / 16 scored 53.8 / 77.2 / 44.0).
# - near_goal_schedule on umaze: the pyramid near the goal (autoregressive on the way) scored 138.2 (100% success, 84
#   steps to the goal) against 133.3 (98%, 93) autoregressive throughout, at a third of the near-goal planning time;
#   full_sequence on the way scored 118.7 (94%).
# - near_goal_mcg_samples: as far from the goal. Plain guidance near the goal cost medium 27 points (99.7 against
#   126.6); 8 futures there instead of 4 scored within noise (medium 128.3, large 144.6 against 141.5) at more time.
# - horizon_tokens: umaze plans 10 tokens toward its subgoals (below). Before them: 20 tokens (200 steps) on the
#   way, as well as 30 on held-out episodes (138.5 / 149.3
#   single / multi-goal against 138.0 / 148.9 on the same seeds) at about half the planning time of its
#   autoregressive plans; 15 / 10 tokens scored 133.5 / 122.7 single-goal. Medium: 20 tokens scored 126.0 against
#   126.6. Large keeps 30. Replanning umaze every 2 tokens on the way (--replan-every 2, half the plans there)
#   scored 132.9 / 144.3 against 138.5 / 149.3, and the episodes ran only 1.2x faster (the near-goal replans
#   dominate): every token stays.
# - medium's goal-conditioned model (held-out, single / multi-goal): guidance 1 with cold replans, near-goal scale
#   4 / 6 / 8 / 16 / 64: 119.6 / 140.5 / 141.6 / 128.3 / 94.7 single-goal (the way there the same: 191-193 steps;
#   the scale decides the staying), 8 with near-goal radius 0.5: 139.1; guidance 2 with near-goal 16: 121.8, with the
#   unconditioned model's guidance 4 and warm start 0.75: 46.3 (74% success). Staying, at near-goal scale 8:
#   goal-state guidance near the goal (--stay-velocity-weight 1 / 4 --stay-near-goal-only) 105.6 / 49.6 single and
#   71.3 / 15.3 multi-goal (the point slowed before the goal: 222 / 335 steps), near-goal plans of 3 / 10 tokens
#   74.0 / 70.3 single-goal, against 141.6 / 155.8 with the defaults. The bullets above that name medium were
#   measured on the previous, unconditioned medium model.
# - large's goal-conditioned model, near-goal scale 2 / 4 / 8 (held-out, single / multi-goal): 169.0 / 172.1 / 173.6
#   and 155.0 / 174.4 / 176.6, within noise of each other (s.e. about 10; 4 measured on another machine), so 4 stays.
#   Re-measured on the Intel machine: 172.0 / 164.0. Near-goal radius 1.5 / 2: 180.0 / 170.1 (paired +8.0 +- 8.6 /
#   +6.0 +- 7.7, within noise, not adopted) and 119.6 / 174.7 (62% success single-goal: the strong pull 2 away crosses
#   walls). --start-weight 4 / 16 (the plan's first step pulled toward the current observation): 173.3 / 161.9 and
#   166.5 / 127.6, so start_weight stays 0 (results/planner_grid_start.jsonl).
# Settings every maze shares: 10 DDIM steps; near the goal, short pyramid plans replanned every 3 steps, MCG as
# far from it.
_SHARED_DEFAULTS = dict(
    ddim_steps=10,  # every maze; PlannerConfig's own default is 20
    near_goal_schedule="pyramid",
    near_goal_execute_steps=3,
    near_goal_horizon_tokens=5,
    near_goal_mcg_samples=None,
    near_goal_ddim_steps=None,
    near_goal_min_guidance_weight=None,
)
MAZE_PLANNER_DEFAULTS = {
    "umaze": dict(
        horizon_tokens=10,  # 20 before the data-graph subgoals (docs/diffusion_forcing.md)
        guidance_scale=8.0,  # 4 before 2026-12-07's screens (below)
        schedule="pyramid",  # autoregressive before the 4-token near-goal plans (below)
        mcg_samples=1,
        warm_start_level=0.75,
        min_guidance_weight=0.0,  # 0.2 reached the goal later (below)
        near_goal_guidance_scale=64.0,  # 128 before the staying screen of 2026-12-07 (below)
        near_goal_radius=2.0,  # 1.0 before the corner screens of 2026-12-07, then 1.5 (above)
        # 4 near-goal futures before the third corner screen (above), which traded two of them for radius 2.0
        **{**_SHARED_DEFAULTS, "near_goal_horizon_tokens": 4, "near_goal_mcg_samples": 2},  # below
    ),
    "medium": dict(
        horizon_tokens=30,
        guidance_scale=3.0,  # toward the data-graph subgoals; 1 before them
        schedule="full_sequence",
        mcg_samples=4,
        warm_start_level=0.0,
        min_guidance_weight=0.0,
        near_goal_guidance_scale=8.0,
        near_goal_radius=1.0,
        **{**_SHARED_DEFAULTS, "near_goal_min_guidance_weight": 0.2},  # for act speed (below)
    ),
    "large": dict(
        horizon_tokens=30,
        guidance_scale=3.0,  # toward the data-graph subgoals; 1 before them (docs/diffusion_forcing.md)
        schedule="full_sequence",
        mcg_samples=4,
        warm_start_level=0.0,
        min_guidance_weight=0.0,
        near_goal_guidance_scale=8.0,
        near_goal_radius=1.0,
        **{**_SHARED_DEFAULTS, "near_goal_min_guidance_weight": 0.2},  # for act speed, as medium (below)
    ),
}


# Umaze's schedule and futures at its 4-token near-goal plans and line-of-sight subgoals (held-out, 200 episodes per
# task, seeds 100-299, paired, single / multi-goal): 4 MCG futures near the goal +3.9 +- 0.7 / +4.0 +- 1.1 (all of it
# staying) but acting at 74 steps/s; with the pyramid instead of the autoregressive matrix on the way, whose plans
# take 19 rows instead of 100, +2.3 +- 0.9 / +2.6 +- 1.3 at 99 steps/s against the autoregressive plain-guidance
# planner's 100 (three 1,500-step runs each, results/speed.jsonl); full_sequence on the way -7.3 / -2.2 (it reaches
# later).
# Near-goal plans of 4 tokens instead of 5 on umaze (results/probes_near_goal.jsonl; held-out, paired, single /
# multi-goal): -2.2 +- 0.9 / +5.2 +- 1.5 (seeds 100-299, line-of-sight subgoals): the multi-goal task gains more than
# the single-goal one loses, and the near-goal plans are shorter. On medium the two cancel: -4.7 +- 1.0 / +4.7 +-
# 1.2 over seeds 100-399 (sum +0.1), so medium keeps 5 (its 4-token test episodes are recorded apart). Large keeps 5:
# 4 tokens scored 207.1 / 188.3 against 207.9 / 189.7 (seeds 150-349; large-multi 193.3 against 196.0 on 100-149).
# Three tokens lost single-goal medium's goal (96.8 against 150.8).
# min_guidance_weight, near_goal_min_guidance_weight (results/probes_near_goal.jsonl; held-out, paired, single /
# multi-goal): the first rows down from pure noise carry under a fifth of the peak guidance weight, and skipping their
# gradient let medium act 1.4x faster near the goal (results/speed.jsonl). Medium, 0.2 near the goal only: +0.4 +-
# 1.1 / +0.5 +- 1.1 over seeds 200-399. On every row: +0.5 +- 1.0 / -0.5 +- 1.1 on the same seeds, but 8 steps later
# to the goal on the test episodes (docs/diffusion_forcing.md), so the way there, where the route is chosen, keeps
# every row. Umaze on every row -2.6 +- 0.9 / -1.6 +- 1.1 with 3.6 / 1.6 steps more to the goal, near the goal only
# +0.0 +- 0.1 / -1.1 +- 0.6 (seeds 100-299): umaze acts in real time already and keeps 0. Large on every row -1.7 +-
# 1.7 / +0.7 +- 1.8 with 5 steps more single-goal (seeds 150-349); near the goal only (2026-12-07, the same seeds,
# paired against the defaults re-run at the same commit, a rule fixed before the probe): +0.5 +- 0.3 / +0.5 +- 1.5,
# 100% success and the same time to the goal both ways, and in three back-to-back runs of 1,200 steps large acted near
# the goal at 72 / 102 / 113 control steps/s against 43 / 75 / 76 (results/speed.jsonl): adopted.
@dataclass(frozen=True)
class SubgoalSettings:
    """Where a maze's agent is guided: toward the point ``distance`` ahead on the data's shortest way to the goal
    (``TransitionGraph.subgoals``), on a graph of ``cell``-sized cells, in line of sight when ``line_of_sight``."""

    distance: float
    line_of_sight: bool = False
    cell: float = 0.25


# Subgoals on the data's own transition graph (df_agent.subgoals), this far ahead on its shortest way to the goal
# (distance).
# Chosen on held-out seeds 100-199 (results/probes_subgoals.jsonl; docs/diffusion_forcing.md has every probe), paired
# against the previous defaults, single / multi-goal: large, subgoals 2.0 ahead with guidance 3 and near-goal scale 8,
# +5.0 +- 1.9 / +9.7 +- 3.1 over the same subgoals at guidance 1 (which gained about 24 / 20 on seeds 100-149);
# umaze, subgoals 2.0 ahead with 10-token plans, +6.5 +- 2.3 / +2.3 +- 2.5; medium, subgoals 3.0 ahead with guidance 3,
# +3.7 +- 2.0 / -0.1 +- 1.7, 10 / 6 steps sooner to the goal. Subgoals alone, at each maze's old planner, did not help
# umaze or medium.
# Line of sight (TransitionGraph.subgoals(line_of_sight=True)) on umaze: over 500 held-out umaze-multi
# episodes (seeds 200-699) no episode failed against 4 at the plain subgoals, and 1 took over 150 steps to the goal
# against 12 (points pinned against the U's middle wall by a subgoal behind it), at a score within noise (paired
# +0.4 +- 1.1, reach-then-stay +1.5 +- 0.7); seeds 100-199 +0.8 +- 1.5 / +2.0 +- 1.5 (single / multi-goal). On medium
# and large it was within noise (-1.3 +- 1.9 / +3.1 over seeds 100-199; large 197.6 against 197.0), so they keep the
# plain subgoals.
MAZE_SUBGOALS = {
    "umaze": SubgoalSettings(distance=2.0, line_of_sight=True),
    "medium": SubgoalSettings(distance=3.0),
    "large": SubgoalSettings(distance=2.0),
}


def maze_planner(maze: str, **overrides):
    """The maze's planner (``PlannerConfig``) with the fields given by keyword replaced (e.g. ``episode_length``)."""
    from df_agent.agent import PlannerConfig

    if maze not in MAZE_PLANNER_DEFAULTS:
        raise ValueError(f"unknown maze {maze!r}; choose one of {sorted(MAZE_PLANNER_DEFAULTS)}")
    return PlannerConfig(**{**MAZE_PLANNER_DEFAULTS[maze], **overrides})
