"""Scheduling matrices of Diffusion Forcing (paper Section 3.3, Appendix D.7).

A scheduling matrix has one row per sampling step and one column per token; entry (m, t) is the denoising-step
index of token t after row m, in {0, ..., S} where S is the number of sampling (DDIM) steps: S is pure noise and
0 is clean. Row 0 is where sampling starts, the last row is all 0, and no token's index ever increases from one row
to the next. ``to_noise_levels`` maps indices to the model's noise levels {0, ..., K}.
"""

from __future__ import annotations

import numpy as np

SCHEDULES = ("pyramid", "full_sequence", "autoregressive", "stabilized_autoregressive")


def pyramid(num_tokens: int, num_steps: int, uncertainty_scale: float = 1.0) -> np.ndarray:
    """Far-future tokens stay noisier than near ones: row m puts token t at S - m + scale * t, clipped to [0, S]."""
    if uncertainty_scale < 0:
        raise ValueError(f"uncertainty_scale must be >= 0, got {uncertainty_scale}")
    offsets = np.ceil(uncertainty_scale * np.arange(num_tokens)).astype(np.int64)
    rows = num_steps + int(offsets[-1]) + 1
    m = np.arange(rows)[:, None]
    return np.clip(num_steps - m + offsets[None, :], 0, num_steps)


def full_sequence(num_tokens: int, num_steps: int) -> np.ndarray:
    """Every token at the same level, as in full-sequence diffusion (Diffuser)."""
    return np.repeat(np.arange(num_steps, -1, -1)[:, None], num_tokens, axis=1)


def autoregressive(num_tokens: int, num_steps: int) -> np.ndarray:
    """One token at a time, fully denoised before the next one starts (next-token prediction style)."""
    return stabilized_autoregressive(num_tokens, num_steps, stabilization_step=0)


def stabilized_autoregressive(num_tokens: int, num_steps: int, stabilization_step: int = 1) -> np.ndarray:
    """Autoregressive, but each finished token is held at a small noise index while later tokens are generated,
    so the model conditions on slightly noisy history (paper Section 3.4 / Appendix, 'stabilization'); a final row
    brings every token to 0."""
    if not 0 <= stabilization_step < num_steps:
        raise ValueError(f"stabilization_step must be in [0, {num_steps}), got {stabilization_step}")
    rows = [np.full(num_tokens, num_steps)]
    for t in range(num_tokens):
        for step in range(num_steps - 1, stabilization_step - 1, -1):
            row = rows[-1].copy()
            row[t] = step
            rows.append(row)
    if rows[-1].any():
        rows.append(np.zeros(num_tokens, dtype=np.int64))
    return np.stack(rows).astype(np.int64)


def make_schedule(name: str, num_tokens: int, num_steps: int, **kwargs) -> np.ndarray:
    """A scheduling matrix by name (one of ``SCHEDULES``)."""
    builders = {
        "pyramid": pyramid,
        "full_sequence": full_sequence,
        "autoregressive": autoregressive,
        "stabilized_autoregressive": stabilized_autoregressive,
    }
    if name not in builders:
        raise ValueError(f"unknown schedule {name!r}; valid schedules: {', '.join(SCHEDULES)}")
    return builders[name](num_tokens, num_steps, **kwargs)


def validate_schedule(matrix, num_tokens: int, num_steps: int) -> np.ndarray:
    """Check a user's scheduling matrix and return it as an int array; a clear ValueError names what is wrong."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[1] != num_tokens or matrix.shape[0] < 2:
        raise ValueError(f"scheduling matrix must have shape (rows >= 2, {num_tokens} tokens), got {matrix.shape}")
    if not np.issubdtype(matrix.dtype, np.integer):
        if not np.all(np.isfinite(matrix)) or not np.all(matrix == np.round(matrix)):
            raise ValueError("scheduling matrix entries must be integers (denoising-step indices)")
        matrix = matrix.astype(np.int64)
    if matrix.min() < 0 or matrix.max() > num_steps:
        raise ValueError(
            f"scheduling matrix entries must lie in [0, {num_steps}], got [{matrix.min()}, {matrix.max()}]"
        )
    if np.any(np.diff(matrix, axis=0) > 0):
        row = int(np.argwhere(np.diff(matrix, axis=0) > 0)[0, 0]) + 1
        raise ValueError(f"scheduling matrix row {row} raises a token's noise; rows must be non-increasing")
    if np.any(matrix[-1] != 0):
        raise ValueError("the last row of a scheduling matrix must be all 0 (every token clean)")
    return matrix.astype(np.int64)


def to_noise_levels(matrix: np.ndarray, num_steps: int, num_levels: int) -> np.ndarray:
    """Map denoising-step indices {0..S} to noise levels {0..K}, evenly spaced as in DDIM."""
    return np.round(np.asarray(matrix) * (num_levels / num_steps)).astype(np.int64)


def warm_start(levels: np.ndarray, num_warm: int, warm_level: int) -> np.ndarray:
    """A level matrix (rows, T) entered part way for a warm start: the first ``num_warm`` tokens start from a
    partially noised previous estimate at ``warm_level`` instead of pure noise.

    Every entry of the warm tokens' columns is clipped to at most ``warm_level``, then rows that change nothing
    (equal to the row before them) are dropped, so sampling skips the steps the warm tokens no longer need; the other
    tokens keep their own levels (row 0 is still where they start). The result is checked like any matrix.
    """
    levels = np.asarray(levels, dtype=np.int64)
    if not 0 <= num_warm <= levels.shape[1]:
        raise ValueError(f"num_warm must be in [0, {levels.shape[1]}], got {num_warm}")
    if warm_level < 0:
        raise ValueError(f"warm_level must be >= 0, got {warm_level}")
    clipped = levels.copy()
    clipped[:, :num_warm] = np.minimum(clipped[:, :num_warm], warm_level)
    keep = np.ones(len(clipped), dtype=bool)
    keep[1:] = np.any(clipped[1:] != clipped[:-1], axis=1)
    clipped = clipped[keep]
    if len(clipped) < 2:  # every token already clean in row 0: one row that changes nothing, to keep the form
        clipped = np.concatenate([clipped, clipped[-1:]])
    return validate_schedule(clipped, levels.shape[1], int(max(levels.max(), warm_level, 1)))
