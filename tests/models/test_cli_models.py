"""`resnets models` and the top-level command behave like a user expects."""

import json
import subprocess
import sys

from resnets.cli import main


def test_models_table_lists_params_macs_and_paper(capsys):
    assert main(["models", "resnet5*"]) == 0
    out = capsys.readouterr().out
    assert "resnet50 " in out and "25.56M" in out and "4.089" in out and "arXiv" in out
    assert "resnet18" not in out


def test_models_table_columns_line_up_past_long_names(capsys):
    assert main(["models", "resnet_airbench*", "--no-macs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["model", "resnet_airbench", "resnet_airbench_narrow"]
    assert len({line.index("M ") for line in lines[1:]}) == 1 and lines[0].index("params") + 6 == lines[1].index("M ") + 1


def test_models_json(capsys):
    assert main(["models", "resnet20", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "resnet20" and rows[0]["params"] == 269_722


def test_models_unknown_pattern_is_one_line_error(capsys):
    assert main(["models", "nothing*"]) == 2
    err = capsys.readouterr().err
    assert "no model matches" in err and "Traceback" not in err


def test_console_help_runs():
    out = subprocess.run([sys.executable, "-m", "resnets", "--help"], capture_output=True, text=True, check=True)
    assert "models" in out.stdout
