import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_minari_folder(tmp_path_factory):
    """Every dataset a test writes goes to a scratch folder, never the user's ~/.minari."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path_factory.mktemp("minari") / "datasets")
    yield
    if previous is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = previous


@pytest.fixture(scope="module")
def tiny_umaze_dataset():
    """A small maze2d-umaze dataset (3,000 steps), regenerated per test module: other modules write their own."""
    from envs.datasets import generate_dataset

    return generate_dataset("umaze", num_steps=3000, num_chains=4, overwrite=True, progress=False)
