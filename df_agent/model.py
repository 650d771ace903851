"""The causal Diffusion Forcing model for low-dimensional tokens (paper Section 3.2, Appendix D.2).

Two backbones share one interface (``CausalModel``), chosen by ``ModelConfig.backbone`` through ``build_model``:
``"rnn"`` (this module's ``DiffusionForcingModel``, the default) and ``"transformer"``
(``df_agent.transformer.CausalTransformerModel``). For the RNN:

z_0 = encoder(o_t); for each token, z_t = GRU(z_{t-1}, ResMLP([x_t^{k_t}, emb(k_t)])) and the clean token is
predicted from z_t by a second ResMLP. Per-token networks run on the whole sequence at once and the GRU runs as one
fused ``nn.GRU`` call, so a sequence costs one pass, not a Python loop over time. Nothing at t sees anything after t.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ModelConfig:
    token_dim: int
    obs_dim: int = 4
    """size of what the initial state is encoded from: the observation, and the goal after it for a goal-conditioned
    model (``TokenLayout.condition_dim``)"""
    latent_dim: int = 128
    width: int = 256
    depth: int = 2
    level_embedding_dim: int = 64
    num_levels: int = 1000
    backbone: str = "rnn"
    """'rnn' (ResMLP-GRU; ``latent_dim`` is its latent) or 'transformer' (causal self-attention, ``depth`` layers of
    ``width``; ``latent_dim`` unused). Checkpoints written before the field existed load as 'rnn'."""
    heads: int = 4
    """attention heads of the transformer backbone (``width`` must be a multiple)"""

    def to_dict(self) -> dict:
        return asdict(self)


# The forwards below call torch.nn.functional on the modules' parameters instead of calling the submodules: the same
# kernels on the same tensors (so the same numbers), without nn.Module's per-call machinery, which costs more than the
# arithmetic at the batch sizes of planning (a near-goal plan calls these networks hundreds of times for a few tokens).
# The submodules stay, so the parameters keep their names in checkpoints.


def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def _layer_norm(layer: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, layer.normalized_shape, layer.weight, layer.bias, layer.eps)


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.net = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, _, second = self.net
        return x + _linear(second, F.silu(_linear(first, _layer_norm(self.norm, x))))


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
        layers = self.net
        x = _linear(layers[0], x)
        for index in range(1, len(layers) - 3):  # the residual blocks (a slice would build a Sequential per call)
            x = layers[index].forward(x)
        return _linear(layers[-1], F.silu(_layer_norm(layers[-3], x)))


def sinusoidal_frequencies(dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The ``dim // 2`` geometric frequencies of ``sinusoidal_embedding``."""
    half = dim // 2
    return torch.exp(-math.log(10_000.0) * torch.arange(half, device=device) / half)


def sinusoidal_embedding(values: torch.Tensor, dim: int, frequencies: torch.Tensor | None = None) -> torch.Tensor:
    """[sin, cos] of ``values`` (...,) at ``dim // 2`` geometric frequencies, (..., dim). ``frequencies``:
    ``sinusoidal_frequencies(dim)`` computed ahead (None: computed here)."""
    if frequencies is None:
        frequencies = sinusoidal_frequencies(dim, values.device)
    angles = values.float()[..., None] * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class LevelEmbedding(nn.Module):
    """Sinusoidal embedding of the integer noise level, then an MLP."""

    def __init__(self, dim: int, num_levels: int):
        super().__init__()
        self.dim = dim
        self.num_levels = num_levels
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.register_buffer("frequencies", sinusoidal_frequencies(dim), persistent=False)

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        first, _, second = self.mlp
        return _linear(second, F.silu(_linear(first, sinusoidal_embedding(levels, self.dim, self.frequencies))))


class CausalModel(nn.Module):
    """What the trainer, the sampler (guidance and MCG included) and the agent use of a backbone. The past enters as
    a *state*, a tensor of batch size B whose meaning is the backbone's own (the RNN's latent, the transformer's
    embedded prefix); the sampler only passes states back to the model.

    - ``initial_latent(obs)``: the state before the first token, from the (normalized) observation (B, obs_dim).
    - ``forward(state, tokens, levels)``: tokens (B, T, D) at levels (B, T) after ``state``; returns the clean-token
      predictions (B, T, D) and ``states``, the per-token states of this call, which only ``advance``'s result and
      ``predict_each_alone`` read.
    - ``advance(state, tokens, levels)``: the state after the tokens.
    - ``predict_each_alone(state, states, tokens, levels)``: Monte Carlo Guidance's redraws, below.
    """

    config: ModelConfig

    def initial_latent(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def advance(self, state: torch.Tensor, tokens: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict_each_alone(
        self, state: torch.Tensor, states: torch.Tensor, tokens: torch.Tensor, levels: torch.Tensor
    ) -> torch.Tensor:
        """Predictions (N, B, T, D) for tokens (N, B, T, D) at levels (N, B, T), where token t of every one of the
        N sets is seen alone after the past of token t of a plan of T tokens: ``state`` (the state before the plan)
        and the plan's tokens before t, as given by ``states`` from ``forward(state, plan, plan_levels)``. As if
        ``forward(advance(state, plan[:, :t], ...), tokens[n, :, t:t+1], levels[n, :, t:t+1])`` for every n, t."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(config: ModelConfig) -> CausalModel:
    """The backbone ``config.backbone`` names, freshly initialized."""
    if config.backbone == "rnn":
        return DiffusionForcingModel(config)
    if config.backbone == "transformer":
        from df_agent.transformer import CausalTransformerModel  # it builds on this module's blocks

        return CausalTransformerModel(config)
    raise ValueError(f"unknown backbone {config.backbone!r}; choose 'rnn' or 'transformer'")


class DiffusionForcingModel(CausalModel):
    """Causal latent dynamics with per-token noise levels; predicts each clean token (x0) from its latent. The state
    is the latent (B, latent); ``forward``'s per-token states are the latents z_1..z_T (B, T, latent)."""

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
        latents = self._roll(z_prev, tokens, embedding)
        prediction = self.observation_model(torch.cat([latents, embedding], dim=-1))
        return prediction, latents

    def _roll(self, z_prev: torch.Tensor, tokens: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """The latents z_1..z_T (B, T, latent) after tokens (B, T, D) with their level embeddings, from z_prev."""
        inputs = self.token_encoder(torch.cat([tokens, embedding], dim=-1))
        h0 = z_prev.float().unsqueeze(0).contiguous()
        # The GRU runs in float32 even under mixed precision: autocast would hand cuDNN's RNN fp16 (not bf16)
        # with no loss scaling; the recurrence is a small part of the cost.
        with torch.autocast(inputs.device.type, enabled=False):
            if inputs.device.type == "cpu":
                # nn.GRU's own kernel, called without the module's per-call argument checks, which cost about as
                # much as a short sequence's recurrence at planning's batch sizes. On a GPU the module is called,
                # so that cuDNN gets its flattened weights.
                gru = self.dynamics
                weights = (gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
                return torch.gru(inputs.float(), h0, weights, True, 1, 0.0, gru.training, False, True)[0]
            return self.dynamics(inputs.float(), h0)[0]

    def advance(self, state: torch.Tensor, tokens: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        # the latent only: the observation model's predictions are not needed
        return self._roll(state, tokens, self.level_embedding(levels))[:, -1]

    def predict_each_alone(
        self, state: torch.Tensor, states: torch.Tensor, tokens: torch.Tensor, levels: torch.Tensor
    ) -> torch.Tensor:
        # One model step per (set, plan, token): a batch of single tokens, each from its own past latent.
        draws, batch, num_tokens, token_dim = tokens.shape
        before = torch.cat([state[:, None], states[:, :-1]], dim=1)  # each token's latent of the plan's past
        flat_latents = before.expand(draws, -1, -1, -1).reshape(-1, before.shape[-1])
        output, _ = self(flat_latents, tokens.reshape(-1, 1, token_dim), levels.reshape(-1, 1))
        return output.view(draws, batch, num_tokens, token_dim)
