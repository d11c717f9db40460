"""Reinforcement learning of the two agents: the GRPO math (`grpo.py`), the sandbox rewards (`rewards.py`) and the
collaborative rollout that feeds them (`rollout.py`)."""
