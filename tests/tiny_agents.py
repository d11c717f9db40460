"""Two tiny random Qwen2 agents saved as orbax model directories with the bundled Qwen2.5 tokenizer (what
`algoforge eval` and `solve` load), and three small problems in the SPEC's generic jsonl."""

from algoforge_jax import checkpoints, sharding
from algoforge_jax.jsonl import jsonl_text
from algoforge_jax.models.build import init_model
from algoforge_jax.models.qwen2 import PRESETS
from algoforge_jax.tokenizer import BUNDLED_QWEN25
from hf_tiny import one_device_mesh

PROBLEMS = [
    {"task_id": "add", "prompt": "Return the sum of two integers a and b.", "entry_point": "add",
     "tests": [{"type": "assert", "code": "assert add(1, 2) == 3"}, {"type": "call", "fn_name": "add",
                                                                     "args": [-4, 4], "expected": 0}]},
    {"task_id": "rev", "prompt": "Return the string s reversed.", "entry_point": "rev",
     "tests": [{"type": "assert", "code": "assert rev('ab') == 'ba'"}]},
    {"task_id": "echo", "prompt": "Read a line and print it.", "tests": [{"type": "stdio", "input": "x\n",
                                                                         "output": "x\n"}]},
]
RIGHT = {"add": "def add(a, b):\n    return a + b", "rev": "def rev(s):\n    return s[::-1]"}


def save_agents(out_dir, agents=("planner", "coder")) -> dict[str, str]:
    """{agent: path}: different random tiny models (seeds 0, 1, ...)."""
    mesh = one_device_mesh()
    paths = {}
    for seed, agent in enumerate(agents):
        model = init_model(PRESETS["tiny"], mesh, sharding.SAMPLE_RULES, seed=seed)
        paths[agent] = str(checkpoints.save_model(out_dir / agent, model, tokenizer_dir=BUNDLED_QWEN25))
    return paths


def write_problems(path) -> str:
    path.write_text(jsonl_text(PROBLEMS))
    return str(path)
