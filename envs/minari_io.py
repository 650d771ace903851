"""Minari datasets on this machine: written atomically, loaded without ever downloading, generated once under a lock.

Minari keeps its datasets in one folder, ``MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``). Every function
here takes that folder as ``root`` (None: Minari's own) and never sets the variable for the process; only the write
points Minari at its scratch folder, for the duration of the write (``minari.create_dataset_from_buffers`` has no
other way to be told where to write).

Datasets are written atomically: into a scratch folder beside the datasets folder, then renamed into place, so an
interrupted run never leaves anything that loads. The maze2d datasets (``envs.datasets``) and the OGBench copies
(``envs.ogbench_datasets``) are both written and read here.
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gymnasium as gym
import minari
from minari.data_collector.episode_buffer import EpisodeBuffer
from minari.storage.datasets_root_dir import get_dataset_path

from envs.tasks import register_tasks


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or corrupt; the message says how to fix it."""


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """The datasets folder: ``root``, or Minari's own when None."""
    return get_dataset_path() if root is None else Path(root)


def dataset_path(dataset_id: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of dataset ``dataset_id`` in the datasets folder ``root`` (None: Minari's)."""
    return get_dataset_path(dataset_id) if root is None else Path(root) / dataset_id


@contextmanager
def _minari_writes_to(path: Path) -> Iterator[None]:
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
def generation_lock(dataset_id: str, root: str | os.PathLike | None = None) -> Iterator[None]:
    """Hold an exclusive lock on generating ``dataset_id``, so that two processes that both find it missing (two
    training scripts started at once) generate it once: the second waits, then finds it on disk. POSIX advisory
    lock (``fcntl.flock``), released by the OS if the holder dies; a no-op where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    folder = datasets_root(root)
    lock_path = folder.parent / f".{folder.name}.locks" / (dataset_id.replace("/", "__") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_minari_dataset(
    dataset_id: str,
    episodes: list[EpisodeBuffer],
    env_id: str,
    root: str | os.PathLike | None = None,
    **metadata,
) -> Path:
    """Write ``episodes`` as the HDF5 Minari dataset ``dataset_id`` of the Gymnasium task ``env_id`` (its
    evaluation task too), atomically, replacing any dataset of that id; returns its folder. ``metadata``: further
    arguments of ``minari.create_dataset_from_buffers`` (``algorithm_name``, ``description``, reference scores...).
    """
    final_path = dataset_path(dataset_id, root)
    folder = datasets_root(root)
    scratch = folder.parent / f".{folder.name}.partial" / uuid.uuid4().hex
    try:
        with _minari_writes_to(scratch), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is set to None", category=UserWarning)
            minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=episodes,
                env=gym.spec(env_id),
                eval_env=gym.spec(env_id),
                data_format="hdf5",
                **metadata,
            )
        final_path.parent.mkdir(parents=True, exist_ok=True)
        if final_path.exists():
            shutil.rmtree(final_path)
        os.replace(scratch / dataset_id, final_path)  # the one step that makes the dataset visible
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final_path


def load_local(dataset_id: str, root: str | os.PathLike | None = None) -> minari.MinariDataset:
    """Load a dataset already on disk, never downloading; a missing or corrupt one raises DatasetError."""
    path = dataset_path(dataset_id, root)
    if not path.exists():
        raise DatasetError(f"dataset {dataset_id} is not on this machine (looked in {path})")
    register_tasks()
    try:
        if not (path / "data").exists():
            raise FileNotFoundError(f"{path} has no data folder")
        dataset = minari.MinariDataset(path / "data")
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
