"""Gaussian diffusion pieces shared by Diffusion Forcing and Diffuser: noise schedules, parameterizations, DDIM.

Noise levels are integers k in {0, ..., K}: level 0 is the clean token, level K is (nearly) pure noise, and
``alphas_cumprod[k]`` is the signal fraction at level k (``alphas_cumprod[0] = 1``). Every function takes levels
per token (tensors broadcastable against the tokens' leading dimensions), as Diffusion Forcing needs: each token
carries its own level (paper Section 3.2).
"""

from __future__ import annotations

import math

import torch

PREDICTIONS = ("x0", "epsilon", "v")


def linear_betas(num_levels: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule (the DF paper uses it for maze planning, Appendix B.4)."""
    return torch.linspace(beta_start, beta_end, num_levels, dtype=torch.float64)


def cosine_betas(num_levels: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule."""
    steps = torch.arange(num_levels + 1, dtype=torch.float64) / num_levels
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(max=0.999)


class NoiseSchedule(torch.nn.Module):
    """A schedule of K noise levels with per-token forward diffusion, conversions and a DDIM step."""

    def __init__(self, num_levels: int = 1000, kind: str = "linear"):
        super().__init__()
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(
                f"num_levels must be a positive integer, got {num_levels!r}; the kind comes second, "
                "as in NoiseSchedule(1000, 'linear')"
            )
        if kind == "linear":
            betas = linear_betas(num_levels)
        elif kind == "cosine":
            betas = cosine_betas(num_levels)
        else:
            raise ValueError(f"unknown noise schedule {kind!r}; use 'linear' or 'cosine'")
        self.num_levels = num_levels
        self.kind = kind
        alphas_cumprod = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        # Tables of the per-level coefficients: planning looks them up thousands of times per plan, for a handful of
        # tokens each, where computing them per call cost more than the arithmetic they feed.
        alphas_cumprod = self.alphas_cumprod
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt(), persistent=False)
        self.register_buffer(
            "sqrt_one_minus_alphas_cumprod", (1 - alphas_cumprod).clamp(min=0).sqrt(), persistent=False
        )

    def _coefficients(self, levels: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(alpha_bar) and sqrt(1 - alpha_bar) at ``levels``, shaped to broadcast against ``like``."""
        levels = levels.long()
        shape = (*levels.shape, *([1] * (like.dim() - levels.dim())))
        return self.sqrt_alphas_cumprod[levels].view(shape), self.sqrt_one_minus_alphas_cumprod[levels].view(shape)

    def add_noise(self, x0: torch.Tensor, levels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward diffusion q(x_k | x_0), each token to its own level."""
        a, s = self._coefficients(levels, x0)
        return a * x0 + s * noise

    def to_x0(self, x_k: torch.Tensor, levels: torch.Tensor, output: torch.Tensor, prediction: str) -> torch.Tensor:
        """The clean-token estimate from a network output in any parameterization."""
        a, s = self._coefficients(levels, x_k)
        if prediction == "x0":
            return output
        if prediction == "epsilon":
            return (x_k - s * output) / a
        if prediction == "v":
            return a * x_k - s * output
        raise ValueError(f"unknown prediction {prediction!r}; use one of {PREDICTIONS}")

    def target(self, x0: torch.Tensor, levels: torch.Tensor, noise: torch.Tensor, prediction: str) -> torch.Tensor:
        """What a network trained with ``prediction`` should output for (x0, noise) at ``levels``."""
        a, s = self._coefficients(levels, x0)
        if prediction == "x0":
            return x0
        if prediction == "epsilon":
            return noise
        if prediction == "v":
            return a * noise - s * x0
        raise ValueError(f"unknown prediction {prediction!r}; use one of {PREDICTIONS}")

    def epsilon(self, x_k: torch.Tensor, levels: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The noise implied by a token at level k and a clean estimate (undefined at level 0: returns 0)."""
        a, s = self._coefficients(levels, x_k)
        return torch.where(s > 0, (x_k - a * x0) / s.clamp(min=1e-12), torch.zeros_like(x_k))

    def guidance_weight(self, levels: torch.Tensor, next_levels: torch.Tensor) -> torch.Tensor:
        """Per-token weight of a guidance step taken with the DDIM step from ``levels`` to ``next_levels``.

        ``(1 - abar_k) - sqrt(1 - abar_k) * sqrt(1 - abar_next)``, the factor the DF authors' planner applies to the
        guidance gradient: large where a step removes much noise, ~0 at the first steps from pure noise, and exactly
        0 for a token that stays at its level and for the step to the clean token, so guidance never pushes a final
        token off the data manifold.
        """
        alpha_bar = self.alphas_cumprod[levels.long()]
        alpha_bar_next = self.alphas_cumprod[next_levels.long()]
        weight = (1 - alpha_bar) - (1 - alpha_bar).sqrt() * (1 - alpha_bar_next).sqrt()
        no_guidance = (next_levels == 0) | (next_levels >= levels)
        return torch.where(no_guidance, torch.zeros_like(weight), weight.clamp(min=0))

    def ddim_step(
        self,
        x_k: torch.Tensor,
        levels: torch.Tensor,
        next_levels: torch.Tensor,
        x0: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Move every token from its own level to its own next level (<= level) given a clean estimate ``x0``.

        Corner cases (paper Appendix B.5): a token at level 0 stays as it is; a token that must stay at a level
        k > 0 is resampled (denoised to ``x0`` then diffused back to k with fresh noise), which lets guidance move
        it and gives Monte Carlo Guidance distinct samples; a token whose next level is 0 becomes ``x0``.
        """
        if (next_levels > levels).any():
            raise ValueError("DDIM moves tokens only towards lower noise levels")
        a_next, s_next = self._coefficients(next_levels, x_k)
        a, s = self._coefficients(levels, x_k)
        eps = self.epsilon(x_k, levels, x0)
        # drawn for every step, eta 0 included: the stay tokens' resampling uses it and the random stream stays one
        fresh = torch.randn(x_k.shape, generator=generator, device=x_k.device, dtype=x_k.dtype)
        if eta == 0:  # deterministic DDIM, the planner's default: sigma = 0 (the general form below gives the same)
            moved = a_next * x0 + s_next.square().sqrt() * eps
        else:
            # DDIM's sigma for eta > 0 (Song et al., eq. 16), per token.
            alpha_bar, alpha_bar_next = a**2, a_next**2
            variance = (1 - alpha_bar_next) / (1 - alpha_bar).clamp(min=1e-12) * (1 - alpha_bar / alpha_bar_next)
            sigma = eta * variance.clamp(min=0).sqrt()
            direction = (s_next**2 - sigma**2).clamp(min=0).sqrt()
            moved = a_next * x0 + direction * eps + sigma * fresh
        stay = (next_levels == levels).view(*levels.shape, *([1] * (x_k.dim() - levels.dim())))
        resampled = a * x0 + s * fresh
        out = torch.where(stay, resampled, moved)
        clean_already = (levels == 0).view_as(stay)
        return torch.where(clean_already, x_k, out)
