"""The maze2d benchmark of D4RL on Gymnasium-Robotics: tasks, the expert, offline datasets and the evaluation.

Importing this package registers the Gymnasium ids ``maze2d-{umaze,medium,large}[-multi]-v1``.
"""

from envs.mazes import MAZE_LAYOUTS, Maze
from envs.tasks import (
    TASKS,
    Maze2DEnv,
    TaskSpec,
    get_normalized_score,
    get_task,
    make,
    register_tasks,
    resolve_env_id,
    split_observation,
    twin_env_id,
)

register_tasks()

__all__ = [
    "MAZE_LAYOUTS",
    "Maze",
    "Maze2DEnv",
    "TASKS",
    "TaskSpec",
    "get_normalized_score",
    "get_task",
    "make",
    "register_tasks",
    "resolve_env_id",
    "split_observation",
    "twin_env_id",
]
