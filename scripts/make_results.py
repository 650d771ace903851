"""RESULTS.md and its figures, generated from the JSON records under results/ (never written by hand).

    python scripts/make_results.py                       # results/*.jsonl -> RESULTS.md, results/figures/*.png

Each record is one evaluation (``envs.records``): a method on a task over the test episodes, with its settings,
command, commit, date and machine. Records are grouped by their ``table`` field (records without one go to
"Other evaluations"); within a table, one row per record, in file order. Records whose episodes are not the 100
test episodes (seeds 0-99) are shown only in tables named as held-out probes.
"""

from __future__ import annotations

import glob
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from envs.records import read_records


@dataclass
class Args:
    records: str = "results/*.jsonl"
    """glob of the JSON-lines record files"""
    output: str = "RESULTS.md"
    """the Markdown file to write"""
    figures: str = "results/figures"
    """folder of the PNG figures (written beside RESULTS.md's links)"""


# Files whose tables come first in RESULTS.md: the headline, the other methods, the ablations; then the rest by name.
FILE_ORDER = {"df.jsonl": 0, "benchmark.jsonl": 1, "ablations.jsonl": 2}


def load_all(pattern: str) -> list[dict]:
    records = []
    for path in sorted(glob.glob(pattern), key=lambda p: (FILE_ORDER.get(Path(p).name, len(FILE_ORDER)), p)):
        for record in read_records(path):
            record.setdefault("source", Path(path).name)
            records.append(record)
    return records


def _cell(value: float, stderr: float | None = None) -> str:
    return f"{value:.1f} ± {stderr:.1f}" if stderr is not None else f"{value:.1f}"


def describe_settings(record: dict) -> str:
    """The planner settings that distinguish DF rows, short."""
    s = record.get("settings", {})
    if "guidance_scale" not in s:
        return record.get("label", "")
    parts = []
    if record.get("model", {}).get("steps"):
        model = record["model"]
        parts.append(f"model: {model['steps']:,} steps of {model['batch_size']:,} windows on {model['device']}")
    if s.get("goal_conditioned"):
        parts.append("goal-conditioned model")
    if s.get("relative_positions"):
        parts.append("relative positions")
    parts += [
        s.get("schedule", "pyramid"),
        f"guidance {s['guidance_scale']:g}",
        f"MCG {s.get('mcg_samples', 1)}",
        f"DDIM {s.get('ddim_steps')}",
    ]
    if "horizon_tokens" in s:
        horizon = s["horizon_tokens"]
        parts.append("plan to the episode's end" if horizon is None else f"horizon {horizon} tokens")
    if s.get("near_goal_guidance_scale"):
        parts.append(f"near-goal {s['near_goal_guidance_scale']:g} within {s.get('near_goal_radius', 1.0):g}")
    if s.get("stay_velocity_weight") or s.get("stay_action_weight"):
        where = " near goal only" if s.get("stay_near_goal_only") else ""
        parts.append(f"stay v {s.get('stay_velocity_weight', 0):g} a {s.get('stay_action_weight', 0):g}{where}")
    if s.get("start_weight"):
        parts.append(f"start pull {s['start_weight']:g}")
    if s.get("shrink_horizon") is False:
        parts.append("horizon kept past the episode's end")
    if s.get("goal_hold_radius"):
        parts.append(f"hold {s['goal_hold_radius']:g}")
    if s.get("warm_start_level"):
        parts.append(f"warm start {s['warm_start_level']:g}")
    if s.get("near_goal_execute_steps") or s.get("near_goal_horizon_tokens"):
        near = [f"replan every {s['near_goal_execute_steps']} steps"] if s.get("near_goal_execute_steps") else []
        near += [f"{s['near_goal_horizon_tokens']}-token plans"] if s.get("near_goal_horizon_tokens") else []
        parts.append("near the goal: " + ", ".join(near))
    if s.get("near_goal_schedule"):
        parts.append(f"{s['near_goal_schedule']} near the goal")
    if s.get("near_goal_mcg_samples") is not None:
        parts.append(f"MCG {s['near_goal_mcg_samples']} near the goal")
    if s.get("near_goal_ddim_steps") is not None:
        parts.append(f"{s['near_goal_ddim_steps']} DDIM steps near the goal")
    if s.get("min_guidance_weight"):
        parts.append(f"rows under {s['min_guidance_weight']:g} of the peak guidance weight unguided")
    if s.get("near_goal_min_guidance_weight"):
        parts.append(f"near the goal rows under {s['near_goal_min_guidance_weight']:g} of the peak weight unguided")
    elif s.get("near_goal_min_guidance_weight") == 0 and s.get("min_guidance_weight"):
        parts.append("every row guided near the goal")
    if s.get("subgoal_distance"):
        cell = s.get("subgoal_cell", 0.25)
        cells = f" (cells of {cell:g})" if cell != 0.25 else ""
        sight = ", in sight" if s.get("subgoal_line_of_sight") else ""
        parts.append(f"data-graph subgoals {s['subgoal_distance']:g} ahead{cells}{sight}")
    if s.get("history_tokens"):
        parts.append(f"plans carry the last {s['history_tokens']} executed tokens")
    if s.get("stall_steps"):
        parts.append(f"cold replan after {s['stall_steps']} steps without {s.get('stall_distance', 0.5):g} progress")
    return ", ".join(parts)


def table(records: list[dict]) -> str:
    header = (
        "| method | settings | task | D4RL score | reach-then-stay | success | time to goal | episodes | s "
        "| date, commit |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in records:
        m = r["metrics"]
        seeds = r["episodes"]["seeds"]
        episodes = f"{len(seeds)} (seeds {min(seeds)}-{max(seeds)})"
        rows.append(
            f"| {r['method']} | {describe_settings(r)} | {r['env_id']} "
            f"| {_cell(m['normalized_score'], m['normalized_score_stderr'])} "
            f"| {_cell(m['reach_stay_score'], m['reach_stay_score_stderr'])} "
            f"| {100 * m['success_rate']:.0f}% | {m['time_to_goal']:.0f} | {episodes} | {r['seconds']:.0f} "
            f"| {r['date'][:10]}, {(r.get('commit') or 'unknown')[:8]} |"
        )
    return header + "\n".join(rows) + "\n"


def score_figure(records: list[dict], path: Path, title: str) -> None:
    """D4RL and reach-then-stay scores with standard-error bars, one bar pair per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['method']}\n{r['env_id'].removeprefix('maze2d-').removesuffix('-v1')}" for r in records]
    x = np.arange(len(records))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(records)), 4))
    for offset, key, name in ((-0.2, "normalized_score", "D4RL score"), (0.2, "reach_stay_score", "reach then stay")):
        values = [r["metrics"][key] for r in records]
        errors = [r["metrics"][key + "_stderr"] for r in records]
        ax.bar(x + offset, values, 0.4, yerr=errors, capsize=3, label=name)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("normalized score")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def time_to_goal_figure(records: list[dict], path: Path, title: str) -> None:
    """Distribution of the steps to first reach the goal (episodes that never do count the episode length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(records)), 4))
    data = [r["episodes"]["time_to_goal"] for r in records]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(
        np.arange(1, len(records) + 1),
        [f"{r['method']}\n{r['env_id'].removeprefix('maze2d-').removesuffix('-v1')}" for r in records],
        fontsize=7,
    )
    ax.set_ylabel("steps to first reach the goal")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_minutes(record: dict) -> float | None:
    """Minutes of training behind a record's method: a benchmark-trained method's ``train_minutes``, a DF agent's
    ``model.minutes`` (its provenance); None for untrained methods and records that do not say."""
    minutes = record.get("train_minutes")
    if minutes is None:
        minutes = (record.get("model") or {}).get("minutes")
    return None if minutes is None else float(minutes)


def is_test_evaluation(record: dict) -> bool:
    """The 100 test episodes, seeds 0-99."""
    return sorted(record["episodes"]["seeds"]) == list(range(100))


def speed_table(records: list[dict]) -> str:
    """The speed records (``envs.records.make_speed_record``): agent.act in one env (overall, far from the goal and
    near it) and each timed replan of a batch, with the machine and the command."""
    lines = [
        "Timings of the DF planner (`scripts/benchmark_df.py --speed-record`), simulator included in the act rate. The",
        "100 Hz simulator needs 100 control steps/s for `agent.act` to keep real time in one env.",
        "",
        "| task | planner | agent.act, one env: steps/s (far / near the goal) | replans of a batch | machine "
        "| date, commit |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        m = r["measurements"]
        act = m.get("act")
        act_cell = "-"
        if act:
            split = [act.get("steps_per_second_far"), act.get("steps_per_second_near_goal")]
            split = " / ".join("-" if v is None else f"{v:.0f}" for v in split)
            act_cell = f"{act['steps_per_second']:.0f} ({split}) over {act['steps']} steps"
        replans = "; ".join(
            f"{t['batch']} x {t['horizon_tokens']} tokens, MCG {t['mcg_samples']}, {t['ddim_steps']} DDIM: "
            f"{t['seconds']:.2f} s"
            for t in m.get("replans", [])
        )
        machine = r["machine"]
        where = f"{machine.get('gpu') or machine.get('cpu')}, {machine.get('torch_threads')} thread(s)"
        lines.append(
            f"| {r['env_id'].removesuffix('-v1')} | {describe_settings(r)} | {act_cell} | {replans or '-'} | {where} "
            f"| {r['date'][:10]}, {(r.get('commit') or '')[:7]} |"
        )
    return _with_commands(lines, records)


HEADLINE_TABLE = (
    "Diffusion Forcing, pure: the shipped agents with the script's planner defaults (100 test episodes, seeds 0-99)"
)


# OGBench's published success rates (%, Park et al. 2024, Table 2: five test goals, 8 seeds), quoted for scale.
OGBENCH_QUOTED = {
    "pointmaze-medium-navigate-v0": {"GCBC": 9, "GCIVL": 63, "GCIQL": 53, "QRL": 82, "CRL": 29, "HIQL": 79},
    "pointmaze-large-navigate-v0": {"GCBC": 29, "GCIVL": 45, "GCIQL": 34, "QRL": 86, "CRL": 39, "HIQL": 58},
    "pointmaze-giant-navigate-v0": {"GCBC": 1, "GCIVL": 0, "GCIQL": 0, "QRL": 68, "CRL": 27, "HIQL": 46},
    "pointmaze-medium-stitch-v0": {"GCBC": 23, "GCIVL": 70, "GCIQL": 21, "QRL": 80, "CRL": 0, "HIQL": 74},
    "pointmaze-large-stitch-v0": {"GCBC": 7, "GCIVL": 12, "GCIQL": 31, "QRL": 84, "CRL": 0, "HIQL": 13},
    "pointmaze-giant-stitch-v0": {"GCBC": 0, "GCIVL": 0, "GCIQL": 0, "QRL": 50, "CRL": 0, "HIQL": 0},
}


def _episodes(record: dict) -> str:
    """'N (seeds a-b)': how many episodes, and which (OGBench's test episodes are seeds 0-249, held-out ones above)."""
    seeds = record["episodes"]["seeds"]
    return f"{len(seeds)} (seeds {min(seeds)}-{max(seeds)})"


def _ogbench_method(record: dict) -> str:
    """The method, with a DF planner's matrix, MCG futures, plan length and guidance (scale, actions only, near the
    goal and how plans are made there, the goal cost on where the actions lead, start pull, goal-conditioned or plain
    model, relative positions, subgoals, route pull, warm start, replanning, balanced training windows: the settings
    its held-out rows compare)."""
    s = record.get("settings", {})
    if "schedule" not in s:
        return record["method"]
    horizon = s.get("horizon_tokens")
    plans = f"{horizon}-token plans" if horizon else "plans to the episode's end"
    guidance = f"guidance {s.get('guidance_scale', 1.0):g}" + (
        " on actions only" if s.get("guide_actions_only") else ""
    )
    extras = "".join(
        part
        for part, on in (
            (
                f", guidance {s.get('near_goal_guidance_scale') or 0:g} within {s.get('near_goal_radius', 1.0):g} "
                "of the goal",
                s.get("near_goal_guidance_scale") is not None,
            ),
            (
                f", near the goal {s.get('near_goal_horizon_tokens')}-token plans",
                s.get("near_goal_horizon_tokens") is not None,
            ),
            (
                f", near the goal replanned every {s.get('near_goal_execute_steps')} steps",
                s.get("near_goal_execute_steps") is not None,
            ),
            (", goal cost on where the actions lead", s.get("guide_implied_positions")),
            (", near-goal cost on where the actions lead", s.get("near_goal_guide_implied_positions")),
            (", line-of-sight subgoals (flag removed since)", s.get("subgoal_line_of_sight")),
            (f", start pull {s.get('start_weight', 0):g}", s.get("start_weight")),
            (", goal-conditioned", s.get("goal_conditioned")),
            (", relative positions", s.get("relative_positions")),
            (f", subgoals {s.get('subgoal_distance') or 0:g} ahead on the data's graph", s.get("subgoal_distance")),
            (f", route pull {s.get('route_weight', 0):g}", s.get("route_weight")),
            (f", warm start {s.get('warm_start_level', 0):g}", s.get("warm_start_level")),
            (
                f", subgoals stop at bends (tolerance {s.get('subgoal_chord_tolerance') or 0:g}; removed since)",
                s.get("subgoal_chord_tolerance"),
            ),
            (f", support pull {s.get('support_weight', 0):g} (removed since)", s.get("support_weight")),
            (f", replans every {s.get('replan_every', 1)} tokens", s.get("replan_every", 1) != 1),
            (f", plans carry the last {s.get('history_tokens')} executed tokens", s.get("history_tokens")),
            (", planning ended episodes too", s.get("plan_ended")),
        )
        if on
    )
    if s.get("goal_conditioned") is False and "stitch" in record.get("env_id", ""):
        extras += ", plain model"  # the stitch recipe's model (giant's default) is goal-conditioned
    balance = record.get("model", {}).get("window_balance")
    if balance:  # how the model's training windows were drawn (df_ogbench --window-balance)
        extras += f", windows balanced (power {balance['power']:g}, cell {balance['cell']:g})"
    return f"{record['method']} ({s['schedule']}, MCG {s.get('mcg_samples', 1)}, {plans}, {guidance}{extras})"


def _percent(rate: float | None) -> str:
    """A success rate as a whole percent; '-' for a goal the record did not evaluate (NaN or missing)."""
    return "-" if rate is None or not np.isfinite(rate) else f"{100 * rate:.0f}"


def _per_goal(metrics: dict) -> str:
    """An OGBench record's success per test goal, '88 / 84 / 74 / 100 / 100'."""
    return " / ".join(_percent(metrics.get(f"success_rate_task{k}")) for k in range(1, 6))


def _best_quoted(env_id: str) -> tuple[str, int] | None:
    """The best published method on an OGBench dataset and its success (%), or None when none is quoted."""
    quoted = OGBENCH_QUOTED.get(env_id)
    return max(quoted.items(), key=lambda item: item[1]) if quoted else None


def _latest_full_tests(records: list[dict], method: str) -> dict[str, dict]:
    """Per OGBench dataset, the most recent record of ``method`` (its name or a prefix of it) on OGBench's full test
    protocol (250 episodes, seeds 0-249)."""
    latest: dict[str, dict] = {}
    for r in records:
        seeds = r["episodes"]["seeds"]
        if not r["method"].startswith(method) or len(seeds) != 250 or min(seeds) != 0:
            continue
        if r["env_id"] not in latest or r["date"] >= latest[r["env_id"]]["date"]:
            latest[r["env_id"]] = r
    return latest


def ogbench_latest_tests(records: list[dict]) -> str:
    """The latest test of Diffusion Forcing per OGBench dataset: OGBench's full protocol (250 episodes, seeds 0-249),
    the most recent record, with our goal-conditioned IQL's latest test (run through the same evaluation) and the
    published numbers beside; '' if there is none."""
    latest = _latest_full_tests(records, "Diffusion Forcing")
    if not latest:
        return ""
    iql = _latest_full_tests([r for r in records if r["method"] == "IQL"], "IQL")
    lines = [
        "The latest test of Diffusion Forcing per dataset (250 episodes, seeds 0-249; the script's defaults when it",
        "was recorded, named in the method column of the full table below, which also holds every earlier test),",
        "beside the latest test of our goal-conditioned IQL (`baselines/iql.py`, the same evaluation; its training",
        "time in brackets) and OGBench's published numbers (quoted, not run here):",
        "",
        "| dataset | DF success | per goal 1-5 | time to goal | GC-IQL (ours) | quoted: best / GCIQL | date, commit |",
        "|---|---|---|---|---|---|---|",
    ]
    order = list(OGBENCH_QUOTED) + sorted(set(latest) - set(OGBENCH_QUOTED))
    for env_id in (e for e in order if e in latest):
        r = latest[env_id]
        m = r["metrics"]
        best = _best_quoted(env_id)
        quoted = f"{best[0]} {best[1]}% / {OGBENCH_QUOTED[env_id]['GCIQL']}%" if best else "-"
        baseline = "-"
        if env_id in iql:
            minutes = training_minutes(iql[env_id])
            baseline = f"{100 * iql[env_id]['metrics']['success_rate']:.1f}%" + (
                f" ({minutes:.0f} min)" if minutes is not None else ""
            )
        lines.append(
            f"| {env_id} | {100 * m['success_rate']:.1f} ± {100 * m['success_rate_stderr']:.1f}% | {_per_goal(m)} "
            f"| {m['time_to_goal']:.0f} | {baseline} | {quoted} | {r['date'][:10]}, {(r.get('commit') or '')[:7]} |"
        )
    return "\n".join(lines) + "\n"


def ogbench_table(records: list[dict]) -> str:
    """OGBench records (``"benchmark": "ogbench"``): success overall and per test goal, time to goal, training, with
    the published numbers quoted beside."""
    lines = [
        "Success rate over OGBench's five test goals (OGBench's protocol: the goal within 1.0), ± s.e.; time to goal",
        "in steps (1000 if never). *Quoted*: OGBench's published numbers (Park et al. 2024, best of GCBC / GCIVL /",
        "GCIQL / QRL / CRL / HIQL and GCIQL's), not run here.",
        "",
        "| method | dataset | success | per goal 1-5 | time to goal | training | episodes | quoted: best / GCIQL "
        "| date, commit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m = r["metrics"]
        minutes = training_minutes(r)
        steps = r.get("train_steps") or (r.get("model") or {}).get("steps")
        training = ", ".join(
            part
            for part in (f"{minutes:.0f} min" if minutes is not None else "", f"{steps:,} steps" if steps else "")
            if part
        )
        best = _best_quoted(r["env_id"])
        quoted_cell = f"{best[0]} {best[1]}% / {OGBENCH_QUOTED[r['env_id']]['GCIQL']}%" if best else "-"
        lines.append(
            f"| {_ogbench_method(r)} | {r['env_id']} "
            f"| {100 * m['success_rate']:.1f} ± {100 * m['success_rate_stderr']:.1f}% "
            f"| {_per_goal(m)} | {m['time_to_goal']:.0f} | {training or '-'} | {_episodes(r)} | {quoted_cell} "
            f"| {r['date'][:10]}, {(r.get('commit') or '')[:7]} |"
        )
    return _with_commands(lines, records)


def _with_commands(lines: list[str], records: list[dict]) -> str:
    """A table's lines, then the distinct commands of its records."""
    commands = list(dict.fromkeys(r["command"] for r in records))
    return "\n".join(lines) + "\n\nCommands:\n\n```bash\n" + "\n".join(commands) + "\n```\n"


def _notes(records: list[dict]) -> list[str]:
    """The records' distinct notes as list lines under their table, then a blank line (none without notes)."""
    notes = list(dict.fromkeys(r["note"] for r in records if r.get("note")))
    return [f"- {note}" for note in notes] + ([""] if notes else [])


def staying_table(records: list[dict]) -> str:
    """``scripts/staying_trace.py`` records: the steps spent outside the goal radius after the first arrival, how
    many of them beside a wall, and how far the model's first predicted position lies from the point there."""
    lines = [
        "Steps outside the goal's 0.5 radius after the first arrival (mean per episode), the share of them spent",
        "beside a wall, the episodes with over 20 such steps, and the distance from the point to the first position of",
        "an unguided plan made from such a position beside a wall, and from positions at the goal (mean over the",
        "positions replanned from).",
        "",
        "| env | model | score | steps outside | beside a wall | episodes over 20 | first planned position, beside a "
        "wall / at the goal | episodes | date, commit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def offset(value):
        return "-" if value is None else f"{value:.2f}"

    def model(record: dict) -> str:  # the model's training steps, or its checkpoint where they are not recorded
        steps = (record.get("model") or {}).get("steps")
        return f"{steps:,} steps" if steps else record["settings"]["checkpoint"]

    for r in records:
        m = r["metrics"]
        lines.append(
            f"| {r['env_id']} | {model(r)} "
            f"| {m['normalized_score']:.1f} | {m['steps_outside_after_arrival']:.1f} "
            f"| {100 * m['share_outside_beside_wall']:.0f}% | {m['episodes_over_20_steps_outside']} "
            f"| {offset(m['first_step_offset_beside_wall'])} / {offset(m['first_step_offset_at_goal'])} "
            f"| {_episodes(r)} | {r['date'][:10]}, {(r.get('commit') or '')[:7]} |"
        )
    estimated = [r for r in records if "first_step_velocity_error_at_goal" in r["metrics"]]
    if estimated:
        kinds = ("on_the_way", "at_goal", "circling", "beside_wall")
        lines += [
            "",
            "The model's state estimate, from the same traces: for each kind of state (on the way: over 2.0 from the",
            "goal before arrival; after arrival: at the goal, circling it 0.5-1.0 away, beside a wall), the distance",
            "from the point to an unguided plan's first predicted position / from the point's velocity to its first",
            "predicted velocity (units, units/s; one step changes the velocity by under 0.1), and for goal-conditioned",
            "models the same at the goal and circling with the model's goal input moved out along the ray through",
            "the goal.",
            "",
            "| env | model | on the way | at the goal | circling | beside a wall | goal input moved: at the goal "
            "/ circling | date, commit |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in estimated:
            m = r["metrics"]
            cells = [
                f"{offset(m[f'first_step_offset_{k}'])} / {offset(m[f'first_step_velocity_error_{k}'])}" for k in kinds
            ]
            moved = [
                f"{offset(m.get(f'first_step_offset_{k}_goal_input_moved'))} / "
                f"{offset(m.get(f'first_step_velocity_error_{k}_goal_input_moved'))}"
                for k in ("at_goal", "circling")
            ]
            moved_cell = "; ".join(moved) if "first_step_offset_at_goal_goal_input_moved" in m else "-"
            lines.append(
                f"| {r['env_id']} | {model(r)} | "
                + " | ".join(cells)
                + f" | {moved_cell} | {r['date'][:10]}, {(r.get('commit') or '')[:7]} |"
            )
    return _with_commands(lines, records)


def continuity_table(records: list[dict]) -> str:
    """``scripts/plan_continuity.py`` records: how far apart a plan's consecutive predicted positions lie inside
    tokens, across token boundaries and from the current position (medians over the plans)."""
    lines = [
        "Distances between consecutive predicted positions of plans made from held-out starts (median over the plans",
        "of each plan's median), in the maze's units: the first step (from the current position), steps inside a",
        "token, steps across token boundaries; and the plan's last position's distance to the goal. A boundary step",
        "far longer than an inside step is a plan that jumps.",
        "",
        "| env | checkpoint | guidance | plan | first step | inside tokens | at boundaries | ratio | end to goal "
        "| plans | date, commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m, s = r["metrics"], r["settings"]
        guidance = f"{s['guidance_scale']:g}" + (" on actions only" if s.get("guide_actions_only") else "")
        lines.append(
            f"| {r['env_id']} | {s['checkpoint']} | {guidance} | {s['horizon_tokens']} tokens of {s['frame_stack']}, "
            f"{s['schedule']} | {m['first_step_median']:.3f} | {m['inside_step_median']:.3f} "
            f"| {m['boundary_step_median']:.3f} | {m['boundary_to_inside']:.1f}x "
            f"| {m['final_distance_to_goal_median']:.2f} "
            f"| {_continuity_starts(s)} | {r['date'][:10]}, {(r.get('commit') or '')[:7]} |"
        )
    return _with_commands(lines, records)


def _continuity_starts(settings: dict) -> str:
    """Where a plan_continuity record's plans start: held-out episodes' starts, or one given point (toward one goal)."""
    if settings.get("start"):
        x, y = settings["start"]
        goal = f" toward ({settings['goal'][0]:g}, {settings['goal'][1]:g})" if settings.get("goal") else ""
        return f"{settings['starts']} from ({x:g}, {y:g}){goal}"
    return f"{settings['starts']} from seed {settings['seed']}"


def action_gap_table(records: list[dict]) -> str:
    """``scripts/plan_continuity.py --action-step`` records: how far a plan's last predicted position lies from the
    position its own actions lead to, and each one's distance to the goal (medians over the plans)."""
    lines = [
        "Where guided plans' actions lead (`plan_continuity.py --action-step`): the last predicted position's",
        "distance to the goal, the distance between it and the position the plan's actions lead to (the start plus the",
        "action step times the actions' sum, walls ignored), and that position's distance to the goal; medians over",
        "the plans.",
        "The goal cost is measured on the predicted positions, or on where the actions lead",
        "(`PlannerConfig.guide_implied_positions`).",
        "",
        "| env | checkpoint | plans | goal cost on | guidance | predicted end to goal | actions' end to predicted end "
        "| actions' end to goal | date, commit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m, s = r["metrics"], r["settings"]
        measured = "where the actions lead" if s.get("guide_implied_positions") else "predicted positions"
        lines.append(
            f"| {r['env_id']} | {s['checkpoint']} | {_continuity_starts(s)}, {s['horizon_tokens']} tokens | {measured} "
            f"| {s['guidance_scale']:g} | {m['final_distance_to_goal_median']:.2f} | {m['action_gap_median']:.2f} "
            f"| {m['implied_final_distance_to_goal_median']:.2f} | {r['date'][:10]}, {(r.get('commit') or '')[:7]} |"
        )
    return _with_commands(lines, records)


def coverage_table(records: list[dict]) -> str:
    """``scripts/ogbench_coverage.py`` records: the dataset's rows in each test goal's maze cell and that count's rank
    among the free cells (0%: the rarest cell), the latest record per dataset."""
    latest = {r["env_id"]: r for r in records}
    lines = [
        "Rows of each dataset in the maze cell of each test goal, and the rank of that count among the maze's free",
        "cells (0%: the rarest). A stitch episode crosses at most 4 cells, so a dead end is crossed only by the",
        "episodes that start or end in it.",
        "",
        "| dataset | rows per free cell: median (min) | goal 1 | goal 2 | goal 3 | goal 4 | goal 5 | date, commit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for env_id, r in latest.items():
        m = r["metrics"]
        goals = " | ".join(f"{g['rows']:,} ({100 * g['rank']:.0f}%)" for g in m["goals"])
        lines.append(
            f"| {env_id} | {m['rows_per_cell_median']:,.0f} ({m['rows_per_cell_min']:,}) | {goals} "
            f"| {r['date'][:10]}, {(r.get('commit') or '')[:7]} |"
        )
    return _with_commands(lines, records)


MAZES = ("umaze", "medium", "large")


def _task_order(env_id: str) -> tuple:
    """umaze, medium, large; the single-goal tasks before the multi-goal ones."""
    maze = next((i for i, m in enumerate(MAZES) if f"-{m}" in env_id), len(MAZES))
    return ("-multi" in env_id, maze, env_id)


def is_summary_row(record: dict) -> bool:
    """A headline DF record or a benchmark record: the rows that compare methods (not ablations, grids, probes)."""
    return record.get("table") == HEADLINE_TABLE or record.get("source") == "benchmark.jsonl"


def summary_table(records: list[dict]) -> str:
    """Every method on every task side by side: the headline DF rows and the benchmark's records
    (``results/benchmark.jsonl``), test episodes only, the latest record of each method and task. Cells: D4RL score
    ± s.e., success rate."""
    chosen: dict[tuple[str, str], dict] = {}
    for record in records:
        if not is_test_evaluation(record):
            continue
        if not is_summary_row(record):
            continue
        key = (record["method"], record["env_id"])
        if key not in chosen or record["date"] >= chosen[key]["date"]:
            chosen[key] = record
    if not chosen:
        return ""
    # DF, the learned baselines, the planner on the true dynamics, then the methods for scale
    order = ("Diffusion Forcing", "IQL", "CQL", "Diffuser", "MPPI", "expert", "random")
    methods = sorted(
        dict.fromkeys(method for method, _ in chosen),
        key=lambda m: next((i for i, prefix in enumerate(order) if m.startswith(prefix)), len(order)),
    )
    tasks = sorted({task for _, task in chosen}, key=_task_order)
    lines = [
        "| task | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for task in tasks:
        cells = []
        for method in methods:
            r = chosen.get((method, task))
            cells.append(
                "-"
                if r is None
                else f"{_cell(r['metrics']['normalized_score'], r['metrics']['normalized_score_stderr'])}, "
                f"{100 * r['metrics']['success_rate']:.0f}%"
            )
        lines.append(f"| {task.removesuffix('-v1')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def time_lost_table(records: list[dict]) -> str:
    """Where the headline DF agents lose time on the way: each one's time to goal against the dataset's expert
    (waypoints + PD, ``results/benchmark.jsonl``) on the same test episodes, episode by episode. A median near 0 with
    a long upper tail says the agent moves as fast as the expert but sometimes takes a detour."""
    latest: dict[tuple[str, str], dict] = {}
    for record in records:
        if not is_test_evaluation(record):
            continue
        if record.get("table") == HEADLINE_TABLE:
            key = ("df", record["env_id"])
        elif record.get("source") == "benchmark.jsonl" and record["method"].startswith("expert"):
            key = ("expert", record["env_id"])
        else:
            continue
        if key not in latest or record["date"] >= latest[key]["date"]:
            latest[key] = record
    rows = []
    for (kind, task), df in sorted(latest.items(), key=lambda item: _task_order(item[0][1])):
        expert = latest.get(("expert", task))
        if kind != "df" or expert is None or expert["episodes"]["seeds"] != df["episodes"]["seeds"]:
            continue
        steps = [
            np.array([np.nan if t is None else t for t in r["episodes"]["time_to_goal"]], float) for r in (df, expert)
        ]
        lost = steps[0] - steps[1]
        q50, q75, q90 = np.nanpercentile(lost, [50, 75, 90])
        rows.append(
            f"| {task.removesuffix('-v1')} | {np.nanmean(steps[0]):.0f} | {np.nanmean(steps[1]):.0f} | {q50:+.0f} | "
            f"{q75:+.0f} | {q90:+.0f} | {100 * np.mean(lost > 50):.0f}% |"
        )
    if not rows:
        return ""
    header = [
        "| task | DF time to goal | expert's | DF - expert: median | 75th percentile | 90th "
        "| episodes > 50 steps slower |",
        "|---|---|---|---|---|---|---|",
    ]
    return "\n".join(header + rows) + "\n"


def minutes_figure(records: list[dict], path: Path) -> list[dict]:
    """D4RL score against minutes of training, one panel per task, one marker per method, with standard-error bars,
    from the test-episode records that state their training time. Returns the records it drew."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [r for r in records if training_minutes(r) is not None and is_test_evaluation(r) and is_summary_row(r)]
    tasks = sorted({r["env_id"] for r in drawn}, key=_task_order)
    if not drawn:
        return []
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    all_minutes = [training_minutes(r) for r in drawn]
    columns = min(3, len(tasks))
    rows = -(-len(tasks) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in drawn))
    markers = dict(zip(methods, "os^DvP*X", strict=False))  # more methods than markers: the default
    for ax, task in zip(axes.flat, tasks, strict=False):  # a grid may have more panels than tasks
        for method in methods:
            points = sorted(
                ((training_minutes(r), r["metrics"]) for r in drawn if r["env_id"] == task and r["method"] == method),
                key=lambda point: point[0],  # equal minutes (two runs of one budget) must not compare the metrics
            )
            if points:
                x = [p[0] for p in points]
                y = [p[1]["normalized_score"] for p in points]
                e = [p[1]["normalized_score_stderr"] for p in points]
                ax.errorbar(x, y, yerr=e, marker=markers.get(method, "o"), capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlim(min(all_minutes) / 1.5, max(all_minutes) * 1.5)  # one range for every panel
        ax.set_xticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200) if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(task.removesuffix("-v1"), fontsize=9)
        ax.set_xlabel("training minutes")
        ax.set_ylabel("D4RL score")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


TABLE_ORDER = (
    "Diffusion Forcing, pure: the shipped",
    "Diffusion Forcing",
    "maze2d-",
    "Ablations",
    "Backbones",
    "Planner grid",
    "Probes",
)


def _table_rank(name: str) -> int:
    """Headline first, then the methods per maze, ablations, grids, probes, anything else (stable within a rank)."""
    return next((rank for rank, prefix in enumerate(TABLE_ORDER) if name.startswith(prefix)), len(TABLE_ORDER))


# OGBench figures drawn by scripts/plot_plan.py (file pattern in the figures folder, alt text, caption), in the
# order RESULTS.md shows them.
OGBENCH_FIGURES = (
    (
        "ogbench_plan_*.png",
        "plan",
        "Made by `python scripts/plot_plan.py --env <dataset> --checkpoint runs/<run>/agent.pt --dataset-pieces 20`: "
        "a plan's rows over the maze, with training episodes in grey, and the episode.",
    ),
    (
        "ogbench_subgoals_*.png",
        "subgoals",
        "Made by `python scripts/plot_plan.py --env <dataset> --checkpoint runs/<run>/agent.pt --task-id 1 --seed 1000 "
        "--subgoal-distance 8`: guided toward subgoals on the data graph's way (dashed), the planner's own actions "
        "follow it back and forth and stall at the last bend (docs/ogbench.md).",
    ),
    (
        "ogbench_short_plans_*.png",
        "short plans",
        "Made by `python scripts/plot_plan.py --env pointmaze-giant-navigate-v0 --checkpoint runs/<run>/agent.pt "
        "--task-id 2 --seed 1010 --subgoal-distance 8`, a held-out episode: with the navigate defaults (10-token plans "
        "toward the data graph's subgoals, guidance 4) the planner's own actions follow the way across the giant maze "
        "and arrive after 632 steps; with 60-token plans (`_60tokens`, the plain planner) the same episode wanders and "
        "never arrives (docs/ogbench.md).",
    ),
    (
        "ogbench_recipe_*.png",
        "recipe",
        "Made by `python scripts/plot_plan.py --env pointmaze-giant-stitch-v0 --checkpoint runs/<run>/agent.pt "
        "--task-id 2 --seed 1000 --subgoal-distance 8 --dataset-pieces 20` with the stitch recipe's model: the "
        "planner's own actions cross the giant maze along the data graph's way, composed from 4-cell pieces, and end "
        "just short of the goal at the 1000-step limit (docs/ogbench.md).",
    ),
    (
        "ogbench_implied_*.png",
        "goal cost on where the actions lead",
        "Made by `python scripts/plot_plan.py --env pointmaze-medium-stitch-v0 --checkpoint runs/<run>/agent.pt "
        "--task-id 1 --seed 1000 --subgoal-distance 8`, a held-out episode of the plain stitch model with the navigate "
        "planner: with the goal cost on the predicted positions (`_predicted`) the point hovers beside the goal in "
        "its dead end from step 160 to the limit; with the near-goal cost measured on where the actions lead "
        "(`--planner.near-goal-guide-implied-positions True`, round 5 in docs/ogbench.md) it arrives after 239 steps.",
    ),
    (
        "ogbench_history_*.png",
        "plans that carry their history",
        "Made by `python scripts/plot_plan.py --env pointmaze-large-stitch-v0 --checkpoint <saved agent> --task-id 2 "
        "--seed 1010 --subgoal-distance 8`, a held-out episode of large-stitch's goal 2 in its dead end: without "
        "history (`_without`, route pull 1 and the implied cost within 6) the point hovers at the foot of the last "
        "corridor from about step 500 to the limit; with the last 2 executed tokens as each plan's history "
        "(`--planner.history-tokens 2`, the default since 2026-12-08) it goes up the corridor and arrives after 681 "
        'steps (docs/ogbench.md, "History on large-stitch").',
    ),
)


def main(args: Args) -> str:
    # OGBench records (envs.ogbench_eval: success per test goal, no D4RL scores) get their own section
    everything = load_all(args.records)
    speed = [r for r in everything if r.get("kind") == "speed"]
    ogbench = [r for r in everything if r.get("benchmark") == "ogbench"]
    continuity = [r for r in everything if r.get("kind") == "plan_continuity"]
    coverage = [r for r in everything if r.get("kind") == "data_coverage"]
    staying = [r for r in everything if r.get("kind") == "staying_trace"]
    records = [r for r in everything if r.get("benchmark", "maze2d") == "maze2d" and r.get("kind") != "speed"]
    if not records and not speed and not ogbench:
        raise SystemExit(f"no records match {args.records}; run scripts/df_maze2d.py or scripts/benchmark_df.py first")
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        groups[record.get("table", "Other evaluations")].append(record)
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    output = Path(args.output)
    lines = [
        "# Results",
        "",
        f"Generated by `python scripts/make_results.py` from {len(records)} records in `{args.records}`; do not edit",
        "by hand. Scores are D4RL-normalized (mean ± standard error over episodes); *reach-then-stay* counts every",
        "step after the first reach of the goal as 1 (the DF authors' `episode_reward_if_stay`), normalized the same",
        "way; time to goal is the mean number of steps to first come within 0.5 of the goal (the episode length if",
        "never). Each record's command, settings, machine and per-episode arrays are in its JSON line.",
        "",
    ]
    summary = summary_table(records)
    if summary:
        lines += [
            "## Summary: every method on every task",
            "",
            "The headline DF agents and the benchmark's records (`results/benchmark.jsonl`), 100 test episodes each,",
            "the latest record of each method and task: D4RL score ± s.e., success rate. The tables below give each",
            "record's training, settings and date.",
            "",
            summary,
        ]
    for index, (name, group) in enumerate(sorted(groups.items(), key=lambda item: _table_rank(item[0]))):
        lines += [f"## {name}", "", table(group), *_notes(group)]
        stem = f"table{index}"
        score_figure(group, figures / f"{stem}_scores.png", name)
        time_to_goal_figure(group, figures / f"{stem}_time_to_goal.png", name)
        rel = Path(args.figures)
        lines += [
            f"![scores]({rel / (stem + '_scores.png')}) ![time to goal]({rel / (stem + '_time_to_goal.png')})",
            "",
        ]
        commands = list(dict.fromkeys(r["command"] for r in group))
        lines += ["Commands:", "", "```bash", *commands, "```", ""]
    lost = time_lost_table(records)
    if lost:
        lines += [
            "## Where DF loses time on the way",
            "",
            "The headline DF agents' steps to the goal against the dataset's expert (waypoints + PD) on the same 100",
            "test episodes, episode by episode (an episode that never reaches the goal counts its length).",
            "",
            lost,
        ]
    drawn = minutes_figure(records, figures / "score_vs_training_minutes.png")
    if drawn:
        lines += [
            "## Score against training minutes",
            "",
            "The summary's records (the headline DF agents, the benchmark's runs) that state their training time (a",
            "benchmark run's budget as spent, a DF agent's provenance): D4RL score ± s.e. against the minutes of wall",
            "time its method trained, on the machine its record names. GPU minutes are not CPU minutes; the table",
            "says which.",
            "",
            f"![score against training minutes]({Path(args.figures) / 'score_vs_training_minutes.png'})",
            "",
            "| method | task | training minutes | device | D4RL score | record date, commit |",
            "|---|---|---|---|---|---|",
            *[
                f"| {r['method']} | {r['env_id']} | {training_minutes(r):.1f} | "
                f"{(r.get('model') or {}).get('device') or ('GPU' if r['machine'].get('gpu') else 'CPU')} | "
                f"{_cell(r['metrics']['normalized_score'], r['metrics']['normalized_score_stderr'])} | "
                f"{r['date'][:10]}, {(r.get('commit') or '')[:7]} |"
                for r in drawn
            ],
            "",
        ]
    if speed:
        lines += ["## Speed", "", speed_table(speed)]
    if ogbench:
        lines += ["## OGBench pointmaze", ""]
        summary = ogbench_latest_tests(ogbench)
        lines += [summary] if summary else []
        lines += [ogbench_table(ogbench)]
        for pattern, alt, caption in OGBENCH_FIGURES:
            for figure in sorted(figures.glob(pattern)):
                lines += [caption, "", f"![{alt}]({Path(args.figures) / figure.name})", ""]
    if continuity:
        lines += ["## Plan continuity (diagnostic)", "", continuity_table(continuity)]
        gaps = [r for r in continuity if r["settings"].get("action_step") is not None]
        if gaps:
            lines += ["", "### Where the actions lead", "", action_gap_table(gaps)]
    if coverage:
        lines += ["## OGBench data at the test goals (diagnostic)", "", coverage_table(coverage)]
    if staying:
        lines += ["## Where the staying score is lost (diagnostic)", "", staying_table(staying), *_notes(staying)]
    plans = sorted(figures.glob("plan_*.png"))
    if plans:
        lines += [
            "## Plans drawn over the maze",
            "",
            "Made by `python scripts/plot_plan.py --env maze2d-<maze>` with the packaged agent on test episode 0:",
            "the clean estimate of the plan after several rows of its scheduling matrix (in the pyramid, far",
            "tokens stay noisier than near ones), the final plan, and the episode the agent then executed with its",
            "own actions.",
            "",
            *[f"![plan]({Path(args.figures) / plan.name})" for plan in plans],
            "",
        ]
    text = "\n".join(lines)
    output.write_text(text)
    return text


if __name__ == "__main__":
    main(tyro.cli(Args))
