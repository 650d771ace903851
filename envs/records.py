"""Results as records: one JSON object per evaluation, with everything needed to trust and re-run it.

A record holds the metrics (each with its standard error), the per-episode arrays, the settings, the exact
command, the git commit and the machine. Records are appended to JSON-lines files under ``results/``, one line
per evaluation, written with a single append so that an interrupted run never leaves half a line.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from envs.evaluation import EvalResult

PACKAGES = ("torch", "numpy", "gymnasium", "gymnasium-robotics", "mujoco", "minari", "ogbench")


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The checkout's commit, with ``-dirty`` when tracked files have uncommitted changes (None outside git)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=cwd, capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


CPU_DETAIL = (("cpu family", "family"), ("model", "model"), ("cpu MHz", "MHz"), ("cache size", "cache"))
"""/proc/cpuinfo fields kept in a record's ``machine["cpu_detail"]`` (field, label)"""


def machine(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict:
    """What ran it: CPU (or GPU) model, threads, and the versions of the packages that shape the numbers. ``cpuinfo``:
    where Linux describes the CPU (elsewhere the file is absent and the platform's name is kept)."""
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:  # the model name is in /proc/cpuinfo on Linux, with what tells two CPUs of one name apart
        fields = {}
        for line in Path(cpuinfo).read_text().splitlines():
            if not line.strip():
                break  # the first processor's block
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        if "model name" in fields:
            info["cpu"] = fields["model name"]
        # a virtual machine may name only the vendor ("AMD EPYC"); family and model tell the generation
        detail = [f"{name} {fields[key]}" for key, name in CPU_DETAIL if fields.get(key)]
        if detail:
            info["cpu_detail"] = ", ".join(detail)
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info["packages"] = versions
    return info


def make_record(
    method: str, result: EvalResult, settings: dict | None = None, table: str | None = None, **extra
) -> dict:
    """One evaluation as a JSON-ready dict; ``table`` (the RESULTS.md table it belongs to) is kept only when given.

    ``result`` is a maze2d ``EvalResult`` or an OGBench ``envs.ogbench_eval.OGBenchEvalResult``; the latter's record
    also says ``"benchmark": "ogbench"`` and holds its own metrics and per-episode arrays (no D4RL scores)."""
    if hasattr(result, "episode_arrays"):  # OGBench: success per goal instead of D4RL scores
        episodes = result.episode_arrays()
        extra = {"benchmark": result.benchmark, **extra}
    else:
        episodes = {
            "seeds": list(result.seeds),
            "returns": result.returns.tolist(),
            "normalized_scores": result.normalized_scores.tolist(),
            "stay_scores": result.stay_scores.tolist(),
            "success": result.success.astype(bool).tolist(),
            "time_to_goal": result.time_to_goal.tolist(),
        }
    record = {
        "method": method,
        "env_id": result.env_id,
        "metrics": result.metrics(),
        "episodes": episodes,
        "seconds": result.seconds,
        "settings": settings or {},
        **provenance(),
        **extra,
    }
    if table:
        record["table"] = table
    return record


def provenance() -> dict:
    """What every record carries besides its numbers: the exact command, the git commit, the date and the machine."""
    return {
        "command": shlex.join(["python", _script_path(), *sys.argv[1:]]),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }


def make_speed_record(env_id: str, measurements: dict, settings: dict | None = None, **extra) -> dict:
    """A timing, not an evaluation (``"kind": "speed"``): ``measurements`` holds the timed quantities (e.g. control
    steps per second of ``agent.act`` in one env, seconds per replan of a batch), with the usual provenance."""
    return {"kind": "speed", "env_id": env_id, "measurements": measurements, "settings": settings or {},
            **provenance(), **extra}  # fmt: skip


def append_record(path: str | os.PathLike, record: dict) -> Path:
    """Append ``record`` as one line of the JSON-lines file ``path`` (created with its folder if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=_to_json) + "\n"
    with open(path, "a", encoding="utf-8") as file:  # one write call per line: a crash never leaves half a record
        file.write(line)
    return path


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every record of a JSON-lines file; a damaged line is an error naming the file and the line."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not a JSON record ({error}); remove or re-run that line") from None
    return records


def _script_path() -> str:
    """The running script as a user would type it: relative to the working folder when inside it."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    try:
        return str(script.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _to_json(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
