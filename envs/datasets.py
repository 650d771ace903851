"""Offline maze2d datasets in Minari's format: regenerate them locally by D4RL's recipe, and load them.

Recipe (D4RL's ``generate_maze2d_datasets.py``, as re-run for Minari's ``D4RL/pointmaze/*-v2``): the point mass
runs without ever being reset; a goal is drawn (a random free cell plus U(-0.1, 0.1)); the waypoint controller
steers to it with N(0, 0.5) noise added to every action (clipped to [-1, 1]); when the point comes within 0.45 of
the goal (the Gymnasium-Robotics success radius at which Minari split its episodes), or after the task's maximum
episode length, the episode ends (``truncations[-1] = True``) and a new goal is drawn. Rewards are relative to each
episode's own goal (sparse, 1 within 0.5, as in our tasks).

To be fast, ``num_chains`` such runs advance side by side in one batched MuJoCo call per step; each chain is one
continuous run of ``num_steps / num_chains`` steps (``num_chains=1`` gives D4RL's single run exactly).

Datasets are written atomically: into a scratch folder beside the datasets folder, then renamed into place, so an
interrupted run never leaves anything that loads.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector.episode_buffer import EpisodeBuffer
from minari.storage.datasets_root_dir import get_dataset_path
from tqdm.auto import tqdm

from envs.expert import WaypointController
from envs.mazes import MAZE_LAYOUTS, Maze
from envs.simulator import BatchedPointMaze
from envs.tasks import GOAL_RADIUS, POSITION_NOISE, VELOCITY_NOISE, get_task, register_tasks

LOCAL_NAMESPACE = "df-agent/pointmaze"
PUBLIC_NAMESPACE = "D4RL/pointmaze"
DEFAULT_NUM_STEPS = {"umaze": 1_000_000, "medium": 2_000_000, "large": 4_000_000}
ACTION_NOISE = 0.5
SPLIT_RADIUS = 0.45


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or corrupt; the message says how to fix it."""


def local_dataset_id(maze: str) -> str:
    """Id of our locally generated dataset for a maze (distinct from the public Minari ids)."""
    return f"{LOCAL_NAMESPACE}/{_check_maze(maze)}-v2"


def public_dataset_id(maze: str) -> str:
    """Id of the public Minari dataset for a maze (loaded only if already on disk: it cannot be downloaded here)."""
    return f"{PUBLIC_NAMESPACE}/{_check_maze(maze)}-v2"


def _check_maze(maze: str) -> str:
    if maze not in MAZE_LAYOUTS:
        raise ValueError(f"unknown maze {maze!r}; valid mazes: {sorted(MAZE_LAYOUTS)}")
    return maze


def generation_command(maze: str) -> str:
    return f"python -m envs.datasets --maze {maze}"


@dataclass
class Rollouts:
    """Raw output of the generator: per chain, T + 1 states and T actions, goals and episode ends."""

    qpos: np.ndarray  # (B, T + 1, 2)
    qvel: np.ndarray  # (B, T + 1, 2)
    actions: np.ndarray  # (B, T, 2)
    goals: np.ndarray  # (B, T, 2): the goal pursued at each step
    episode_end: np.ndarray  # (B, T) bool: the episode ends after this step
    steps_per_chain: np.ndarray  # (B,) how many of the T steps belong to each chain
    seconds: float


def simulate(maze: str, num_steps: int, seed: int = 0, num_chains: int = 256, progress: bool = True) -> Rollouts:
    """Run the noisy expert by D4RL's recipe for ``num_steps`` steps in total, split over ``num_chains`` runs."""
    layout = Maze.from_name(_check_maze(maze))
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    num_chains = max(1, min(num_chains, num_steps))
    rng = np.random.default_rng(seed)
    max_episode_steps = get_task(f"maze2d-{maze}").max_episode_steps
    steps_per_chain = np.full(num_chains, num_steps // num_chains)
    steps_per_chain[: num_steps % num_chains] += 1
    horizon = int(steps_per_chain.max())

    def random_goals(n: int) -> np.ndarray:
        cells = layout.free_cells[rng.integers(len(layout.free_cells), size=n)]
        return layout.cell_to_xy(cells) + rng.uniform(-POSITION_NOISE, POSITION_NOISE, size=(n, 2))

    sim = BatchedPointMaze(layout)
    controller = WaypointController(layout, num_chains, rng)
    qpos = np.empty((num_chains, horizon + 1, 2))
    qvel = np.empty((num_chains, horizon + 1, 2))
    actions = np.empty((num_chains, horizon, 2))
    goals = np.empty((num_chains, horizon, 2))
    episode_end = np.zeros((num_chains, horizon), dtype=bool)
    start_cells = layout.reset_cells[rng.integers(len(layout.reset_cells), size=num_chains)]
    qpos[:, 0] = layout.cell_to_xy(start_cells) + rng.uniform(-POSITION_NOISE, POSITION_NOISE, size=(num_chains, 2))
    qvel[:, 0] = rng.normal(0.0, VELOCITY_NOISE, size=(num_chains, 2))
    goal = random_goals(num_chains)
    controller.set_targets(np.ones(num_chains, dtype=bool), goal, qpos[:, 0])
    episode_length = np.zeros(num_chains, dtype=np.int64)
    start = time.perf_counter()
    with tqdm(total=num_steps, desc=f"generate {maze}", unit="step", unit_scale=True, disable=not progress) as bar:
        for t in range(horizon):
            action, _ = controller.act(qpos[:, t], qvel[:, t])
            action = np.clip(action + rng.normal(0.0, ACTION_NOISE, size=action.shape), -1.0, 1.0)
            action = action.astype(np.float32).astype(np.float64)  # simulate exactly the float32 action we store
            qpos[:, t + 1], qvel[:, t + 1] = sim.step(qpos[:, t], qvel[:, t], action)
            actions[:, t], goals[:, t] = action, goal
            episode_length += 1
            reached = np.linalg.norm(qpos[:, t + 1] - goal, axis=-1) <= SPLIT_RADIUS
            done = reached | (episode_length >= max_episode_steps)
            episode_end[:, t] = done
            if done.any():
                goal = goal.copy()
                goal[done] = random_goals(int(done.sum()))
                controller.set_targets(done, goal, qpos[:, t + 1])
                episode_length[done] = 0
            bar.update(int((steps_per_chain > t).sum()))
    return Rollouts(qpos, qvel, actions, goals, episode_end, steps_per_chain, time.perf_counter() - start)


def split_episodes(rollouts: Rollouts) -> list[EpisodeBuffer]:
    """Cut each chain at its episode ends into Minari episode buffers (the last, unfinished one included)."""
    episodes = []
    for c, length in enumerate(rollouts.steps_per_chain):
        ends = np.flatnonzero(rollouts.episode_end[c, :length])
        if len(ends) == 0 or ends[-1] != length - 1:
            ends = np.append(ends, length - 1)
        begin = 0
        for end in ends:
            states = np.concatenate([rollouts.qpos[c, begin : end + 2], rollouts.qvel[c, begin : end + 2]], axis=-1)
            goal = rollouts.goals[c, begin]
            n = end + 1 - begin
            success = np.linalg.norm(states[:, :2] - goal, axis=-1) <= GOAL_RADIUS
            truncations = np.zeros(n, dtype=bool)
            truncations[-1] = True
            episodes.append(
                EpisodeBuffer(
                    id=len(episodes),
                    observations={
                        "achieved_goal": states[:, :2].copy(),
                        "desired_goal": np.tile(goal, (n + 1, 1)),
                        "observation": states,
                    },
                    actions=rollouts.actions[c, begin : end + 1].astype(np.float32),
                    rewards=success[1:].astype(np.float64),
                    terminations=np.zeros(n, dtype=bool),
                    truncations=truncations,
                    infos={"success": success},
                )
            )
            begin = end + 1
    return episodes


@contextmanager
def _datasets_path(path: Path):
    """Point Minari at another datasets folder for the duration of the block."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


@contextmanager
def generation_lock(dataset_id: str):
    """Hold an exclusive lock on generating ``dataset_id``, so that two processes that both find it missing (two
    training scripts started at once) generate it once: the second waits, then finds it on disk. POSIX advisory
    lock (``fcntl.flock``), released by the OS if the holder dies; a no-op where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    root = get_dataset_path()
    lock_path = root.parent / f".{root.name}.locks" / (dataset_id.replace("/", "__") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def generate_dataset(
    maze: str,
    num_steps: int | None = None,
    seed: int = 0,
    num_chains: int = 256,
    dataset_id: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> minari.MinariDataset:
    """Generate the offline dataset of a maze and write it atomically as a Minari dataset; returns it loaded."""
    register_tasks()
    maze = _check_maze(maze)
    dataset_id = dataset_id or local_dataset_id(maze)
    num_steps = DEFAULT_NUM_STEPS[maze] if num_steps is None else num_steps
    final_path = get_dataset_path(dataset_id)
    if final_path.exists() and not overwrite:
        raise DatasetError(f"dataset {dataset_id} already exists at {final_path}; pass overwrite=True (--overwrite)")

    rollouts = simulate(maze, num_steps, seed=seed, num_chains=num_chains, progress=progress)
    episodes = split_episodes(rollouts)
    task = get_task(f"maze2d-{maze}")
    root = get_dataset_path()
    scratch = root.parent / f".{root.name}.partial" / uuid.uuid4().hex
    try:
        with _datasets_path(scratch), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is set to None", category=UserWarning)
            minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=episodes,
                env=gym.spec(task.env_id),
                eval_env=gym.spec(task.env_id),
                algorithm_name="D4RL waypoint controller + N(0, 0.5) action noise (df-agent regeneration)",
                ref_min_score=task.ref_min_score,
                ref_max_score=task.ref_max_score,
                description=(
                    f"maze2d-{maze} offline data regenerated by df-agent with D4RL's recipe: {num_steps} steps, "
                    f"{num_chains} continuous runs, seed {seed}, {rollouts.seconds:.1f} s of simulation."
                ),
                data_format="hdf5",
            )
        final_path.parent.mkdir(parents=True, exist_ok=True)
        if final_path.exists():
            shutil.rmtree(final_path)
        os.replace(scratch / dataset_id, final_path)  # the one step that makes the dataset visible
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return load_local(dataset_id)


def load_local(dataset_id: str) -> minari.MinariDataset:
    """Load a dataset already on disk, never downloading; a missing or corrupt one raises DatasetError."""
    path = get_dataset_path(dataset_id)
    if not path.exists():
        raise DatasetError(f"dataset {dataset_id} is not on this machine (looked in {path})")
    register_tasks()
    try:
        dataset = minari.load_dataset(dataset_id, download=False)
        if dataset.total_steps < 1 or dataset.total_episodes < 1:
            raise ValueError("it holds no steps")
        # Minari reads only metadata.json on load; open the first and last episodes to catch a damaged data file.
        for episode in dataset.iterate_episodes([0, dataset.total_episodes - 1]):
            if len(episode.actions) < 1:
                raise ValueError(f"episode {episode.id} is empty")
    except Exception as error:  # Minari/h5py raise many kinds of errors on a damaged folder
        raise DatasetError(
            f"dataset {dataset_id} at {path} is corrupt or incomplete ({type(error).__name__}: {error}); "
            f"delete that folder and regenerate it with `python -m envs.datasets --maze <maze> --overwrite`"
        ) from error
    return dataset


def load_dataset(env_id: str, source: str = "auto", generate: bool = True, progress: bool = True):
    """The offline dataset for a maze2d task (single- and multi-goal tasks of a maze share one dataset).

    ``source="auto"``: the public ``D4RL/pointmaze/<maze>-v2`` if it is already on disk, else our local one,
    generated on first use (``generate=False`` raises instead). ``"public"`` or ``"local"`` pick one.
    Nothing is ever downloaded: this machine may have no network, and Minari's download would hang or fail.
    """
    maze = get_task(env_id).maze
    if source not in ("auto", "public", "local"):
        raise ValueError(f"source must be 'auto', 'public' or 'local', got {source!r}")
    if source in ("auto", "public"):
        public = public_dataset_id(maze)
        if get_dataset_path(public).exists():
            return load_local(public)
        if source == "public":
            raise DatasetError(
                f"the public dataset {public} is not on this machine and df-agent does not download datasets; "
                f"copy it into {get_dataset_path()} or generate the equivalent local one with "
                f"`{generation_command(maze)}`"
            )
    local = local_dataset_id(maze)
    if get_dataset_path(local).exists():
        return load_local(local)
    if not generate:
        raise DatasetError(f"dataset {local} is missing; generate it with `{generation_command(maze)}`")
    with generation_lock(local):
        if get_dataset_path(local).exists():  # another process generated it while this one waited
            return load_local(local)
        print(
            f"[df-agent] dataset {local} not found in {get_dataset_path()}: generating it now by D4RL's recipe "
            f"({DEFAULT_NUM_STEPS[maze]:,} steps; a few minutes on a laptop CPU, done once)."
        )
        return generate_dataset(maze, progress=progress)


@dataclass
class Transitions:
    """A dataset flattened into arrays, for learners that sample transitions or windows (float32 throughout).

    Episode k covers rows ``episode_starts[k] : episode_starts[k] + episode_lengths[k]``. Episodes of one continuous
    run of the point follow each other; ``segment_ids`` numbers the maximal stretches of episodes where each one
    starts exactly where the previous one ended, so that windows longer than an episode can be cut within them.
    """

    observations: np.ndarray  # (N, 4): x, y, vx, vy before the action
    actions: np.ndarray  # (N, 2)
    next_observations: np.ndarray  # (N, 4)
    goals: np.ndarray  # (N, 2): the goal of the episode the step belongs to
    rewards: np.ndarray  # (N,): sparse, against that goal
    episode_ids: np.ndarray  # (N,)
    segment_ids: np.ndarray  # (N,)
    episode_starts: np.ndarray  # (E,)
    episode_lengths: np.ndarray  # (E,)

    def __len__(self) -> int:
        return len(self.actions)


_CACHE_NAME = "df_agent_transitions.npz"


def load_transitions(env_id: str, source: str = "auto", generate: bool = True, progress: bool = True) -> Transitions:
    """``load_dataset`` flattened into ``Transitions``; cached as one .npz file inside the dataset's folder.

    Reading a Minari HDF5 file episode by episode takes minutes for millions of steps; the cache makes later
    loads take about a second. Regenerating the dataset replaces its folder, and the cache with it.
    """
    dataset = load_dataset(env_id, source=source, generate=generate, progress=progress)
    cache = get_dataset_path(dataset.spec.dataset_id) / _CACHE_NAME
    if cache.exists():
        try:
            with np.load(cache) as data:
                return Transitions(**{name: data[name] for name in Transitions.__dataclass_fields__})
        except Exception:  # a cache from an interrupted write or an older layout: rebuild it
            cache.unlink(missing_ok=True)
    transitions = _flatten(dataset, progress)
    partial = cache.with_suffix(f".{uuid.uuid4().hex}.partial.npz")
    np.savez(partial, **{name: getattr(transitions, name) for name in Transitions.__dataclass_fields__})
    os.replace(partial, cache)
    return transitions


def _flatten(dataset: minari.MinariDataset, progress: bool) -> Transitions:
    parts: dict[str, list] = {name: [] for name in ("observations", "actions", "next_observations", "goals", "rewards")}
    lengths, segment_of_episode = [], []
    previous_last_state = None
    segment = -1
    episodes = dataset.iterate_episodes()
    for episode in tqdm(episodes, total=dataset.total_episodes, desc="read dataset", disable=not progress):
        states = np.asarray(episode.observations["observation"], dtype=np.float32)
        n = len(episode.actions)
        continuous = previous_last_state is not None and np.array_equal(states[0], previous_last_state)
        segment += 0 if continuous else 1
        previous_last_state = states[-1]
        parts["observations"].append(states[:-1])
        parts["next_observations"].append(states[1:])
        parts["actions"].append(np.asarray(episode.actions, dtype=np.float32))
        parts["goals"].append(np.asarray(episode.observations["desired_goal"][:-1], dtype=np.float32))
        parts["rewards"].append(np.asarray(episode.rewards, dtype=np.float32))
        lengths.append(n)
        segment_of_episode.append(segment)
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return Transitions(
        **{name: np.concatenate(chunks) for name, chunks in parts.items()},
        episode_ids=np.repeat(np.arange(len(lengths)), lengths),
        segment_ids=np.repeat(np.asarray(segment_of_episode), lengths),
        episode_starts=starts,
        episode_lengths=lengths,
    )


@dataclass
class GenerateArgs:
    """Regenerate a maze2d offline dataset locally, in Minari's format."""

    maze: str = "umaze"
    """which maze: umaze, medium or large"""
    num_steps: int | None = None
    """total steps (default: D4RL's 1M / 2M / 4M for umaze / medium / large)"""
    seed: int = 0
    """seed of the goals, controller jitter and action noise"""
    num_chains: int = 256
    """continuous runs simulated side by side (1 reproduces D4RL's single run, slowly)"""
    dataset_id: str | None = None
    """Minari id to write (default: df-agent/pointmaze/<maze>-v2)"""
    overwrite: bool = False
    """replace an existing dataset of that id"""


def main() -> None:
    import tyro

    args = tyro.cli(GenerateArgs)
    start = time.perf_counter()
    dataset = generate_dataset(
        args.maze, args.num_steps, args.seed, args.num_chains, args.dataset_id, overwrite=args.overwrite
    )
    seconds = time.perf_counter() - start
    print(
        f"wrote {dataset.spec.dataset_id}: {dataset.total_steps:,} steps in {dataset.total_episodes:,} episodes, "
        f"{seconds:.1f} s in all ({dataset.total_steps / seconds:,.0f} steps/s including writing)"
    )


if __name__ == "__main__":
    main()
