"""Sampling with guidance (paper Algorithm 2) over any scheduling matrix, with Monte Carlo Guidance.

Each row of the matrix moves every token from its level to the next row's level with a DDIM step. With a cost,
the step is followed by a guidance step ``x -= scale * w_k * d cost(x0_hat(x)) / d x``: the clean-token prediction
of every token comes out of the latent chain, so a cost on far-future tokens moves earlier tokens too (Section 3.4).
``w_k`` (``NoiseSchedule.guidance_weight``) scales each token's step by the noise its DDIM step removes and is 0 on
the step to the clean token, as in the authors' planner.

Monte Carlo Guidance (Section 3.4, Appendix C.5): the gradient is averaged over ``mcg_samples`` futures of the
plan: the plan itself plus futures resampled from the previous row's clean-token estimate at each token's current
noise level (the resampling of Appendix B.5), i.e. an estimate of the gradient of the expected cost-to-go. With one
sample it is plain guidance.

Leading tokens that are clean in two consecutive rows no longer change; their latent is cached and never
recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from df_agent.diffusion import NoiseSchedule
from df_agent.model import DiffusionForcingModel


@dataclass
class SampleResult:
    tokens: torch.Tensor  # (B, T, D) clean tokens
    levels: np.ndarray  # (rows, T) noise level of every token after each row


def _model_x0(model, schedule, z, tokens, levels, prediction):
    level_batch = levels.expand(tokens.shape[0], -1)
    output, _ = model(z, tokens, level_batch)
    return schedule.to_x0(tokens, level_batch, output, prediction)


def sample(
    model: DiffusionForcingModel,
    schedule: NoiseSchedule,
    z0: torch.Tensor,
    level_matrix: np.ndarray,
    cost: Callable[[torch.Tensor], torch.Tensor] | None = None,
    guidance_scale: float = 0.0,
    mcg_samples: int = 1,
    prediction: str = "x0",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> SampleResult:
    """Generate tokens from initial latents ``z0`` (B, latent) following ``level_matrix`` (rows, T) of noise levels.

    Row 0 of the matrix is where every token starts (usually level K: white noise), the last row must be all 0.
    """
    if mcg_samples < 1:
        raise ValueError(f"mcg_samples must be at least 1, got {mcg_samples}")
    if guidance_scale and cost is None:
        raise ValueError("guidance_scale > 0 needs a cost")
    device = z0.device
    batch, num_tokens = z0.shape[0], level_matrix.shape[1]
    token_dim = model.config.token_dim
    levels_all = torch.as_tensor(level_matrix, device=device, dtype=torch.long)
    x = torch.randn(batch, num_tokens, token_dim, generator=generator, device=device)
    x = schedule.add_noise(torch.zeros_like(x), levels_all[0].expand(batch, -1), x)
    x0_estimate = torch.zeros_like(x)
    cached, z_cached = 0, z0  # z after the first `cached` tokens, which are final
    guided = guidance_scale > 0 and cost is not None
    model.eval()
    for m in range(len(level_matrix) - 1):
        level, next_level = levels_all[m], levels_all[m + 1]
        final = int(torch.cumprod(((level == 0) & (next_level == 0)).long(), 0).sum())
        if final > cached:  # advance the cached latent over tokens that just became final
            with torch.no_grad():
                _, latents = model(z_cached, x[:, cached:final], level[cached:final].expand(batch, -1))
            z_cached, cached = latents[:, -1], final
        active, lv, nlv = x[:, cached:], level[cached:], next_level[cached:]
        if not guided:
            with torch.no_grad():
                x0 = _model_x0(model, schedule, z_cached, active, lv, prediction)
            gradient = None
        else:
            futures = [active]
            for _ in range(mcg_samples - 1):
                noise = torch.randn(active.shape, generator=generator, device=device)
                resampled = schedule.add_noise(x0_estimate[:, cached:], lv.expand(batch, -1), noise)
                futures.append(torch.where((lv > 0)[None, :, None], resampled, active))
            stacked = torch.cat(futures).detach().requires_grad_(True)
            with torch.enable_grad():
                x0_all = _model_x0(model, schedule, z_cached.repeat(mcg_samples, 1), stacked, lv, prediction)
                # The cost sees the whole plan: the final prefix plus the active tokens' clean estimates.
                prefix = x[:, :cached].repeat(mcg_samples, 1, 1)
                total = cost(torch.cat([prefix, x0_all], dim=1)).sum()
                (grad,) = torch.autograd.grad(total, stacked)
            gradient = grad.view(mcg_samples, batch, *active.shape[1:]).mean(0)
            x0 = x0_all[:batch].detach()
        stepped = schedule.ddim_step(active, lv.expand(batch, -1), nlv.expand(batch, -1), x0, eta, generator)
        if gradient is not None:
            weight = schedule.guidance_weight(lv, nlv).to(gradient.dtype)
            stepped = stepped - guidance_scale * gradient * weight[None, :, None]
        x0_estimate = torch.cat([x0_estimate[:, :cached], x0], dim=1)
        x = torch.cat([x[:, :cached], stepped.detach()], dim=1)
    return SampleResult(tokens=x, levels=level_matrix)
