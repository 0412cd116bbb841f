"""Helpers the command modules share: sub-command groups, argument types, progress output."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

from workbench.errors import ConfigError

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

DEFAULT_SECRET = Path("~/.config/workbench/pseudonym.key")


def group(sub: Sub, name: str, text: str) -> Sub:
    parser = sub.add_parser(name, help=text, description=text)

    def show_help(ns: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=show_help)
    group: Sub = parser.add_subparsers(metavar="COMMAND")
    return group


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def counter(what: str) -> Callable[[int, int], None]:
    """A progress callback printing ``what: done/total`` in place on a terminal."""
    tty = sys.stderr.isatty()
    step = {"last": -1}

    def show(done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if tty:
            print(f"\r{what}: {done}/{total} ({percent}%)", end="", file=sys.stderr, flush=True)
            if done >= total:
                print(file=sys.stderr)
        elif percent // 10 != step["last"] or done >= total:
            step["last"] = percent // 10
            say(f"{what}: {done}/{total} ({percent}%)")

    return show


def docker_client() -> Any:
    """The docker SDK client of a reachable Docker Engine (``EngineError`` otherwise)."""
    from workbench.spoke_service.engine import DockerEngine

    return DockerEngine.from_env().client


def load_secret(path: Path) -> bytes:
    """The spoke's pseudonym secret; a new random one is made (mode 0600) if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 16:
        raise ConfigError(f"{path} does not hold a hex secret of at least 16 bytes")
    return secret
