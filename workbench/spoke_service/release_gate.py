"""The release gate: the last check on an algorithm's output before anything leaves the spoke.

``ReleaseGate(policy).check(output, output_bytes, headers, schema)`` runs on every
``output.json`` and answers with a ``GateVerdict``:

- **reject** when the output is over the policy's size limit, is not a JSON object, breaks
  the algorithm's declared schema, or holds an identifying value of the case (``OUTPUT_PHI``);
  the verdict's ``error`` is the only part of a rejection that may travel to the hub;
- **hold** when it is clean but the policy wants a person to release every result
  (``workbench spoke pending`` / ``release`` / ``reject``);
- **pass** otherwise.

The PHI scan looks for every identifying value of the case's DICOM headers (patient id,
name and each part of it, birth and study dates in several spellings, accession number,
institution, study/series/instance UIDs) in every string of the output, in every key, and
in every number as JSON writes it, ignoring case. An algorithm has no business writing any
of them: it sees pseudonyms and day offsets only, so such a value in its output means it read
the DICOM headers and copied them out.

What counts as a match (the thresholds, and why):

- values shorter than 3 characters are ignored ("M", "Li", "1"): too common to mean anything;
- values made only of digits are ignored below 6 digits (a 4-digit "patient id" is as likely
  a voxel count), and match only where they are not part of a longer run of digits, so the
  id ``12345678`` does not match ``0.1234567891``, yet matches the number ``12345678``;
- other values shorter than 6 characters (a surname "Lee") match only where they do not
  continue a longer word or number ("lee", "Lee," but not "sleep");
- other values of 6 characters or more match anywhere, as in the participant JSON's guard.

Not caught, by design: values spelled differently from the headers beyond case and the
listed date spellings (accents dropped, ids re-punctuated, numbers in exponent form), and
identifiers the headers do not carry. The gate is a guard against copying, not a proof.

The verdict's ``detail`` and ``summary`` name the output fields (as JSON pointers) and the
kind of identifier found there, never the value; a key that is itself identifying is shown
as ``<key>``. Both stay at the spoke, in its log and its pending list.

>>> # gate = ReleaseGate(SpokePolicy.from_dict(config_policy_table))
>>> # verdict = gate.check(result.output, result.output_bytes, headers, algorithm.output_schema)
>>> # verdict.decision  -> Decision.PASS | Decision.HOLD | Decision.REJECT
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from workbench.core.headers import InstanceHeader
from workbench.core.output_schema import validate_output
from workbench.core.pseudonym import parse_dicom_date
from workbench.core.run_errors import Error, RunErrorCode
from workbench.spoke_service.policy import SpokePolicy

_MIN_CHARS = 3  # shorter identifying values are ignored
_MIN_DIGITS = 6  # shorter all-digit values are ignored
_ANYWHERE = 6  # values at least this long (not all digits) match anywhere in a string
_PERMUTED_PARTS = 3  # names of at most this many parts are also scanned in every order
_REPORTED = 20  # findings named in the detail; the rest are counted
_NAME_SEPARATORS = re.compile(r"[\^=\s,]+")  # PN components, groups, and how people write them


class Decision(StrEnum):
    """What the spoke does with an output."""

    PASS = "pass"
    HOLD = "hold"
    REJECT = "reject"


@dataclass(frozen=True)
class Finding:
    """A place in the output holding an identifying value of the case, and of which kind.

    ``field`` is a JSON pointer into the output (``/nodules/0/note``); ``kind`` is one of
    ``patient_id``, ``patient_name``, ``birth_date``, ``study_date``, ``accession``,
    ``institution``, ``uid``. ``in_key`` says the value was in an object key.
    """

    field: str
    kind: str
    in_key: bool = False


@dataclass(frozen=True)
class GateVerdict:
    """The gate's answer on one output.

    Attributes:
        decision: pass, hold or reject.
        error: for a rejection, the code and fixed reason the hub may be told; else ``None``.
        detail: what the operator needs to know (local only: log it, never send it).
        summary: one line for the pending list (local only).
        findings: where identifying values were found (local only).
    """

    decision: Decision
    error: Error | None = None
    detail: str = ""
    summary: str = ""
    findings: tuple[Finding, ...] = ()

    @property
    def passed(self) -> bool:
        """The output may be sent now."""
        return self.decision is Decision.PASS

    @property
    def held(self) -> bool:
        """The output is clean but waits for a person."""
        return self.decision is Decision.HOLD

    @property
    def rejected(self) -> bool:
        """The output must not leave; tell the hub ``error``."""
        return self.decision is Decision.REJECT


class ReleaseGate:
    """Checks outputs against the spoke's policy before they may leave.

    Args:
        policy: the spoke's policy (size limit, manual release); the defaults if ``None``.
    """

    def __init__(self, policy: SpokePolicy | None = None) -> None:
        self.policy = policy or SpokePolicy()

    def check(
        self,
        output: dict[str, Any],
        output_bytes: bytes,
        headers: Sequence[InstanceHeader],
        schema: dict[str, Any] | None = None,
    ) -> GateVerdict:
        """Judge one output: size, JSON object, schema, PHI scan, then the release policy.

        Args:
            output: the parsed ``output.json``, exactly as it will travel.
            output_bytes: the file's bytes (its hash travels; they must parse to ``output``).
            headers: the DICOM headers of the case's instances (the catalog's records).
            schema: the JSON Schema the algorithm declared, if any.

        Returns:
            A ``GateVerdict``. A schema violation that also leaks an identifier is reported
            as ``OUTPUT_PHI``: the leak is what an audit must see.

        >>> # ReleaseGate().check({"lav950": 12.5}, b'{"lav950": 12.5}', headers).passed
        """
        check = validate_output(output_bytes, schema, max_bytes=self.policy.max_output_bytes)
        if check.error is not None and check.error.code is not RunErrorCode.OUTPUT_SCHEMA_VIOLATION:
            return _reject(check.error.code, check.detail)
        if check.document is not None and check.document != output:
            return _reject(
                RunErrorCode.INTERNAL, "the output differs from the bytes it was read from"
            )
        if not headers:
            # Without the case's headers the scan would pass anything: fail closed.
            return _reject(RunErrorCode.INTERNAL, "the release gate was given no DICOM headers")
        needles = _needles(headers)
        values = _values(output)
        findings = _scan(values, needles)
        if findings:
            return _reject(RunErrorCode.OUTPUT_PHI, _describe(findings), findings)
        if check.error is not None:
            return _reject(check.error.code, check.detail)
        clean = (
            f"{len(output_bytes)} bytes, {len(values)} values scanned for "
            f"{len(needles)} identifying spellings: clean"
        )
        if self.policy.manual_release:
            return GateVerdict(Decision.HOLD, summary=f"manual release required; {clean}")
        return GateVerdict(Decision.PASS, summary=clean)


@dataclass(frozen=True)
class _Needle:
    """One spelling of an identifying value, folded, and how to look for it."""

    text: str
    kinds: tuple[str, ...]
    pattern: re.Pattern[str] | None  # None: plain substring

    def found_in(self, text: str) -> bool:
        if self.pattern is None:
            return self.text in text
        return self.pattern.search(text) is not None


@dataclass(frozen=True)
class _Value:
    """One string, key or number of the output, folded, and where it sits."""

    path: tuple[str | int, ...]
    text: str
    in_key: bool


def identifying_spellings(headers: Iterable[InstanceHeader]) -> dict[str, set[str]]:
    """Every spelling the gate scans for, folded, mapped to its kinds (before thresholds).

    >>> # identifying_spellings(headers)["moreau"]  -> {"patient_name"}
    """
    raw: set[tuple[str, str]] = set()
    for h in headers:
        raw |= {
            ("patient_id", h.patient_id), ("patient_name", h.patient_name),
            ("birth_date", h.birth_date), ("study_date", h.study_date),
            ("accession", h.accession), ("institution", h.institution),
            ("uid", h.study_uid), ("uid", h.series_uid), ("uid", h.sop_uid),
        }  # fmt: skip
    # sop_class_uid is left out on purpose: it names a public standard ("CT Image Storage"),
    # the same in every hospital, and says nothing about the patient.
    spellings: dict[str, set[str]] = {}
    for kind, value in raw:
        for spelling in _spellings(kind, value.strip()):
            folded = _fold(spelling).strip()
            if folded:
                spellings.setdefault(folded, set()).add(kind)
    return spellings


def _spellings(kind: str, value: str) -> set[str]:
    if not value:
        return set()
    if kind == "patient_name":
        return _name_spellings(value)
    if kind in ("birth_date", "study_date"):
        return _date_spellings(value)
    if kind in ("patient_id", "accession") and value.isdigit():
        return {value, value.lstrip("0")}  # a numeric id written as a JSON number
    return {value}


def _name_spellings(value: str) -> set[str]:
    parts = [p for p in _NAME_SEPARATORS.split(value) if p]
    spellings = {value}
    orders = itertools.permutations(parts) if len(parts) <= _PERMUTED_PARTS else iter([parts])
    for order in orders:
        spellings |= {" ".join(order), "".join(order), ", ".join(order)}
    for part in parts:
        spellings.add(part)
        spellings.update(p for p in part.split("-") if p)  # "Dupont-Martin"
    return spellings


def _date_spellings(value: str) -> set[str]:
    day = parse_dicom_date(value)
    if day is None:
        return {value}
    y, m, d = f"{day.year:04d}", f"{day.month:02d}", f"{day.day:02d}"
    return {
        value, f"{y}{m}{d}", f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{y}.{m}.{d}",
        f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{d}-{m}-{y}", f"{m}/{d}/{y}", f"{m}-{d}-{y}",
    }  # fmt: skip


def _needles(headers: Iterable[InstanceHeader]) -> list[_Needle]:
    needles = []
    for text, kinds in identifying_spellings(headers).items():
        if len(text) < _MIN_CHARS:
            continue
        if text.isdigit():
            if len(text) < _MIN_DIGITS:
                continue
            pattern: re.Pattern[str] | None = _bounded(text)
        elif len(text) < _ANYWHERE:
            pattern = _bounded(text)
        else:
            pattern = None
        needles.append(_Needle(text, tuple(sorted(kinds)), pattern))
    return needles


def _bounded(text: str) -> re.Pattern[str]:
    """``text`` where it does not continue a longer run of letters or digits."""
    return re.compile(_guard(text[0], "(?<!{})") + re.escape(text) + _guard(text[-1], "(?!{})"))


def _guard(edge: str, template: str) -> str:
    if edge.isdigit():
        return template.format(r"\d")
    if edge.isalpha():
        return template.format(r"[^\W\d_]")
    return ""


def _fold(text: str) -> str:
    # NFKC first, so full-width digits or ligatures cannot hide a value from the scan.
    return unicodedata.normalize("NFKC", text).casefold()


def _values(output: dict[str, Any]) -> list[_Value]:
    """Every key, string and number of the output, as text, with its path."""
    values: list[_Value] = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), output)]
    while stack:  # a loop, not recursion: nesting depth is the algorithm's choice
        path, node = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                values.append(_Value((*path, str(key)), _fold(str(key)), True))
                stack.append(((*path, str(key)), child))
        elif isinstance(node, list):
            stack.extend(((*path, i), child) for i, child in enumerate(node))
        elif isinstance(node, str):
            values.append(_Value(path, _fold(node), False))
        elif isinstance(node, int | float) and not isinstance(node, bool):
            values.append(_Value(path, json.dumps(node), False))  # as it travels
    return values


def _scan(values: list[_Value], needles: list[_Needle]) -> tuple[Finding, ...]:
    # One pass over all the text per needle (fast, in C) finds the few needles present;
    # only those are then looked for value by value. NUL cannot join two values into a match.
    everything = "\x00".join(v.text for v in values)
    hits: list[tuple[_Value, str]] = []
    for needle in needles:
        if needle.text not in everything:
            continue
        for value in values:
            if needle.found_in(value.text):
                hits.extend((value, kind) for kind in needle.kinds)
    identifying_keys = {v.path[-1] for v, _ in hits if v.in_key}
    findings = {Finding(_pointer(v.path, identifying_keys), kind, v.in_key) for v, kind in hits}
    return tuple(sorted(findings, key=lambda f: (f.field, f.kind, f.in_key)))


def _pointer(path: tuple[str | int, ...], redacted: set[str | int]) -> str:
    """An RFC 6901 JSON pointer, with identifying keys replaced by ``<key>``."""
    parts = []
    for segment in path:
        if isinstance(segment, str) and segment in redacted:
            parts.append("<key>")
        else:
            parts.append(str(segment).replace("~", "~0").replace("/", "~1"))
    return "/" + "/".join(parts) if parts else ""


def _describe(findings: tuple[Finding, ...]) -> str:
    shown = [
        f"{f.field or '(root)'} ({'key: ' if f.in_key else ''}{f.kind})"
        for f in findings[:_REPORTED]
    ]
    more = len(findings) - len(shown)
    return (
        "identifying values of the case in the output: "
        + ", ".join(shown)
        + (f" and {more} more" if more else "")
    )


def _reject(code: RunErrorCode, detail: str, findings: tuple[Finding, ...] = ()) -> GateVerdict:
    fields = len({f.field for f in findings})
    summary = f"rejected: {code.value}" + (f" in {fields} field(s)" if findings else "")
    return GateVerdict(Decision.REJECT, Error.of(code), detail, summary, findings)
