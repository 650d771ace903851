"""Checkpoint files, for every script of the project: written atomically, read with errors that name the problem
and the fix. (The payloads hold numpy and RNG states, so files are read with ``weights_only=False``: load only
checkpoints you trust, as with any pickle.)
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch


def save_atomically(payload, path: str | os.PathLike) -> Path:
    """``torch.save`` into a hidden temporary file beside ``path``, then rename it into place: a crash or an
    interrupt mid-write never leaves a truncated file under ``path`` (the previous checkpoint stays until then)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        torch.save(payload, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_checkpoint_file(path: str | os.PathLike, device: torch.device | str | None, remedy: str, kind: str = "a"):
    """The payload of a torch checkpoint file. A missing file raises ``FileNotFoundError`` and an unreadable one
    ``ValueError``, both ending with ``remedy`` (what to run or pass instead); ``kind`` names the expected file in
    the message ("a" for any checkpoint, e.g. "a Diffuser")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; {remedy}")
    try:
        return torch.load(path, map_location=device or "cpu", weights_only=False)
    except Exception as error:  # torch raises several types for a truncated or foreign file
        raise ValueError(
            f"{path} is corrupt or not {kind} checkpoint ({type(error).__name__}: {error}); {remedy}"
        ) from error
