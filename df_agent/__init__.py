"""df-agent: Diffusion Forcing for planning and offline reinforcement learning."""

from df_agent.agent import Agent, Plan, PlannerConfig

__all__ = ["Agent", "Plan", "PlannerConfig"]
__version__ = "0.1.0"
