"""The `algoforge` entry point: help for every command, one-line errors, README and CI in step."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from algoforge_jax.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def algoforge(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "algoforge_jax", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


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
