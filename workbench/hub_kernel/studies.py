"""Study definitions: ``studies/<name>/study.json``, validated before any experiment uses them.

A study names its cohort criteria (which the spokes apply to their catalogs), the
reference-standard fields each spoke attaches to a result, and the metrics a report
computes: ``roc`` (an output score against a binary reference) or ``agreement`` (an output
measurement against a reference measurement). Every metric's ``reference`` must be one of
the study's ``reference_fields``, and the folder name must be the study's ``name``.

>>> catalog = StudyCatalog(Path("studies"))                     # doctest: +SKIP
>>> catalog.get("lung-screening").cohort.min_timepoints         # doctest: +SKIP
2
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workbench.errors import BadRequestError, NotFoundError
from workbench.hub_kernel.models import Name

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
Field_ = Annotated[str, Field(min_length=1, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Cohort(_Strict):
    """Which of a spoke's participants a study takes."""

    modality: Annotated[str, Field(min_length=1, max_length=16)] | None = None
    min_timepoints: Annotated[int, Field(ge=1, le=100)] = 1
    body_part: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class Metric(_Strict):
    """One validation metric: an output field against a reference field."""

    kind: Literal["roc", "agreement"]
    output: Field_
    reference: Field_


class Study(_Strict):
    """A validated study definition."""

    name: Name
    title: Annotated[str, Field(min_length=1, max_length=300)]
    description: str = ""
    cohort: Cohort = Field(default_factory=Cohort)
    reference_fields: tuple[Field_, ...] = ()
    metrics: tuple[Metric, ...] = ()

    @model_validator(mode="after")
    def _references_are_declared(self) -> Study:
        if len(set(self.reference_fields)) != len(self.reference_fields):
            raise ValueError("reference_fields repeat a name")
        for metric in self.metrics:
            if metric.reference not in self.reference_fields:
                raise ValueError(
                    f"metric {metric.kind} of {metric.output} names reference "
                    f"{metric.reference!r}, which is not in reference_fields"
                )
        return self


class StudyCatalog:
    """The study definitions below one folder (``<root>/<name>/study.json``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        """The names of every folder holding a ``study.json``, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{STUDY_FILE}"))

    def get(self, name: str) -> Study:
        """Load and validate one study.

        Raises:
            NotFoundError: there is no ``<root>/<name>/study.json``.
            BadRequestError: the file is not a valid study definition.
        """
        path = self.root / name / STUDY_FILE
        if "/" in name or name in {"", ".", ".."} or not path.is_file():
            raise NotFoundError(f"study {name!r} is not defined", code="unknown_study")
        return load_study(path)

    def all(self) -> tuple[list[Study], dict[str, str]]:
        """Every valid study, and for each invalid one its name and problem."""
        studies, problems = [], {}
        for name in self.names():
            try:
                studies.append(self.get(name))
            except BadRequestError as e:
                log.warning("skipping study %s: %s", name, e.message)
                problems[name] = e.message
        return studies, problems


def load_study(path: Path) -> Study:
    """Read and validate one ``study.json``; its folder must carry the study's name.

    Raises:
        BadRequestError: unreadable, not JSON, or not a valid study definition.
    """
    try:
        study = Study.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(study)"
        raise BadRequestError(
            f"study {path.parent.name} is invalid: {where}: {first['msg']}", "bad_study"
        ) from e
    except (OSError, ValueError) as e:
        raise BadRequestError(f"study {path.parent.name} is invalid: {e}", "bad_study") from e
    if study.name != path.parent.name:
        raise BadRequestError(
            f"study in folder {path.parent.name!r} is named {study.name!r}", "bad_study"
        )
    return study
