"""Run by tests/test_multihost.py in each of two processes: the RL weight handoff across hosts.

A tiny model is loaded with TRAIN_RULES on a (1, 2, 2) mesh whose fsdp axis spans both processes, resharded to
SAMPLE_RULES (an all-gather across hosts) and back; process 0 prints one JSON object with what the test checks.
Usage: python tests/multihost_reshard.py HF_DIR
"""

import json
import sys

from algoforge_jax.cli import initialize_distributed

initialize_distributed()

import jax  # noqa: E402  (after jax.distributed.initialize, as multi-process JAX requires)
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from algoforge_jax import sharding  # noqa: E402
from algoforge_jax.convert.hf import load_hf_model  # noqa: E402
from algoforge_jax.sampling import SamplerConfig, make_sampler  # noqa: E402
from algoforge_jax.sharding import SAMPLE_RULES, TRAIN_RULES  # noqa: E402

PROMPTS = [[5, 17, 300, 42, 9], [1, 2, 3], [777], [64, 128, 256, 512]]

mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=2, tensor=2))
train = nnx.state(load_hf_model(sys.argv[1], mesh, TRAIN_RULES))
sampler, loaded = make_sampler(load_hf_model(sys.argv[1], mesh, SAMPLE_RULES), mesh,
                               SamplerConfig(max_new_tokens=6, stop_token_ids=()), SAMPLE_RULES)
handed = sharding.reshard(train, SAMPLE_RULES, mesh)
back = sharding.reshard(handed, TRAIN_RULES, mesh)
leaves = jax.tree.leaves
result = {
    "fsdp_spans_processes": any(not x.is_fully_addressable and sharding.is_sharded(x) for x in leaves(train)),
    "same_layout_as_loaded": [x.sharding for x in leaves(handed)] == [x.sharding for x in leaves(loaded)],
    "back_exact": all(a.sharding == b.sharding and np.array_equal(sharding.to_host(a), sharding.to_host(b))
                      for a, b in zip(leaves(back), leaves(train), strict=True)),
    "handed_tokens": sampler.generate(handed, PROMPTS).tokens.tolist(),
    "loaded_tokens": sampler.generate(loaded, PROMPTS).tokens.tolist(),
}
if jax.process_index() == 0:
    print(json.dumps(result))
