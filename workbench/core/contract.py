"""The ``elic-algo/1`` algorithm contract: container paths and the ``ALGO_ARG`` document.

This module is the code form of DESIGN.md section 4. An algorithm container is given:

- the environment variable ``ALGO_ARG``, a JSON object naming the contract, the
  participant JSON, the output file and the algorithm's own arguments;
- ``/elic/input/participant.json`` (read-only), the de-identified case description;
- ``/elic/dicom/<series-key>/`` (read-only), one folder per series;
- ``/elic/output/`` (the only writable place besides a small ``/tmp``), where it writes
  exactly one file, ``output.json``.

Example::

    >>> algo_arg({"threshold": -950})["participant"]
    '/elic/input/participant.json'
"""

from __future__ import annotations

import json
from typing import Any

CONTRACT = "elic-algo/1"

INPUT_DIR = "/elic/input"
PARTICIPANT_PATH = "/elic/input/participant.json"
DICOM_ROOT = "/elic/dicom"
OUTPUT_DIR = "/elic/output"
OUTPUT_FILE = "output.json"
OUTPUT_PATH = f"{OUTPUT_DIR}/{OUTPUT_FILE}"
ENV_VAR = "ALGO_ARG"

# Image labels through which an algorithm image declares itself.
LABEL_CONTRACT = "org.elic.contract"
LABEL_NAME = "org.elic.algorithm.name"
LABEL_VERSION = "org.elic.algorithm.version"
LABEL_OUTPUT_SCHEMA = "org.elic.output-schema"
LABEL_ARGS_SCHEMA = "org.elic.args-schema"


def series_dir(series_key: str) -> str:
    """The container path of one series' DICOM folder."""
    if not series_key or "/" in series_key or series_key in {".", ".."}:
        raise ValueError(f"not a valid series key: {series_key!r}")
    return f"{DICOM_ROOT}/{series_key}"


def algo_arg(args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``ALGO_ARG`` document for a run with the algorithm-specific ``args``."""
    return {
        "contract": CONTRACT,
        "participant": PARTICIPANT_PATH,
        "output": OUTPUT_PATH,
        "args": dict(args or {}),
    }


def algo_arg_env(args: dict[str, Any] | None = None) -> str:
    """``ALGO_ARG`` serialised as the environment variable's value (compact, sorted JSON)."""
    return json.dumps(algo_arg(args), sort_keys=True, separators=(",", ":"))


def parse_cli_args(pairs: list[str]) -> dict[str, Any]:
    """Turn ``KEY=VALUE`` strings into algorithm arguments.

    A value that parses as JSON (a number, ``true``, a list, a quoted string) keeps its JSON
    type; anything else is taken as a plain string.

    >>> parse_cli_args(["threshold=-950", "mode=fast", "flags=[1,2]"])
    {'threshold': -950, 'mode': 'fast', 'flags': [1, 2]}
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"an argument must look like KEY=VALUE, got {pair!r}")
        if key in out:
            raise ValueError(f"argument {key!r} given twice")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out
