"""algoforge_jax: Planner and Coder LLM agents in JAX/Flax NNX, trained with SFT and collaborative GRPO."""

__version__ = "0.1.0"
