"""`algoforge eval` end to end with real parts: two tiny random Qwen2 agents saved as orbax models with the bundled
Qwen2.5 tokenizer, the jitted sampler, the real sandbox, three generic-jsonl problems. A random model writes no
working code, so these tests check the bookkeeping: the files, the prompts of each mode, plan/program pairing,
one sampler call per agent, the synthetic benchmarks and the one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest

from algoforge_jax import cli, sharding
from algoforge_jax.data import synthetic
from algoforge_jax.inference import EvalConfig, benchmark_problems, generate_solutions, load_agents, make_chat
from algoforge_jax.rl.rollout import Decoding
from algoforge_jax.sampling import Greedy, Sampler
from algoforge_jax.tokenizer import open_tokenizer
from eval import prompts
from eval.benchmarks import load_benchmark
from hf_tiny import one_device_mesh
from tiny_agents import PROBLEMS, save_agents, write_problems

N_TOKENS = "8"  # both agents' response budget


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    return tmp, save_agents(tmp / "models"), write_problems(tmp / "problems.jsonl")


def run_eval(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["eval", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_prompt(chat, mode: str, problem, plan: str | None) -> str:
    """The prompt text a mode must show its last agent: eval/prompts.py's builder, rendered in ChatML."""
    messages = {"direct": lambda: prompts.direct_messages(problem), "cot": lambda: prompts.cot_messages(problem),
                "planner-coder": lambda: prompts.coder_messages(problem, plan)}[mode]()
    return chat.text(chat.prompt_ids(messages))


@pytest.fixture(scope="module")
def chat(setup):
    return make_chat(open_tokenizer(setup[1]["coder"]))


def spy_on_sampler(monkeypatch) -> list:
    """Records (prompts, samples per prompt) of every sampler call; the real sampler still runs."""
    calls, generate = [], Sampler.generate

    def recorded(self, params, prompts_, method, num_samples=1, seed=0):
        calls.append((list(prompts_), num_samples))
        return generate(self, params, prompts_, method, num_samples, seed)

    monkeypatch.setattr(Sampler, "generate", recorded)
    return calls


@pytest.mark.parametrize("mode", ["direct", "cot", "planner-coder"])
def test_each_mode_writes_consistent_files(setup, chat, capsys, monkeypatch, mode):
    tmp, models, problems_file = setup
    calls = spy_on_sampler(monkeypatch)
    out = tmp / mode
    rc, stdout, err = run_eval(
        capsys, "--benchmark", "jsonl", "--problems", problems_file, "--mode", mode, "--n", "2",
        "--temperature", "1.0", "--planner", models["planner"], "--coder", models["coder"], "--out", str(out),
        "--planner-max-new-tokens", N_TOKENS, "--coder-max-new-tokens", N_TOKENS, "--workers", "2")
    assert rc == 0, err
    # One sampler call per agent: all problems x n samples, or in planner-coder 2 plans each, then one program each.
    assert [(len(prompts_), n) for prompts_, n in calls] == ([(3, 2), (6, 1)] if mode == "planner-coder" else [(3, 2)])
    samples, results = lines(out / "samples.jsonl"), lines(out / "results.jsonl")
    keys = [(p["task_id"], i) for p in PROBLEMS for i in range(2)]
    assert [(s["task_id"], s["sample_index"]) for s in samples] == keys
    assert [(r["task_id"], r["sample_index"]) for r in results] == keys
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(stdout) == summary
    assert summary["mode"] == mode and summary["n_samples"] == len(results) == 6 and summary["n_tasks"] == 3
    assert sum(summary["verdicts"].values()) == 6
    assert sorted(k for k in summary if k.startswith("pass@")) == ["pass@1", "pass@2"]
    passed = sum(r["passed"] for r in results)
    assert summary["pass@1"] == pytest.approx(passed / 6)
    problems = {p.task_id: p for p in load_benchmark("jsonl", problems_file)}
    for s in samples:  # each sample was generated from its mode's prompt, holding its own plan
        assert (s["plan"] is None) == (mode != "planner-coder")
        assert s["prompt"] == expected_prompt(chat, mode, problems[s["task_id"]], s["plan"])
    if mode == "planner-coder":  # and the Planner was asked with the Planner's prompt
        assert [chat.text(ids) for ids in calls[0][0]] == [chat.text(chat.prompt_ids(prompts.planner_messages(p)))
                                                           for p in problems.values()]
    # `algoforge score` reads the samples file eval wrote and finds the same verdicts
    rc = cli.main(["score", "--benchmark", "jsonl", "--problems", problems_file, "--samples",
                   str(out / "samples.jsonl"), "--out", str(tmp / f"{mode}-rescored.jsonl"), "--workers", "2"])
    capsys.readouterr()
    assert rc == 0
    assert [r["verdict"] for r in lines(tmp / f"{mode}-rescored.jsonl")] == [r["verdict"] for r in results]


def test_planner_coder_pairs_each_program_with_its_own_plan(setup):
    """The Coder decodes greedily, so each completion is a function of its prompt: asking the Coder again for each
    (problem, plan) in one call must give back exactly the completion stored with that plan. A shuffle of plans or
    programs anywhere in between would break that (the plans of a problem differ: the Planner samples)."""
    _, models, problems_file = setup
    problems = load_benchmark("jsonl", problems_file)
    cfg = EvalConfig(mode="planner-coder", n=3, planner=Decoding(8, temperature=1.0), coder=Decoding(8, 0.0))
    agents = load_agents(models, cfg, one_device_mesh())
    solutions, seconds = generate_solutions(problems, agents, cfg)
    assert set(seconds) == {"planner/generate_seconds", "coder/generate_seconds"}
    assert [(s.problem.task_id, s.sample_index) for s in solutions] == [(p.task_id, i) for p in problems
                                                                        for i in range(3)]
    assert all(len({s.plan for s in solutions if s.problem is p}) == 3 for p in problems)
    chat, coder = agents.chat, agents.policies["coder"]
    again = coder.sampler.generate(coder.params, [chat.prompt_ids(chat.coder_messages(s.problem, s.plan))
                                                  for s in solutions], Greedy())
    for r, s in enumerate(solutions):
        ids = again.row_tokens(r)
        ids = ids[:-1] if again.finish_reason[r] == "eos" else ids
        assert chat.text(ids) == s.completion


def test_problems_per_call_splits_generation_in_order(setup, monkeypatch):
    _, models, problems_file = setup
    problems = load_benchmark("jsonl", problems_file)
    cfg = EvalConfig(mode="direct", n=2, coder=Decoding(8, temperature=1.0), problems_per_call=2)
    # All devices: both chunks pad to the mesh's batch multiple, one compiled program (the CLI tests' own)
    agents = load_agents({"coder": models["coder"]}, cfg, sharding.make_mesh())
    calls = spy_on_sampler(monkeypatch)
    solutions, seconds = generate_solutions(problems, agents, cfg)
    assert [(len(prompts_), n) for prompts_, n in calls] == [(2, 2), (1, 2)]
    assert [(s.problem.task_id, s.sample_index) for s in solutions] == [(p.task_id, i) for p in problems
                                                                        for i in range(2)]
    assert [s.prompt_ids for s in solutions[::2]] == [tuple(ids) for prompts_, _ in calls for ids in prompts_]
    assert set(seconds) == {"coder/generate_seconds"}


def test_synthetic_heldout_reads_the_workdir(setup, capsys, tmp_path):
    """`synthetic-heldout` is WORKDIR/data/problems/heldout.jsonl; models default to the workdir's (SFT here)."""
    _, models, _ = setup
    paths = synthetic.write_problems(tmp_path / "data" / "problems", seed=0, n_train=3, n_heldout=3)
    problems, split = benchmark_problems("synthetic-heldout", workdir=tmp_path)
    assert split == "heldout" and problems == load_benchmark("jsonl", paths["heldout"])
    assert benchmark_problems("synthetic-train", workdir=tmp_path)[0] == load_benchmark("jsonl", paths["train"])
    shutil.copytree(models["coder"], tmp_path / "sft-coder" / "model")
    rc, stdout, err = run_eval(capsys, "--benchmark", "synthetic-heldout", "--workdir", str(tmp_path), "--mode",
                               "direct", "--limit", "2", "--coder-max-new-tokens", N_TOKENS, "--compact",
                               "--workers", "1")
    assert rc == 0, err
    summary = json.loads((tmp_path / "eval" / "synthetic-heldout" / "direct" / "summary.json").read_text())
    assert summary["n_tasks"] == 2 and summary["benchmark_tasks"] == 3 and summary["split"] == "heldout"
    assert summary["models"] == {"coder": str(tmp_path / "sft-coder" / "model")}


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "EvalConfig.n must be an integer >= 1"),
    (["--n", "2"], "n=2 greedy samples would be one sample repeated; give the planner a temperature > 0"),
    (["--mode", "direct", "--n", "2"], "give the coder a temperature > 0"),
    (["--coder-max-new-tokens", "0"], "max_new_tokens must be an integer >= 1"),
    (["--limit", "0"], "--limit: expected a positive integer, got 0"),
    (["--dtype", "float16"], "EvalConfig.dtype must be one of float32, bfloat16, got 'float16'"),
    (["--mode", "direct", "--coder", "/nonexistent"], "--coder /nonexistent: no such model directory"),
    (["--mode", "direct"], "mode direct needs --coder (or --workdir holding its model)"),
    (["--benchmark", "synthetic-heldout"], "give --workdir (or --problems)"),
    (["--config", "/nonexistent.py"], "--config /nonexistent.py: no such file"),
])
def test_bad_flags_fail_with_one_line(setup, capsys, argv, message):
    _, _, problems_file = setup
    base = ["--benchmark", "jsonl", "--problems", problems_file]
    if "--benchmark" in argv:
        base = []
    rc, stdout, err = run_eval(capsys, *base, *argv)
    assert rc == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_config_file_sets_the_defaults_and_flags_override(tmp_path):
    from algoforge_jax.evaluate import eval_config

    config = tmp_path / "my_eval.py"
    config.write_text("from algoforge_jax.inference import EvalConfig\nfrom algoforge_jax.rl.rollout import Decoding\n"
                      "def get_config(arg=None):\n    return EvalConfig(mode='cot', n=4, coder=Decoding(64, 0.7))\n")
    parser = cli.build_parser("eval")
    cfg = eval_config(parser.parse_args(["eval", "--benchmark", "mbpp", "--config", str(config), "--n", "3"]))
    assert (cfg.mode, cfg.n, cfg.coder) == ("cot", 3, Decoding(64, 0.7))
    cfg = eval_config(parser.parse_args(["eval", "--benchmark", "mbpp", "--config", str(config),
                                         "--temperature", "0.2", "--coder-max-new-tokens", "32"]))
    assert cfg.coder == Decoding(32, 0.2) and cfg.planner.temperature == 0.2


def test_agents_must_share_one_tokenizer(tmp_path):
    """A plan travels as text, but one Chat renders both agents' prompts: two different tokenizers are an error."""
    from algoforge_jax.errors import UserError
    from algoforge_jax.inference import open_shared_tokenizer
    from algoforge_jax.tokenizer import BUNDLED_QWEN25, train_sentencepiece

    train_sentencepiece([f"def f{i}(x):\n    return x + {i}\n" for i in range(50)], tmp_path / "sp", vocab_size=300)
    assert open_shared_tokenizer({"planner": BUNDLED_QWEN25, "coder": BUNDLED_QWEN25}).vocab_size == 151665
    with pytest.raises(UserError, match="its tokenizer differs from"):
        open_shared_tokenizer({"planner": BUNDLED_QWEN25, "coder": tmp_path / "sp"})
