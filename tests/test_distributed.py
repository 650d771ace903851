"""Data-parallel training with torchrun (two CPU processes over gloo), the --preset flag and mixed precision."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro

from df_agent.agent import Agent
from df_agent.model import DiffusionForcingModel, ModelConfig
from df_agent.tokens import TokenLayout
from df_agent.training import TrainConfig, Trainer, WindowSampler, make_trainer
from envs.datasets import load_transitions

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "df_maze2d.py"
TINY = [
    *("--env", "maze2d-umaze", "--device", "cpu", "--frame-stack", "5", "--window-tokens", "4"),
    *("--width", "32", "--latent-dim", "32", "--depth", "1", "--batch-size", "16", "--warmup-steps", "2"),
    *("--log-every", "2", "--checkpoint-every", "2", "--eval-episodes", "0", "--print-weight-checksums"),
]
CHECKSUM = re.compile(r"^rank (\d) step (\d+) windows (\w+) weights (\w+) ema (\w+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("df_maze2d")


def torchrun(runs_dir: Path, *args: str) -> str:
    """Two training processes on this CPU; the rendezvous picks a free port (--standalone)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT)]
    result = subprocess.run(
        [*command, *TINY, "--runs-dir", str(runs_dir), *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # MINARI_DATASETS_PATH (conftest) points at the tiny dataset
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def replicas_agree(output: str, steps: range) -> None:
    """Both ranks printed every step; their weights and EMA weights agree bit for bit, their windows differ."""
    by_step: dict[int, dict[int, tuple]] = {}
    for rank, step, windows, weights, ema in CHECKSUM.findall(output):
        by_step.setdefault(int(step), {})[int(rank)] = (windows, weights, ema)
    assert sorted(by_step) == list(steps)
    for step, ranks in by_step.items():
        assert sorted(ranks) == [0, 1], step
        assert ranks[0][1:] == ranks[1][1:], f"the ranks' weights differ after step {step}"
        assert ranks[0][0] != ranks[1][0], f"both ranks drew the same windows at step {step}"
    weights = [by_step[step][0][1] for step in steps]
    assert len(set(weights)) == len(weights)  # the weights did change every step


def test_torchrun_two_processes_train_identical_replicas_and_resume(tiny_umaze_dataset, script, tmp_path):
    output = torchrun(tmp_path / "runs", "--total-steps", "4")
    replicas_agree(output, range(1, 5))
    assert "batch 16 windows per process x 2 = 32 windows (global) of 4 tokens; learning rate 0.0003" in output
    assert output.count("model: ") == 1  # rank 0 alone prints
    # rank 0 alone wrote a TensorBoard run and checkpoints: one run folder, one event file
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert {p.name for p in run_dir.iterdir() if not p.name.startswith("events")} == {
        "checkpoint.pt",
        "agent.pt",
        "summary.json",
    }
    # the checkpoint is today's format: it loads without torch.distributed and holds the replicas' weights
    assert not torch.distributed.is_initialized()
    trainer = Trainer.load(run_dir / "checkpoint.pt", device="cpu")
    final = CHECKSUM.findall(output)[-1]
    assert trainer.step == 4 and script.weight_checksum(trainer.model) == final[3]
    assert script.weight_checksum(trainer.ema_model) == final[4]
    assert not any(key.startswith("module.") for key in torch.load(run_dir / "checkpoint.pt")["model"])
    for path in (run_dir / "checkpoint.pt", run_dir / "agent.pt"):
        plan = Agent.load(path, device="cpu", ddim_steps=2, horizon_tokens=2, mcg_samples=1).plan(
            np.zeros(4, np.float32), goal=np.ones(2, np.float32)
        )
        assert np.isfinite(plan.actions).all()

    # --resume: both ranks load the checkpoint and carry on from step 4 in step
    resumed = torchrun(tmp_path / "resumed", "--total-steps", "6", "--resume", str(run_dir / "checkpoint.pt"))
    assert resumed.count("resumed from") == 1
    replicas_agree(resumed, range(5, 7))
    (run_dir,) = (tmp_path / "resumed").iterdir()
    assert Trainer.load(run_dir / "checkpoint.pt", device="cpu").step == 6


def test_the_paper_preset_sets_its_documented_values(script, capsys):
    args = script.apply_preset(script.Args(preset="paper"))
    assert (args.latent_dim, args.width, args.depth) == (128, 384, 4)
    assert (args.batch_size, args.learning_rate, args.total_steps, args.ddim_steps) == (4096, 2e-4, 120_000, 50)
    assert script.apply_preset(args) == args  # applying twice changes nothing
    config = ModelConfig(
        token_dim=TokenLayout(frame_stack=args.frame_stack).token_dim, latent_dim=128, width=384, depth=4
    )
    assert 4.0e6 < DiffusionForcingModel(config).num_parameters() < 4.4e6  # the paper's model: about 4.33M
    # the batch of 4096 is the global batch; a flag given with another value wins over the preset
    assert script.apply_preset(script.Args(preset="paper"), world_size=2).batch_size == 2048
    assert script.apply_preset(script.Args(preset="paper", total_steps=500, width=64)).total_steps == 500
    assert script.apply_preset(script.Args()) == script.Args()
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        script.apply_preset(script.Args(preset="paper"), world_size=3)
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; choose one of \['paper'\]"):
        script.apply_preset(script.Args(preset="huge"))
    assert tyro.cli(script.Args, args=["--preset", "paper"]).preset == "paper"
    with pytest.raises(SystemExit):
        tyro.cli(script.Args, args=["--preset", "huge"])
    assert "huge" in capsys.readouterr().err


def test_bf16_autocast_covers_the_training_forward_pass_only(tiny_umaze_dataset):
    """bf16 autocast (forced here on the CPU; the script turns it on only on a GPU): the loss, the gradients, the
    optimizer state and the EMA stay float32, and the loss is close to the float32 one."""
    data = load_transitions("maze2d-umaze", generate=False, progress=False)
    config = TrainConfig(window_tokens=4, batch_size=16, warmup_steps=2, ema_decay=0.9)
    model = {"latent_dim": 32, "width": 32, "depth": 1}
    trainer = make_trainer(data, TokenLayout(frame_stack=5), model, config, device="cpu", seed=0)
    batch = WindowSampler.from_transitions(data, 20).sample(16, np.random.default_rng(0))
    losses = {}
    for dtype in (None, torch.bfloat16):
        trainer.autocast_dtype = dtype
        trainer.generator.manual_seed(0)
        loss = trainer.loss(batch)
        assert loss.dtype == torch.float32
        losses[dtype] = loss.item()
    assert losses[None] != losses[torch.bfloat16] and abs(losses[None] - losses[torch.bfloat16]) < 0.05
    trainer.train_step(batch)
    tensors = [*trainer.model.parameters(), *trainer.ema_model.parameters()]
    tensors += [p.grad for p in trainer.model.parameters()]
    tensors += [v for state in trainer.optimizer.state.values() for v in state.values() if v.is_floating_point()]
    assert {t.dtype for t in tensors} == {torch.float32}
