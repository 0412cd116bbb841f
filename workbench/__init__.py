"""ELIC workbench: a federated imaging research platform.

Algorithms travel to the hospitals as sandboxed containers; the DICOM data stays where it
is; only each run's small ``output.json`` comes back. See ``docs/`` and the shared design.
"""

from __future__ import annotations

from workbench.errors import WorkbenchError

__all__ = ["WorkbenchError", "__version__"]

__version__ = "0.1.0"
