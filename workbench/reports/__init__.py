"""Validation reports: metrics from the hub's result rows, and the papermill runner."""

from __future__ import annotations

from workbench.errors import ReportError
from workbench.reports.runner import ReportInfo, render_report

__all__ = ["ReportError", "ReportInfo", "render_report"]
