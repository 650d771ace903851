import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


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


def _load_script(name: str):
    """Import ``scripts/<name>.py`` afresh (the scripts are files, not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script():
    """``load_script("df_maze2d")``: one of the scripts as a module, to call its ``Args`` and ``main``."""
    return _load_script


def _reference_sample(model, schedule, z0, levels, cost=None, scale=0.0, generator=None):
    """Algorithm 2 written plainly: no latent cache, every token re-run from z0 at every row, plain guidance. Each
    row steps the tokens from the first one still to change on (a leading token clean in this row and the next is
    done), so the fresh noise of tokens held at a level (autoregressive) is drawn as the sampler draws it."""
    batch, num_tokens = z0.shape[0], levels.shape[1]
    lv_all = torch.as_tensor(levels)
    x = torch.randn(batch, num_tokens, model.config.token_dim, generator=generator)
    x = schedule.add_noise(torch.zeros_like(x), lv_all[0].expand(batch, -1), x)
    for m in range(len(levels) - 1):
        lv, nlv = lv_all[m].expand(batch, -1), lv_all[m + 1].expand(batch, -1)
        done = 0
        while done < num_tokens and levels[m, done] == 0 and levels[m + 1, done] == 0:
            done += 1
        xin = x.detach().requires_grad_(True)
        with torch.enable_grad():
            x0, _ = model(z0, xin, lv)
            grad = torch.autograd.grad(cost(x0).sum(), xin)[0] if cost is not None else torch.zeros_like(x)
        weight = schedule.guidance_weight(lv, nlv)[..., None]
        stepped = schedule.ddim_step(x[:, done:], lv[:, done:], nlv[:, done:], x0[:, done:].detach(), 0.0, generator)
        x = torch.cat([x[:, :done], stepped - scale * (weight * grad)[:, done:]], dim=1).detach()
    return x


@pytest.fixture(scope="session")
def reference_sample():
    """The sampler's independent expectation (Algorithm 2 without the latent cache), for any backbone."""
    return _reference_sample
