"""Draw a Diffusion Forcing plan over the maze: the rows of the scheduling matrix (the plan's clean estimate after
each row, from the noisy first rows to the clean last one), then the trajectory the agent executed and the goal.

    python scripts/plot_plan.py --env maze2d-umaze                     # the packaged agent, test episode 0
    python scripts/plot_plan.py --env maze2d-large --checkpoint runs/<run>/agent.pt --seed 3
    python scripts/plot_plan.py --env pointmaze-giant-stitch-v0 --checkpoint runs/<run>/agent.pt --task-id 1 \
        --dataset-pieces 40                                             # OGBench: a test goal, over the data's pieces
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import tyro

import envs
from df_agent import Agent
from df_agent.subgoals import SubgoalPolicy, TransitionGraph
from envs.ogbench_tasks import get_ogbench_task, is_ogbench_id

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Args:
    env: str = "maze2d-umaze"
    """task (its maze is drawn): a maze2d id or an OGBench pointmaze dataset id"""
    checkpoint: str = "pretrained"
    """agent file, or 'pretrained' for the packaged agent (maze2d only)"""
    seed: int = 0
    """episode seed (maze2d: 0-99 are the test episodes; OGBench: the evaluation's seed of that episode)"""
    task_id: int = 1
    """OGBench only: the test goal, 1..5"""
    max_steps: int | None = None
    """cut the episode after this many steps (default: the task's episode length)"""
    dataset_pieces: int = 0
    """OGBench only: draw this many random training episodes of the dataset faintly (on stitch, the 4-cell pieces
    a plan across the maze is composed of)"""
    subgoal_distance: float | None = None
    """OGBench only: plan toward subgoals this far ahead on the data's graph (``df_ogbench.py --subgoal-distance``),
    and draw the graph's way to the goal"""
    route_weight: float = 0.0
    """OGBench only, with ``subgoal_distance``: pull every planned step toward the data's way to the subgoal with this
    weight (``df_ogbench.py --planner.route-weight``; 0: the checkpoint's planner setting)"""
    start: tuple[float, float] | None = None
    """OGBench only: put the point at this (x, y) after the episode's reset, e.g. where an evaluation episode stalls"""
    zoom: float | None = None
    """draw only this far around the start (maze units; default: the whole maze)"""
    plans: int = 1
    """OGBench only: plans drawn from the start (the first with its rows, the others' final plans thinly): how much
    they agree"""
    dataset_dir: str | None = None
    """OGBench only: where the dataset's .npz files are (default: OGBench's ~/.ogbench/data)"""
    rows: int = 6
    """rows of the scheduling matrix drawn, evenly spaced from the first to the last"""
    output: str | None = None
    """PNG path (default: results/figures/plan_<maze>.png; OGBench: results/figures/ogbench_plan_<maze>-<kind>.png)"""


@dataclass
class Scene:
    """What is drawn: the maze's wall cells and one planned-then-executed episode."""

    title: str
    wall_centres: np.ndarray  # (N, 2) xy of each wall cell's centre
    cell_size: float
    plan: object  # df_agent Plan with row_positions
    schedule: str
    trajectory: np.ndarray  # (T + 1, 2) executed positions, the start first
    goal: np.ndarray  # (2,)
    goal_radius: float  # the radius the outcome is judged by
    outcome: str  # the right panel's title
    pieces: list[np.ndarray]  # dataset trajectories drawn under the plan
    way: np.ndarray | None = None  # (K, 2) the data graph's way to the goal, when planning toward its subgoals
    zoom: float | None = None  # half-width of the drawn window around the start (None: the whole maze)


def draw_maze(ax, scene: Scene) -> None:
    size = scene.cell_size
    for x, y in scene.wall_centres:
        ax.add_patch(plt.Rectangle((x - size / 2, y - size / 2), size, size, color="0.25"))
    low, high = scene.wall_centres.min(0) - size / 2, scene.wall_centres.max(0) + size / 2
    if scene.zoom is not None:
        low, high = scene.trajectory[0] - scene.zoom, scene.trajectory[0] + scene.zoom
    ax.set_xlim(low[0], high[0])
    ax.set_ylim(low[1], high[1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def maze2d_scene(args: Args) -> Scene:
    task = envs.get_task(args.env)
    agent = Agent.for_task(args.checkpoint, task.env_id)
    env = envs.make(task.env_id)
    obs, _ = env.reset(seed=args.seed)
    plan = agent.plan(obs, return_history=True)
    agent.reset()
    steps = args.max_steps or task.max_episode_steps
    trajectory = [obs["achieved_goal"].copy()]
    for _ in range(steps):
        obs, *_ = env.step(agent.act(obs))
        trajectory.append(obs["achieved_goal"].copy())
    trajectory = np.array(trajectory)
    goal = obs["desired_goal"]
    maze = envs.Maze.from_name(task.maze)
    walls = [
        maze.cell_to_xy(np.array([i, j])) for i, row in enumerate(maze.layout) for j, c in enumerate(row) if c == "#"
    ]
    inside = np.linalg.norm(trajectory[1:] - goal, axis=-1) <= 0.5
    return Scene(
        title=f"Diffusion Forcing on {task.env_id}",
        wall_centres=np.array(walls),
        cell_size=1.0,
        plan=plan,
        schedule=agent.planner.schedule,
        trajectory=trajectory,
        goal=goal,
        goal_radius=0.5,
        outcome=f"episode {args.seed}: {inside.sum()} of {steps} steps within 0.5 of the goal",
        pieces=[],
    )


def ogbench_scene(args: Args) -> Scene:
    from envs.ogbench_datasets import MazeGrid, load_ogbench_transitions, position_observation
    from envs.ogbench_eval import make_eval_env, reset_episode

    task = get_ogbench_task(args.env)
    if args.checkpoint == "pretrained":
        raise SystemExit("OGBench has no packaged agent: pass --checkpoint runs/<run>/agent.pt (scripts/df_ogbench.py)")
    if not 1 <= args.task_id <= task.num_eval_tasks:
        raise SystemExit(f"--task-id must be 1..{task.num_eval_tasks}, got {args.task_id}")
    agent = Agent.load(args.checkpoint)
    if args.route_weight > 0:
        if args.subgoal_distance is None:
            raise SystemExit("--route-weight follows the data's way to a subgoal: set --subgoal-distance too")
        agent = agent.with_planner(route_weight=args.route_weight)
    env = make_eval_env(task.env_id, args.max_steps)
    position, info = reset_episode(env, args.task_id, args.seed)
    if args.start is not None:
        env.unwrapped.set_xy(np.asarray(args.start, dtype=np.float64))
        position = np.asarray(env.unwrapped.get_xy(), dtype=np.float64)
    goal = np.asarray(info["goal"], dtype=np.float64)
    obs_dim = agent.tokenizer.layout.obs_dim

    policy, way, data = agent, None, None
    if args.subgoal_distance is not None or args.dataset_pieces > 0:
        data = load_ogbench_transitions(task.env_id, args.dataset_dir)
    if args.subgoal_distance is not None:
        graph = TransitionGraph.from_transitions(data)
        routed = agent.planner.route_weight > 0
        policy, way = SubgoalPolicy(agent, graph, args.subgoal_distance, route=routed), graph.way(position, goal)

    def observation(xy):
        return position_observation(np.asarray(xy, dtype=np.float32)[None], obs_dim)

    first_goal, route = goal[None], None
    if policy is not agent:
        first_goal = policy.subgoals(observation(position), goal[None])
        if policy.route:
            route = graph.routes(np.asarray(position)[None], goal[None], args.subgoal_distance)
    repeat = max(1, args.plans)
    plan = agent.plan(
        np.repeat(observation(position), repeat, axis=0),
        np.repeat(first_goal, repeat, axis=0),
        return_history=True,
        route=None if route is None else np.repeat(route, repeat, axis=0),
    )
    policy.reset(1)
    trajectory, reached = [np.asarray(position, dtype=np.float64)], None
    for t in range(args.max_steps or task.max_episode_steps):
        action = np.clip(policy.act(observation(position), goal[None])[0], -1.0, 1.0)
        position, _, terminated, truncated, info = env.step(action)
        trajectory.append(np.asarray(position, dtype=np.float64))
        if info.get("success"):  # OGBench's evaluation ends an episode at its first success
            reached = t + 1
            break
        if terminated or truncated:
            break
    grid = MazeGrid(env)
    pieces = []
    if args.dataset_pieces > 0:
        picks = np.random.default_rng(args.seed).choice(len(data.episode_starts), args.dataset_pieces, replace=False)
        for episode in picks:
            start, length = data.episode_starts[episode], data.episode_lengths[episode]
            pieces.append(data.observations[start : start + length, :2])
    outcome = (
        f"goal {args.task_id}, seed {args.seed}: reached (within {grid.goal_tol:g}) after {reached} steps"
        if reached
        else f"goal {args.task_id}, seed {args.seed}: not reached in {len(trajectory) - 1} steps"
    )
    return Scene(
        title=f"Diffusion Forcing on {task.env_id}",
        wall_centres=grid.cell_to_xy(np.argwhere(grid.maze_map == 1)),
        cell_size=grid.unit,
        plan=plan,
        schedule=agent.planner.schedule,
        trajectory=np.array(trajectory),
        goal=goal,
        goal_radius=grid.goal_tol,
        outcome=outcome,
        pieces=pieces,
        way=way,
        zoom=args.zoom,
    )


def draw(scene: Scene, rows: int, output: Path) -> Path:
    height, width = np.ptp(scene.wall_centres, axis=0)[::-1] + scene.cell_size
    if scene.zoom is not None:
        height = width = 2 * scene.zoom
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.5 * height / width + 0.8))
    ax = axes[0]
    draw_maze(ax, scene)
    for i, piece in enumerate(scene.pieces):
        ax.plot(*piece.T, "-", lw=0.6, color="0.7", label="training episodes" if i == 0 else None)
    plan = scene.plan
    picks = np.unique(np.linspace(0, len(plan.row_positions) - 1, rows).round().astype(int))
    colors = plt.cm.viridis(np.linspace(0.1, 0.95, len(picks)))
    for color, row in zip(colors, picks, strict=True):
        ax.plot(*plan.row_positions[row, 0].T, ".", ms=2.5, color=color, label=f"row {row}")
    for i in range(1, len(plan.positions)):  # further plans from the same start, to show how much they agree
        ax.plot(*plan.positions[i].T, "-", lw=0.7, color="salmon", label="other plans" if i == 1 else None)
    ax.plot(*plan.positions[0].T, "-", lw=1.5, color="crimson", label="final plan")
    ax.plot(*scene.goal, "*", ms=16, color="gold", mec="k", label="goal")
    ax.plot(*scene.trajectory[0], "o", ms=7, color="white", mec="k", label="start")
    ax.set_title(f"{scene.schedule} schedule: the plan's clean estimate, row by row", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax = axes[1]
    draw_maze(ax, scene)
    if scene.way is not None and len(scene.way):
        ax.plot(*scene.way.T, "--", lw=1.0, color="tab:orange", label="the data graph's way (subgoals)")
    ax.plot(*scene.trajectory.T, "-", lw=1.2, color="tab:blue", label="executed (the planner's own actions)")
    ax.add_patch(
        plt.Circle(
            scene.goal, scene.goal_radius, fill=False, ls="--", color="k", label=f"goal radius {scene.goal_radius:g}"
        )
    )
    ax.plot(*scene.goal, "*", ms=16, color="gold", mec="k")
    ax.plot(*scene.trajectory[0], "o", ms=7, color="white", mec="k")
    ax.set_title(scene.outcome, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(scene.title, fontsize=11)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    print(f"wrote {output}")
    return output


def main(args: Args) -> Path:
    if is_ogbench_id(args.env):
        task = get_ogbench_task(args.env)
        default = f"results/figures/ogbench_plan_{task.maze}-{task.dataset_kind}.png"
        scene = ogbench_scene(args)
    else:
        default = f"results/figures/plan_{envs.get_task(args.env).maze}.png"
        scene = maze2d_scene(args)
    return draw(scene, args.rows, Path(args.output or default))


if __name__ == "__main__":
    main(tyro.cli(Args))
