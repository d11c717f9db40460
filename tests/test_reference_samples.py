"""eval.reference_samples: a samples file holding each problem's reference program."""

import json
import pathlib

from eval.extract import extract_program
from eval.reference_samples import main, reference_samples

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def test_writes_one_sample_per_reference(tmp_path):
    out = tmp_path / "refs.jsonl"
    assert main(["--benchmark", "mbpp", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 500 and rows[0]["task_id"] == "Mbpp/11"
    assert extract_program(rows[0]["completion"]) == rows[0]["completion"]  # the whole text is the program


def test_problems_without_reference_are_left_out():
    rows = reference_samples("codecontests", FIXTURES / "codecontests.jsonl")
    assert [r["task_id"] for r in rows] == ["1500_A. Double It"]  # the other has only a Python 2 solution


def test_bad_benchmark_file_is_exit_2(tmp_path, capsys):
    assert main(["--benchmark", "jsonl", "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "give its file with --problems" in capsys.readouterr().err
