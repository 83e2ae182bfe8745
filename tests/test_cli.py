"""The command line: version, info, and user errors as one line with a non-zero exit (traceback only with --debug)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from matsim import __version__
from matsim.cli.app import main
from matsim.core.errors import MatsimError


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"matsim {__version__}"


def test_info_json_lists_versions_devices_and_models(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["info", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["matsim"] == __version__
    assert report["packages"]["torch"] and report["devices"][0].startswith("cpu")
    assert isinstance(report["pretrained_models"], list)


def test_user_error_is_one_line_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.xyz"
    code, out, err = run_cli(["data", "label", str(missing), "--method", "gfn2", "--output", str(tmp_path / "o.xyz")], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and err.startswith("error: ") and "missing.xyz" in err
    assert "Traceback" not in err + out


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    with pytest.raises(MatsimError):
        main(["--debug", "data", "label", str(tmp_path / "none.xyz"), "--method", "gfn2", "--output", str(tmp_path / "o.xyz")])


def test_console_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "matsim", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and __version__ in result.stdout
