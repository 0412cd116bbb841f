from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from workbench.cli.common import load_secret as _load_secret
from workbench.cli.main import main
from workbench.errors import ConfigError


@pytest.mark.parametrize(
    "command",
    [[], ["images", "build-base"], ["images", "build-algorithms"], ["synth"], ["spoke", "index"],
     ["algorithm", "run-local"], ["demo"], ["report"], ["spoke", "serve"]],
)  # fmt: skip
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert "usage: workbench" in capsys.readouterr().out


def test_bad_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["synth", "--out", "x", "--sites", "0"])
    assert done.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_run_local_refuses_bad_arguments_before_touching_docker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        "algorithm",
        "run-local",
        "img",
        "--dicom",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*common, "--arg", "novalue", "--secret-file", str(tmp_path / "k")]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main([*common, "--memory", "12q", "--secret-file", str(tmp_path / "k")]) == 1
    assert "not a size" in capsys.readouterr().err


def test_secret_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "pseudonym.key"
    first = _load_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert _load_secret(path) == first


def test_a_corrupt_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("not hex")
    with pytest.raises(ConfigError):
        _load_secret(path)
