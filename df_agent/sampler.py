"""Sampling with guidance (paper Algorithm 2) over any scheduling matrix, with Monte Carlo Guidance.

Each row of the matrix moves every token from its level to the next row's level with a DDIM step. With a cost,
the step is followed by a guidance step ``x -= scale * w_k * d cost(x0_hat(x)) / d x``: the clean-token prediction
of every token comes out of the latent chain, so a cost on far-future tokens moves earlier tokens too (Section 3.4).
``w_k`` (``NoiseSchedule.guidance_weight``) scales each token's step by the noise its DDIM step removes and is 0 on
the step to the clean token, as in the authors' planner. A row whose weight is 0 for every token takes no gradient, and
with ``min_guidance_weight`` neither does a row whose weights all fall below that fraction of the plan's peak.

Monte Carlo Guidance (Section 3.4, Appendix C.5): the cost is averaged over ``mcg_samples`` futures of the plan,
the plan's own clean estimate plus ``mcg_samples - 1`` redraws of every token's clean estimate from the plan's own
latent chain (``redraw_clean_estimates``), and its gradient is taken with respect to the plan alone
(``monte_carlo_guidance_cost``): an estimate of the gradient of the expected cost-to-go. With one sample it is
plain guidance.

Leading tokens that are clean in two consecutive rows no longer change; the model's state after them is cached
(``CausalModel.advance``): the RNN's latent is never recomputed, the transformer keeps their embeddings and
recomputes attention over them (no KV cache).

Any ``df_agent.model.CausalModel`` backbone serves: the sampler calls the model and hands its states back to it, and
"latent" below means the backbone's state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from df_agent.diffusion import NoiseSchedule
from df_agent.model import CausalModel


@dataclass
class SampleResult:
    tokens: torch.Tensor  # (B, T, D) clean tokens
    levels: np.ndarray  # (rows, T) noise level of every token after each row
    history: list[torch.Tensor] | None = None  # per row, the (B, T, D) clean-token estimates (with return_history)


def _model_x0(model, schedule, z, tokens, levels, prediction):
    level_batch = levels.expand(tokens.shape[0], -1)
    output, _ = model(z, tokens, level_batch)
    return schedule.to_x0(tokens, level_batch, output, prediction)


def _advance(model, state, tokens, levels):
    """The state after ``tokens``: ``CausalModel.advance``; a bare module with only ``forward`` (a test's oracle) is
    taken to return latents as the RNN does, the last one being the state."""
    if isinstance(model, CausalModel):
        return model.advance(state, tokens, levels)
    return model(state, tokens, levels)[1][:, -1]


def redraw_clean_estimates(
    model: CausalModel,
    schedule: NoiseSchedule,
    z_prev: torch.Tensor,
    latents: torch.Tensor,
    x0: torch.Tensor,
    levels: torch.Tensor,
    num_draws: int,
    prediction: str = "x0",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Monte Carlo Guidance's futures (paper Section 3.4): ``num_draws`` new clean estimates of every token, each
    drawn by re-noising the plan's estimate ``x0`` (B, T, D) to the token's level ``levels`` (T,) and denoising it
    again from the plan's own latent before that token (``z_prev`` (B, latent) for the first, ``latents`` (B, T,
    latent) after each; for any backbone, the state before the plan and ``forward``'s per-token states, see
    ``CausalModel.predict_each_alone``). The plan's latent chain is kept, so every draw is a possible completion of
    the same plan; tokens still at high noise get diverse draws, nearly clean ones almost the plan's. Differentiable
    in ``x0`` and the latents, so a cost averaged over the draws has a gradient with respect to the plan. Returns
    (num_draws * B, T, D), draw-major like ``Tensor.repeat``.
    """
    batch, num_tokens, token_dim = x0.shape
    noise = torch.randn((num_draws, *x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
    level_grid = levels.expand(num_draws, batch, num_tokens)
    renoised = schedule.add_noise(x0.expand(num_draws, -1, -1, -1), level_grid, noise)
    output = model.predict_each_alone(z_prev, latents, renoised, level_grid)  # each token alone after its past
    draws = schedule.to_x0(renoised, level_grid, output, prediction)
    return draws.view(num_draws * batch, num_tokens, token_dim)


def monte_carlo_guidance_cost(
    cost: Callable[[torch.Tensor], torch.Tensor],
    prefix: torch.Tensor,
    estimate: torch.Tensor,
    redraws: torch.Tensor | None = None,
) -> torch.Tensor:
    """Monte Carlo Guidance's objective (paper Section 3.4): the cost summed over the batch and averaged over the
    plan's futures, the guidance step being minus its gradient with respect to the plan.

    Every future is the whole plan, the final tokens ``prefix`` (B, P, D) followed by clean estimates of the active
    tokens: the plan's own ``estimate`` (B, T, D), then each of ``redraws`` ((S - 1) * B, T, D, draw-major, from
    ``redraw_clean_estimates``), S futures in all. ``cost`` maps (N, P + T, D) tokens to (N,) costs. Without
    redraws it is the plain guidance cost ``cost(cat(prefix, estimate)).sum()``. The prefix is final and the sampler
    hands it in detached: the gradient reaches the plan through ``estimate`` and ``redraws`` only.
    """
    plan = torch.cat([prefix, estimate], dim=1)
    if redraws is None:
        return cost(plan).sum()
    batch = estimate.shape[0]
    draws, remainder = divmod(redraws.shape[0], batch)
    if remainder or draws < 1:
        raise ValueError(f"redraws must hold (S - 1) * {batch} futures, got {redraws.shape[0]}")
    futures = torch.cat([plan, torch.cat([prefix.repeat(draws, 1, 1), redraws], dim=1)])
    costs = cost(futures)  # one call for all S futures, the plan's first: each is costed on its own
    return (costs[:batch].sum() + costs[batch:].sum()) / (draws + 1)


def sample(
    model: CausalModel,
    schedule: NoiseSchedule,
    z0: torch.Tensor,
    level_matrix: np.ndarray,
    cost: Callable[[torch.Tensor], torch.Tensor] | None = None,
    guidance_scale: float | torch.Tensor = 0.0,
    mcg_samples: int = 1,
    prediction: str = "x0",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    gradient_mask: torch.Tensor | None = None,
    return_history: bool = False,
    initial_tokens: torch.Tensor | None = None,
    initial_mask: torch.Tensor | None = None,
    min_guidance_weight: float = 0.0,
) -> SampleResult:
    """Generate tokens from initial latents ``z0`` (B, latent; a backbone's ``initial_latent``) following
    ``level_matrix`` (rows, T) of noise levels.

    Row 0 of the matrix is where every token starts (usually level K: white noise), the last row must be all 0.
    ``guidance_scale`` is one number or one per plan (B,). ``gradient_mask`` (token_dim,), if given, keeps the
    guidance step to the token dimensions where it is nonzero (e.g. the actions' only). ``return_history`` keeps
    every row's clean-token estimates (the plan as it sharpens, for figures).

    Warm start (SDEdit-style): where ``initial_mask`` (B, T) is true, a token starts from ``initial_tokens``
    (B, T, D), a previous clean estimate, noised to its row-0 level, instead of from pure noise; the matrix then
    usually starts those tokens below K (``df_agent.schedules.warm_start``). Elsewhere tokens start as without it.

    ``min_guidance_weight`` (a fraction, 0: off) skips the gradient on rows whose largest guidance weight is below
    that fraction of the largest over the whole matrix. The weight nearly vanishes on the first rows down from pure
    noise (a 10-step row from level K carries under 1% of the peak weight), yet each guided row costs a forward
    and backward pass, MCG's redraws included; such rows then step unguided, with the same random draws.
    """
    if mcg_samples < 1:
        raise ValueError(f"mcg_samples must be at least 1, got {mcg_samples}")
    if not 0.0 <= min_guidance_weight <= 1.0:
        raise ValueError(f"min_guidance_weight is a fraction of the peak weight, in [0, 1]; got {min_guidance_weight}")
    scale = torch.as_tensor(guidance_scale, dtype=torch.float32, device=z0.device).reshape(-1)
    if len(scale) not in (1, z0.shape[0]):
        raise ValueError(f"guidance_scale must be a number or one per plan ({z0.shape[0]}), got {len(scale)} values")
    if bool((scale > 0).any()) and cost is None:
        raise ValueError("guidance_scale > 0 needs a cost")
    device = z0.device
    batch, num_tokens = z0.shape[0], level_matrix.shape[1]
    token_dim = model.config.token_dim
    levels_all = torch.as_tensor(level_matrix, device=device, dtype=torch.long)
    x = torch.randn(batch, num_tokens, token_dim, generator=generator, device=device)
    start = torch.zeros_like(x)
    if initial_tokens is not None:
        mask = torch.ones(batch, num_tokens, dtype=torch.bool, device=device) if initial_mask is None else initial_mask
        mask = mask.to(device=device, dtype=torch.bool)
        if initial_tokens.shape != x.shape or mask.shape != x.shape[:2]:
            raise ValueError(
                f"initial_tokens must have shape {tuple(x.shape)} and initial_mask {tuple(x.shape[:2])}, got "
                f"{tuple(initial_tokens.shape)} and {tuple(mask.shape)}"
            )
        start = torch.where(mask[..., None], initial_tokens.to(device=device, dtype=x.dtype), start)
    x = schedule.add_noise(start, levels_all[0].expand(batch, -1), x)
    cached, z_cached = 0, z0  # z after the first `cached` tokens, which are final
    guided = bool((scale > 0).any()) and cost is not None
    history = [] if return_history else None
    scale = scale.expand(z0.shape[0])[:, None, None]
    # every row's guidance weights at once (rows - 1, T): each row reads its active tokens' from here
    row_weights = schedule.guidance_weight(levels_all[:-1], levels_all[1:]) if guided else None
    weight_floor = min_guidance_weight * float(row_weights.max()) if guided and min_guidance_weight > 0 else 0.0
    for m in range(len(level_matrix) - 1):
        level, next_level = levels_all[m], levels_all[m + 1]
        final = int(torch.cumprod(((level == 0) & (next_level == 0)).long(), 0).sum())
        if final > cached:  # advance the cached latent over tokens that just became final
            with torch.no_grad():
                z_cached = _advance(model, z_cached, x[:, cached:final], level[cached:final].expand(batch, -1))
            cached = final
        active, lv, nlv = x[:, cached:], level[cached:], next_level[cached:]
        weight = row_weights[m, cached:] if guided else None
        if weight is None or not bool((weight > 0).any()) or float(weight.max()) < weight_floor:
            # Unguided, or a row whose guidance weight is 0 for every token (the step to the clean token, tokens
            # that stay) or below the floor: no gradient to take. MCG's redraw noise is drawn all the same, so the
            # random stream, and every later draw, is the one the gradient path would leave.
            with torch.no_grad():
                x0 = _model_x0(model, schedule, z_cached, active, lv, prediction)
                if guided and mcg_samples > 1:
                    torch.randn((mcg_samples - 1, *active.shape), generator=generator, device=device)
            gradient = None
        else:
            plan = active.detach().requires_grad_(True)
            with torch.enable_grad():
                level_batch = lv.expand(batch, -1)
                output, latents = model(z_cached, plan, level_batch)
                x0_plan = schedule.to_x0(plan, level_batch, output, prediction)
                redraws = None
                if mcg_samples > 1:
                    redraws = redraw_clean_estimates(
                        model, schedule, z_cached, latents, x0_plan, lv, mcg_samples - 1, prediction, generator
                    )
                total = monte_carlo_guidance_cost(cost, x[:, :cached], x0_plan, redraws)
                (gradient,) = torch.autograd.grad(total, plan)
            x0 = x0_plan.detach()
        stepped = schedule.ddim_step(active, lv.expand(batch, -1), nlv.expand(batch, -1), x0, eta, generator)
        if gradient is not None:
            if gradient_mask is not None:
                gradient = gradient * gradient_mask
            stepped = stepped - scale * gradient * weight.to(gradient.dtype)[None, :, None]
        if history is not None:
            history.append(torch.cat([x[:, :cached], x0], dim=1).detach())
        x = torch.cat([x[:, :cached], stepped.detach()], dim=1)
    return SampleResult(tokens=x, levels=level_matrix, history=history)
