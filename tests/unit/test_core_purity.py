"""The pure core imports nothing that talks to the outside world."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ["docker", "stomp", "IPython", "ipywidgets", "papermill", "requests", "pydicom"]


def test_core_modules_load_no_io_libraries() -> None:
    code = (
        "import json, pkgutil, importlib, sys, workbench.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__):\n"
        "    importlib.import_module(f'workbench.core.{m.name}')\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout))
    assert "workbench.core.participant" in loaded  # the probe really imported the core
    leaked = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert leaked == []
