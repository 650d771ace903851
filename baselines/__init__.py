"""Single-file baselines (Diffuser, CQL, IQL, MPPI), evaluated with ``envs.evaluation`` like Diffusion Forcing."""
