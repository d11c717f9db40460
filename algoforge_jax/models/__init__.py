"""Model families. Qwen2/Qwen2.5 is the one the AlgoForge agents use."""
