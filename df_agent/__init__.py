"""df-agent: Diffusion Forcing for planning and offline reinforcement learning."""

__version__ = "0.1.0"
