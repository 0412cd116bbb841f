"""Render a validation report: run the papermill template, export it to HTML in-process.

The template (``notebooks/templates/validation_report.ipynb``) runs in a real Jupyter kernel,
so what a researcher sees is exactly what the notebook computes. The kernel is the one named
``kernel_name`` (``python3``); before anything runs, the runner checks that it starts *this*
interpreter's environment, where ``workbench`` is installed. A venv's ``python3`` kernelspec
(installed by ipykernel into ``<venv>/share/jupyter/kernels``, which Jupyter searches first
inside a venv) runs ``python``, which jupyter_client replaces by ``sys.executable``.

The HTML export uses nbconvert's ``HTMLExporter`` in-process (~20 ms; the ``jupyter
nbconvert`` command line costs ~0.8 s), with the code cells' input left out.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import ReportError
from workbench.reports.metrics import study_metrics

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parents[2] / "notebooks" / "templates"
TEMPLATE = TEMPLATES / "validation_report.ipynb"


@dataclass(frozen=True)
class ReportInfo:
    """What :func:`render_report` wrote."""

    html: Path
    """The self-contained HTML report (figures embedded as PNG)."""
    notebook: Path
    """The executed notebook, beside the HTML, for whoever wants to see the code."""
    results: int
    """How many result rows the report was given."""
    kernel_python: str
    """The interpreter the kernel ran."""
    seconds: float
    """Wall-clock time of the whole rendering."""


def render_report(
    results: Sequence[Mapping[str, Any]],
    study: Mapping[str, Any],
    out_html: Path,
    experiment_id: str,
    title: str | None = None,
    *,
    template: Path = TEMPLATE,
    kernel_name: str = "python3",
    timeout: float = 300.0,
) -> ReportInfo:
    """Render the validation report of one experiment's results to ``out_html``.

    The executed notebook is kept beside it, as ``out_html`` with the suffix ``.ipynb``.

    Args:
        results: result rows as the hub API returns them (see :mod:`.metrics`).
        study: the study definition; its ``metrics`` say what to compute.
        out_html: where to write the HTML; its folder is created.
        experiment_id: shown in the report's header.
        title: the report's title; by default "Validation report: <study title>".
        template: the papermill template to run.
        kernel_name: the Jupyter kernel to run it in; it must run this environment's python.
        timeout: seconds any one cell may run.

    Returns:
        A :class:`ReportInfo` with the paths written and the time taken.

    Raises:
        ReportError: there are no results yet, the study's metrics are malformed, the
            kernel is missing or runs another environment, a cell failed (``cell_index``
            says which) or the export failed.

    Example::

        info = render_report(rows, study, Path("report.html"), "exp-1f3a")
        print(info.html, info.seconds)
    """
    started = time.monotonic()
    if not results:
        raise ReportError(f"experiment {experiment_id} has no results yet: nothing to report")
    out_html = Path(out_html)
    if out_html.suffix == ".ipynb":
        raise ReportError(f"{out_html}: the report is HTML; the notebook goes beside it")
    executed = out_html.with_suffix(".ipynb")
    study_metrics(study)  # a malformed metrics list fails here, not in a notebook cell
    python = kernel_python(kernel_name)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="workbench-report-") as tmp:
        results_path, study_path = Path(tmp) / "results.json", Path(tmp) / "study.json"
        results_path.write_text(json.dumps(list(results), default=str))  # datetimes too
        study_path.write_text(json.dumps(dict(study), default=str))
        parameters = {
            "experiment_id": experiment_id,
            "results_path": str(results_path),
            "study_path": str(study_path),
            "title": title,
        }
        notebook = _execute(template, executed, parameters, kernel_name, timeout, tmp)
    html = _export(notebook, title or f"Validation report {experiment_id}")
    out_html.write_text(html, encoding="utf-8")
    seconds = time.monotonic() - started
    log.info(
        "report of %s: %d results, %s (%.1f s)", experiment_id, len(results), out_html, seconds
    )
    return ReportInfo(out_html, executed, len(results), python, seconds)


def kernel_python(kernel_name: str) -> str:
    """The interpreter the kernel ``kernel_name`` starts, checked to be this environment's.

    Raises:
        ReportError: no such kernel, or it runs an interpreter from another environment.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel as e:
        raise ReportError(f"no Jupyter kernel named {kernel_name!r}: {_KERNEL_HINT}") from e
    command = spec.argv[0] if spec.argv else ""
    major, minor = sys.version_info[:2]
    if command in {"python", f"python{major}", f"python{major}.{minor}"}:
        command = sys.executable  # what jupyter_client itself does with a bare python
    if Path(command).absolute().parent != Path(sys.executable).absolute().parent:
        raise ReportError(
            f"Jupyter kernel {kernel_name!r} runs {command}, not this environment's "
            f"{sys.executable}: {_KERNEL_HINT}"
        )
    return command


_KERNEL_HINT = "install one with `python -m ipykernel install --sys-prefix` from this environment"


def _execute(
    template: Path,
    executed: Path,
    parameters: dict[str, Any],
    kernel_name: str,
    timeout: float,
    cwd: str,
) -> Any:
    import papermill
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillException, PapermillExecutionError
    from traitlets.config import Config

    try:
        return papermill.execute_notebook(
            str(template),
            str(executed),
            parameters=parameters,
            kernel_name=kernel_name,
            progress_bar=False,
            log_output=False,
            execution_timeout=timeout,
            start_timeout=60,
            cwd=cwd,
            # Unix sockets in the private temp folder instead of loopback TCP ports: nothing
            # else on a shared hub host can connect, and ipykernel has nothing to warn about.
            config=Config({"KernelManager": {"transport": "ipc", "ip": f"{cwd}/kernel"}}),
            # jupyter_client interrupts a kernel before shutting it down, and ipykernel may log
            # that as "ERROR | KeyboardInterrupt caught"; a real kernel death still raises.
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )
    except PapermillExecutionError as e:
        raise ReportError(
            f"report cell {e.cell_index} failed: {e.ename}: {e.evalue} (see {executed})",
            cell_index=e.cell_index,
        ) from e
    except CellTimeoutError as e:
        raise ReportError(f"a report cell ran longer than {timeout:g} s (see {executed})") from e
    except (DeadKernelError, NoSuchKernel, PapermillException, RuntimeError, OSError) as e:
        raise ReportError(f"cannot run the report notebook {template.name}: {e}") from e
    except ValueError as e:  # papermill: a notebook without a language, bad parameters, ...
        raise ReportError(f"cannot run the report notebook {template.name}: {e}") from e


def _export(notebook: Any, title: str) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(  # type: ignore[no-untyped-call]
        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    try:
        body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": title}})
    except Exception as e:  # nbconvert raises anything from its templates and filters
        raise ReportError(f"cannot export the report to HTML: {e}") from e
    return str(body)
