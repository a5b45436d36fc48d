"""The command line: exit codes, output, --batch."""
import json
import subprocess
import sys

import pytest

from livemig.cli import main


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "livemig", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("spec", "caps", "params", "demo"):
        assert command in out


def test_caps_check_exit_codes(capsys):
    assert main(["caps", "check", "--profile", "qemu-3.0", "postcopy-ram", "compress"]) == 1
    assert "Postcopy is not currently compatible with compression" in capsys.readouterr().out
    assert main(["caps", "check", "--profile", "qemu-7.2", "postcopy-ram", "compress"]) == 0


def test_params_check_json(capsys):
    assert main(["params", "check", "--json", "multifd-channels=0"]) == 1
    assert json.loads(capsys.readouterr().out) == {
        "ok": False, "error": "Parameter 'multifd_channels' expects a value between 1 and 255"}


def test_caps_batch_answers_each_line():
    lines = [{"caps": ["multifd", "compress"], "side": "source"},
             {"caps": ["postcopy-ram", "compress"], "profile": "qemu-3.0"},
             {"caps": ["xbzrle"], "state": "active"}]
    proc = run_cli("caps", "check", "--batch",
                   stdin="".join(json.dumps(x) + "\n" for x in lines) + "not json\n")
    answers = [json.loads(x) for x in proc.stdout.splitlines()]
    assert proc.returncode == 1 and len(answers) == 4  # 1: a line was malformed
    assert answers[0]["error"] == "Multifd is not compatible with compress"
    assert answers[1]["error"] == "Postcopy is not currently compatible with compression"
    assert answers[2]["error"] == "There's a migration process in progress"
    assert answers[3]["input_error"] is True and answers[3]["error"].startswith("line 4: ")


def test_params_batch():
    proc = run_cli("params", "check", "--batch",
                   stdin=json.dumps({"params": {"max-bandwidth": -1}}) + "\n")
    assert json.loads(proc.stdout) == {"ok": True, "error": None}


def test_spec_show_json_and_diff(capsys):
    assert main(["spec", "show", "--profile", "qemu-3.0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "qemu-3.0" and len(data["transitions"]) > 20
    assert main(["spec", "diff", "qemu-3.0", "qemu-7.2"]) == 0
    assert "+ wait-unplug" in capsys.readouterr().out
    assert main(["spec", "check", "--all"]) == 0


def test_unknown_profile_is_a_clear_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["spec", "show", "--profile", "qemu-1.0"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
