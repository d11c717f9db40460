"""The `algoforge` entry point: help for every command, one-line errors, README and CI in step."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from algoforge_jax.cli import COMMANDS, use_compilation_cache
from hf_tiny import save_hf_model

ROOT = Path(__file__).resolve().parents[1]


def algoforge(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "algoforge_jax", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command):
    result = algoforge(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: algoforge " + command)


def test_no_command_prints_help_and_fails():
    result = algoforge()
    assert result.returncode == 2 and "COMMAND" in result.stdout


def test_bad_input_is_one_line_reason(tmp_path):
    result = algoforge("generate", "--model", str(tmp_path / "nope"), "--prompt-ids", "1,2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"algoforge generate: error: {tmp_path / 'nope'}: no such model directory"]
    result = algoforge("convert", "hf-to-orbax", "--hf", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "no config.json" in result.stderr


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    command = ci[-1]
    assert command.startswith("python3 -m venv .venv") and "pytest" in command
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert command in blocks[:2], "README's test command and .ci/run differ"


CACHE_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE", "XDG_CACHE_HOME")


def _cache_events(stderr: str) -> tuple[set[str], set[str]]:
    """Programs JAX found in / missed from its persistent cache, from the lines that JAX_LOG_COMPILES and
    JAX_EXPLAIN_CACHE_MISSES make it log."""
    hits = set(re.findall(r"Persistent compilation cache hit for '([^']+)'", stderr))
    return hits, set(re.findall(r"PERSISTENT COMPILATION CACHE MISS for '([^']+)'", stderr))


@pytest.mark.slow
def test_a_second_run_loads_its_programs_from_the_default_compilation_cache(tmp_path):
    save_hf_model(tmp_path / "model")
    env = {k: v for k, v in os.environ.items() if k not in CACHE_VARS and k != "XLA_FLAGS"}  # one CPU device
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="true",
               JAX_EXPLAIN_CACHE_MISSES="true", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # store even tiny ones
    args = ("generate", "--model", str(tmp_path / "model"), "--prompt-ids", "5,17,42", "--max-new-tokens", "4")
    first, second = algoforge(*args, env=env), algoforge(*args, env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    sampler = {"jit__prefill", "jit__decode"}
    hits, misses = _cache_events(first.stderr)
    assert sampler <= misses and not hits
    assert {p.name.split("-")[0] for p in (tmp_path / "xdg" / "algoforge_jax" / "jax").iterdir()} >= sampler
    hits, misses = _cache_events(second.stderr)
    assert sampler <= hits and not misses  # every program the second process needed was loaded, none compiled
    assert second.stdout == first.stdout and second.stdout.count("token_ids") == 1


def test_compilation_cache_directory_and_switch(monkeypatch, tmp_path):
    for var in CACHE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    use_compilation_cache()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / ".cache" / "algoforge_jax" / "jax")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/explicit")  # a user's own setting wins over the default
    use_compilation_cache()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == "/explicit" and "JAX_ENABLE_COMPILATION_CACHE" not in os.environ
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    use_compilation_cache()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "xdg" / "algoforge_jax" / "jax")
    use_compilation_cache(enabled=False)
    assert os.environ["JAX_ENABLE_COMPILATION_CACHE"] == "false"


def test_jax_imported_afterwards_reads_the_settings(tmp_path):
    probe = ("import sys; from algoforge_jax.cli import use_compilation_cache; "
             "use_compilation_cache(sys.argv[1] == 'on'); "
             "import jax; print(jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)")
    env = {k: v for k, v in os.environ.items() if k not in CACHE_VARS}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    for switch, want in [("on", f"True {tmp_path / 'algoforge_jax' / 'jax'}"), ("off", "False")]:
        out = subprocess.run([sys.executable, "-c", probe, switch], capture_output=True, text=True, cwd=ROOT,
                             env=env, timeout=60)
        assert out.stdout.startswith(want), out.stderr


def test_global_flags_come_before_the_command(tmp_path):
    result = algoforge("--no-compilation-cache", "generate", "--model", str(tmp_path / "nope"), "--prompt-ids", "1")
    assert result.returncode == 2 and f"{tmp_path / 'nope'}: no such model directory" in result.stderr
