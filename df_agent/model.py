"""The causal Diffusion Forcing model for low-dimensional tokens (paper Section 3.2, Appendix D.2).

z_0 = encoder(o_t); for each token, z_t = GRU(z_{t-1}, ResMLP([x_t^{k_t}, emb(k_t)])) and the clean token is
predicted from z_t by a second ResMLP. Per-token networks run on the whole sequence at once and the GRU runs as one
fused ``nn.GRU`` call, so a sequence costs one pass, not a Python loop over time. Nothing at t sees anything after t.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    token_dim: int
    obs_dim: int = 4
    latent_dim: int = 128
    width: int = 256
    depth: int = 2
    level_embedding_dim: int = 64
    num_levels: int = 1000

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.net = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(self.norm(x))


class ResMLP(nn.Module):
    """Linear in, ``depth`` pre-norm residual blocks, norm and linear out."""

    def __init__(self, in_dim: int, out_dim: int, width: int, depth: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, width),
            *[ResidualBlock(width) for _ in range(depth)],
            nn.LayerNorm(width),
            nn.SiLU(),
            nn.Linear(width, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LevelEmbedding(nn.Module):
    """Sinusoidal embedding of the integer noise level, then an MLP."""

    def __init__(self, dim: int, num_levels: int):
        super().__init__()
        self.dim = dim
        self.num_levels = num_levels
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=levels.device) / half)
        angles = levels.float()[..., None] * frequencies
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


class DiffusionForcingModel(nn.Module):
    """Causal latent dynamics with per-token noise levels; predicts each clean token (x0) from its latent."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.level_embedding = LevelEmbedding(c.level_embedding_dim, c.num_levels)
        self.z0_encoder = ResMLP(c.obs_dim, c.latent_dim, c.width, c.depth)
        self.token_encoder = ResMLP(c.token_dim + c.level_embedding_dim, c.width, c.width, c.depth)
        self.dynamics = nn.GRU(c.width, c.latent_dim, batch_first=True)
        self.observation_model = ResMLP(c.latent_dim + c.level_embedding_dim, c.token_dim, c.width, c.depth)

    def initial_latent(self, obs: torch.Tensor) -> torch.Tensor:
        """z_0 from the (normalized) current observation, (B, obs_dim) -> (B, latent)."""
        return self.z0_encoder(obs)

    def forward(
        self, z_prev: torch.Tensor, tokens: torch.Tensor, levels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Roll the latent over tokens (B, T, D) at levels (B, T) from z_prev (B, latent).

        Returns the clean-token predictions (B, T, D) and the latents z_1..z_T (B, T, latent).
        """
        embedding = self.level_embedding(levels)
        inputs = self.token_encoder(torch.cat([tokens, embedding], dim=-1))
        # The GRU runs in float32 even under mixed precision: autocast would hand cuDNN's RNN fp16 (not bf16)
        # with no loss scaling; the recurrence is a small part of the cost.
        with torch.autocast(inputs.device.type, enabled=False):
            latents, _ = self.dynamics(inputs.float(), z_prev.float().unsqueeze(0).contiguous())
        prediction = self.observation_model(torch.cat([latents, embedding], dim=-1))
        return prediction, latents

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
