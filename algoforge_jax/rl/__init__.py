"""Reinforcement learning of the two agents: the GRPO math (`grpo.py`) and the sandbox rewards (`rewards.py`)."""
