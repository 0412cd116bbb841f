"""Hand-written fakes that record what they were sent (no MagicMock chains)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workbench.core.contract import LABEL_OUTPUT_SCHEMA
from workbench.core.run_errors import RunErrorCode
from workbench.errors import EngineError
from workbench.spoke_service.engine import ContainerOutcome, ImageInfo
from workbench.spoke_service.sandbox import SandboxSpec

SCHEMA = {"type": "object", "required": ["score"], "properties": {"score": {"type": "number"}}}
IMAGE_ID = "sha256:" + "ab" * 32


@dataclass
class FakeEngine:
    """Plays the algorithm by writing into the staged output folder; records what it saw."""

    act: Callable[[Path], None]
    exit_code: int = 0
    timed_out: bool = False
    oom: bool = False
    pids: bool = False
    labels: dict[str, str] = field(
        default_factory=lambda: {LABEL_OUTPUT_SCHEMA: json.dumps(SCHEMA)}
    )
    specs: list[SandboxSpec] = field(default_factory=list)
    seen_participant: dict | None = None
    seen_dicom: list[str] = field(default_factory=list)

    pulled: list[str] = field(default_factory=list)
    local: set[str] | None = None  # references present locally; None: every one but "missing"

    def image(self, reference: str) -> ImageInfo:
        present = reference != "missing" if self.local is None else reference in self.local
        if not present:
            raise EngineError(RunErrorCode.IMAGE_NOT_FOUND, "no such image")
        return ImageInfo(IMAGE_ID, self.labels)

    removed: list[dict[str, str]] = field(default_factory=list)

    def remove_containers(self, labels: dict[str, str]) -> int:
        self.removed.append(dict(labels))
        return 0

    stopped: list[dict[str, str]] = field(default_factory=list)

    def stop_containers(self, labels: dict[str, str]) -> int:
        """Records the labels; a run whose container carries them ends as killed (137)."""
        self.stopped.append(dict(labels))
        return 1

    def _was_stopped(self, spec: SandboxSpec) -> bool:
        return any(s.items() <= spec.labels.items() for s in self.stopped)

    def pull(self, reference: str) -> ImageInfo:
        self.pulled.append(reference)
        if self.local is not None:
            self.local |= {reference, IMAGE_ID}
        return self.image(reference)

    def run(self, spec: SandboxSpec) -> ContainerOutcome:
        self.specs.append(spec)
        self.seen_participant = json.loads((Path(spec.input_dir) / "participant.json").read_text())
        self.seen_dicom = sorted(
            str(p.relative_to(spec.dicom_dir)) for p in Path(spec.dicom_dir).rglob("*.dcm")
        )
        self.act(Path(spec.output_dir))
        if self._was_stopped(spec):
            return ContainerOutcome(137, False, False, False, b"killed\n", 0.1)
        return ContainerOutcome(
            self.exit_code, self.timed_out, self.oom, self.pids, b"algorithm log\n", 0.1
        )
