"""eval: benchmarks, the sandbox that runs model-written programs, and the metrics reported on them.

Pure Python: nothing here imports JAX, so the sandbox's warm workers stay small and scoring runs anywhere.
"""
