"""OGBench pointmaze tasks, next to maze2d: the ``ogbench`` package's own environments, test goals and success rule.

Six tasks, ``pointmaze-{medium,large,giant}-{navigate,stitch}-v0``. Each id is an OGBench *dataset* name: the
environment is OGBench's ``pointmaze-<maze>-v0`` (registered in Gymnasium by ``import ogbench``) and the dataset kind
only selects the offline data (see ``envs.ogbench_datasets``). Evaluation uses OGBench's five fixed test goals per
maze, ``env.reset(options=dict(task_id=k))`` for k = 1..5, its success rule (``info['success']``: within 1.0 of the
goal for the point mass, after the step) and its episode length (the registered ``max_episode_steps``, 1000).

Importing this module also makes OGBench's dataset download fail fast: nothing can be downloaded on this machine,
so ``ogbench.download_datasets`` (which ``ogbench.make_env_and_datasets`` calls) is replaced by a check that raises
``OGBenchDatasetMissing``, naming the command that regenerates the missing files locally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import gymnasium as gym
import ogbench
import ogbench.utils

from envs.minari_io import DatasetError

MAZES = ("medium", "large", "giant")
DATASET_KINDS = ("navigate", "stitch")
NUM_EVAL_TASKS = 5
DEFAULT_DATASET_DIR = ogbench.utils.DEFAULT_DATASET_DIR  # "~/.ogbench/data", where OGBench looks by default


@dataclass(frozen=True)
class OGBenchTask:
    env_id: str  # OGBench dataset name, e.g. "pointmaze-giant-stitch-v0"
    maze: str  # medium, large or giant
    dataset_kind: str  # navigate or stitch
    env_name: str  # the Gymnasium id of OGBench's environment, e.g. "pointmaze-giant-v0"
    max_episode_steps: int  # evaluation episode length (OGBench's registration)
    dataset_episodes: int  # training episodes of the offline dataset (validation: a tenth as many)
    dataset_episode_length: int  # steps per dataset episode (rows per episode in OGBench's .npz)

    @property
    def num_eval_tasks(self) -> int:
        return NUM_EVAL_TASKS

    @property
    def minari_id(self) -> str:
        return minari_dataset_id(self.env_id)


def _dataset_size(maze: str, kind: str) -> tuple[int, int]:
    """OGBench's published sizes: navigate 1000 x 1001 steps (giant 500 x 2001), stitch 5000 x 201."""
    if kind == "stitch":
        return 5000, 201
    return (500, 2001) if maze == "giant" else (1000, 1001)


def _build_table() -> dict[str, OGBenchTask]:
    table = {}
    for maze in MAZES:
        env_name = f"pointmaze-{maze}-v0"
        max_episode_steps = gym.spec(env_name).max_episode_steps
        for kind in DATASET_KINDS:
            episodes, length = _dataset_size(maze, kind)
            env_id = f"pointmaze-{maze}-{kind}-v0"
            table[env_id] = OGBenchTask(env_id, maze, kind, env_name, max_episode_steps, episodes, length)
    return table


OGBENCH_TASKS: dict[str, OGBenchTask] = _build_table()


def is_ogbench_id(env_id: str) -> bool:
    return env_id in OGBENCH_TASKS


def get_ogbench_task(env_id: str) -> OGBenchTask:
    """The task table row of an OGBench pointmaze id; an unknown id raises ValueError naming the valid ones."""
    try:
        return OGBENCH_TASKS[env_id]
    except (KeyError, TypeError):
        raise ValueError(f"unknown OGBench task {env_id!r}; valid ids: {', '.join(OGBENCH_TASKS)}") from None


def minari_dataset_id(env_id: str, split: str = "train") -> str:
    """Minari id of our local copy of a dataset: ``ogbench/pointmaze-giant-stitch-v0`` (``...-stitch-val-v0``)."""
    task = get_ogbench_task(env_id)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    base = task.env_id.removesuffix("-v0")
    return f"ogbench/{base}-v0" if split == "train" else f"ogbench/{base}-val-v0"


def generation_command(env_id: str, dataset_dir: str | None = None) -> str:
    command = f"python -m envs.ogbench_datasets --env {env_id}"
    if dataset_dir is not None and os.path.expanduser(dataset_dir) != os.path.expanduser(DEFAULT_DATASET_DIR):
        command += f" --dataset-dir {dataset_dir}"
    return command


def make_ogbench_env(env_id: str, **env_kwargs) -> gym.Env:
    """OGBench's own environment for a task (``pointmaze-<maze>-v0``, TimeLimit of its registered length)."""
    task = get_ogbench_task(env_id)
    return ogbench.make_env_and_datasets(task.env_id, env_only=True, **env_kwargs)


def evaluation_tasks(env_id: str) -> list[dict]:
    """OGBench's five test tasks of the task's maze: dicts with task_id (1..5), init_ij, goal_ij, init_xy, goal_xy.
    Reset to one with ``env.reset(options=dict(task_id=k))`` (start and goal then get the env's +-1 noise)."""
    env = make_ogbench_env(env_id)
    try:
        infos = env.unwrapped.task_infos
        return [
            dict(
                task_id=k + 1,
                init_ij=tuple(info["init_ij"]),
                goal_ij=tuple(info["goal_ij"]),
                init_xy=tuple(float(v) for v in info["init_xy"]),
                goal_xy=tuple(float(v) for v in info["goal_xy"]),
            )
            for k, info in enumerate(infos)
        ]
    finally:
        env.close()


def reset_to_task(env: gym.Env, task_id: int, seed: int | None = None):
    """Reset an OGBench env to test task ``task_id`` (1..5); returns (observation, info), ``info['goal']`` being
    the goal observation. Note that OGBench draws the start/goal noise from NumPy's global RNG (``np.random``)."""
    if not 1 <= int(task_id) <= NUM_EVAL_TASKS:
        raise ValueError(f"task_id must be in 1..{NUM_EVAL_TASKS}, got {task_id}")
    return env.reset(seed=seed, options=dict(task_id=int(task_id)))


class OGBenchDatasetMissing(DatasetError):
    """An OGBench dataset file is not on disk; OGBench would download it, which this machine cannot do."""


_original_download = ogbench.utils.download_datasets


def _no_download(dataset_names, dataset_dir=DEFAULT_DATASET_DIR):
    """Replacement of ``ogbench.utils.download_datasets``: passes if the files are on disk, else raises."""
    directory = os.path.expanduser(dataset_dir)
    for name in dataset_names:
        missing = [
            os.path.join(directory, file)
            for file in (f"{name}.npz", f"{name}-val.npz")
            if not os.path.exists(os.path.join(directory, file))
        ]
        if not missing:
            continue
        base = name.replace("-singletask", "").replace("-oraclerep", "")  # datasets shared with the base task
        if base in OGBENCH_TASKS:
            fix = f"regenerate it locally with `{generation_command(base, dataset_dir)}`"
        else:
            fix = f"df-agent regenerates only the pointmaze datasets ({', '.join(OGBENCH_TASKS)})"
        raise OGBenchDatasetMissing(
            f"OGBench dataset {name!r} is not on this machine (missing {', '.join(missing)}) and df-agent never "
            f"downloads datasets (no network); {fix}"
        )


def install_download_guard() -> None:
    """Make every OGBench download path raise ``OGBenchDatasetMissing`` instead of reaching for the network."""
    ogbench.utils.download_datasets = _no_download
    ogbench.download_datasets = _no_download


install_download_guard()
