"""Synthetic multi-site chest CT cohorts with a hidden reference standard.

``generate_cohort`` writes DICOM files laid out like a PACS export, one folder per site, plus
each site's ``reference.csv``. See ``docs/synthetic-cohort.md``.
"""

from __future__ import annotations

from workbench.synth.cohort import CohortSummary, generate_cohort

__all__ = ["CohortSummary", "generate_cohort"]
