"""Draw a Diffusion Forcing plan over the maze: the rows of the scheduling matrix (the plan's clean estimate after
each row, from the noisy first rows to the clean last one), then the trajectory the agent executed and the goal.

    python scripts/plot_plan.py --env maze2d-umaze                     # the packaged agent, test episode 0
    python scripts/plot_plan.py --env maze2d-large --checkpoint runs/<run>/agent.pt --seed 3
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import tyro

import envs
from df_agent import Agent

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Args:
    env: str = "maze2d-umaze"
    """task (its maze is drawn)"""
    checkpoint: str = "pretrained"
    """agent file, or 'pretrained' for the packaged agent"""
    seed: int = 0
    """episode seed (0-99 are the test episodes)"""
    rows: int = 6
    """rows of the scheduling matrix drawn, evenly spaced from the first to the last"""
    output: str | None = None
    """PNG path (default: results/figures/plan_<maze>.png)"""


def draw_maze(ax, maze: envs.Maze) -> None:
    height, width = len(maze.layout), len(maze.layout[0])
    for i, row in enumerate(maze.layout):
        for j, cell in enumerate(row):
            if cell == "#":
                x, y = maze.cell_to_xy(np.array([i, j]))
                ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, color="0.25"))
    ax.set_xlim(-width / 2, width / 2)
    ax.set_ylim(-height / 2, height / 2)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def main(args: Args) -> Path:
    task = envs.get_task(args.env)
    agent = Agent.for_task(args.checkpoint, task.env_id)
    env = envs.make(task.env_id)
    obs, _ = env.reset(seed=args.seed)
    plan = agent.plan(obs, return_history=True)
    agent.reset()
    trajectory = [obs["achieved_goal"].copy()]
    for _ in range(task.max_episode_steps):
        obs, *_ = env.step(agent.act(obs))
        trajectory.append(obs["achieved_goal"].copy())
    trajectory = np.array(trajectory)
    goal = obs["desired_goal"]

    maze = envs.Maze.from_name(task.maze)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.5 * len(maze.layout) / len(maze.layout[0]) + 0.8))
    ax = axes[0]
    draw_maze(ax, maze)
    picks = np.unique(np.linspace(0, len(plan.row_positions) - 1, args.rows).round().astype(int))
    colors = plt.cm.viridis(np.linspace(0.1, 0.95, len(picks)))
    for color, row in zip(colors, picks, strict=True):
        ax.plot(*plan.row_positions[row, 0].T, ".", ms=2.5, color=color, label=f"row {row}")
    ax.plot(*plan.positions[0].T, "-", lw=1.5, color="crimson", label="final plan")
    ax.plot(*goal, "*", ms=16, color="gold", mec="k", label="goal")
    ax.plot(*trajectory[0], "o", ms=7, color="white", mec="k", label="start")
    ax.set_title(f"{agent.planner.schedule} schedule: the plan's clean estimate, row by row", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax = axes[1]
    draw_maze(ax, maze)
    ax.plot(*trajectory.T, "-", lw=1.2, color="tab:blue", label="executed (the planner's own actions)")
    ax.add_patch(plt.Circle(goal, 0.5, fill=False, ls="--", color="k", label="goal radius 0.5"))
    ax.plot(*goal, "*", ms=16, color="gold", mec="k")
    ax.plot(*trajectory[0], "o", ms=7, color="white", mec="k")
    inside = np.linalg.norm(trajectory[1:] - goal, axis=-1) <= 0.5
    ax.set_title(
        f"episode {args.seed}: {inside.sum()} of {task.max_episode_steps} steps within 0.5 of the goal", fontsize=9
    )
    ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Diffusion Forcing on {task.env_id}", fontsize=11)
    fig.tight_layout()
    output = Path(args.output or f"results/figures/plan_{task.maze}.png")
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    main(tyro.cli(Args))
