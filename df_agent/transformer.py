"""A causal transformer backbone for Diffusion Forcing (paper Appendix B.1): ``ModelConfig(backbone="transformer")``.

The sequence is [o, x_1^{k_1}, ..., x_T^{k_T}]. Position 0 embeds the (normalized) observation, in the role of the
RNN's z_0; token t is a ResMLP embedding of [x_t^{k_t}, emb(k_t)]. Sinusoidal positions are added, ``depth`` pre-norm
blocks of causal self-attention (``heads`` heads, ``width`` wide) run, and each token's clean estimate is predicted
from the output at its own position (which sees itself and everything before it, never after) with emb(k_t), as the
RNN's observation model does from z_t.

The state (see ``CausalModel``) is the embedded prefix (B, 1 + tokens so far, width), before positions are added.
``forward`` recomputes attention over the prefix and the new tokens: there is no KV cache, so a call costs
O((prefix + T)^2) and planning is quadratic in the plan's length rather than linear, which is cheap at the 30-80
tokens our plans have. Caching the keys and values of the final prefix would remove that recomputation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from df_agent.model import CausalModel, LevelEmbedding, ModelConfig, ResMLP, sinusoidal_embedding


class AttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention and MLP, each residual. ``mask`` (L, L) bool, True where a query may attend
    to a key; None: causal."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attention_out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if mask is None:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.attention_out(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.mlp_norm(x))


class CausalTransformerModel(CausalModel):
    """Causal self-attention over [observation, tokens] with per-token noise levels; predicts each clean token."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        if c.width % c.heads or c.width % 2:
            raise ValueError(f"the transformer's width ({c.width}) must be even and a multiple of heads ({c.heads})")
        self.config = config
        self.level_embedding = LevelEmbedding(c.level_embedding_dim, c.num_levels)
        self.obs_encoder = ResMLP(c.obs_dim, c.width, c.width, 1)
        self.token_encoder = ResMLP(c.token_dim + c.level_embedding_dim, c.width, c.width, 1)
        self.blocks = nn.ModuleList([AttentionBlock(c.width, c.heads) for _ in range(c.depth)])
        self.norm = nn.LayerNorm(c.width)
        self.observation_model = ResMLP(c.width + c.level_embedding_dim, c.token_dim, c.width, 1)

    def initial_latent(self, obs: torch.Tensor) -> torch.Tensor:
        """The observation token (B, 1, width) from the (normalized) observation (B, obs_dim)."""
        return self.obs_encoder(obs)[:, None]

    def _embed(self, tokens: torch.Tensor, level_embedding: torch.Tensor) -> torch.Tensor:
        return self.token_encoder(torch.cat([tokens, level_embedding], dim=-1))

    def _attend(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + sinusoidal_embedding(positions, x.shape[-1]).to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def forward(
        self, state: torch.Tensor, tokens: torch.Tensor, levels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, T, D) at levels (B, T) after the prefix ``state`` (B, P, width). Returns the clean-token
        predictions (B, T, D) and the prefix extended by the tokens (B, P + T, width)."""
        embedding = self.level_embedding(levels)
        context = torch.cat([state, self._embed(tokens, embedding)], dim=1)
        hidden = self._attend(context, torch.arange(context.shape[1], device=context.device))
        prediction = self.observation_model(torch.cat([hidden[:, state.shape[1] :], embedding], dim=-1))
        return prediction, context

    def advance(self, state: torch.Tensor, tokens: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return torch.cat([state, self._embed(tokens, self.level_embedding(levels))], dim=1)

    def predict_each_alone(
        self, state: torch.Tensor, states: torch.Tensor, tokens: torch.Tensor, levels: torch.Tensor
    ) -> torch.Tensor:
        # One pass per set: the plan's context followed by the T tokens, token t at the plan's position of token t,
        # attending to the context before that position and to itself only (not to the other tokens of the set).
        draws, batch, num_tokens, token_dim = tokens.shape
        start = state.shape[1]  # position of the plan's first token
        context = states[:, :-1]  # the plan's last token is in no token's past
        length, width = context.shape[1], context.shape[2]
        embedding = self.level_embedding(levels)
        alone = self._embed(tokens, embedding).reshape(draws * batch, num_tokens, width)
        x = torch.cat([context.expand(draws, -1, -1, -1).reshape(draws * batch, length, width), alone], dim=1)
        device = x.device
        own = torch.arange(num_tokens, device=device)
        positions = torch.cat([torch.arange(length, device=device), start + own])
        keys = torch.arange(length + num_tokens, device=device)
        context_mask = keys[None, :] <= torch.arange(length, device=device)[:, None]  # causal within the context
        alone_mask = (keys[None, :] < (start + own)[:, None]) | (keys[None, :] == (length + own)[:, None])
        hidden = self._attend(x, positions, torch.cat([context_mask, alone_mask]))[:, length:]
        hidden = hidden.reshape(draws, batch, num_tokens, width)
        return self.observation_model(torch.cat([hidden, embedding], dim=-1))
