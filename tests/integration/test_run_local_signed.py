"""``run-local --signature --trust``: an image is verified by digest before any container."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from workbench.synth.cohort import generate_cohort

pytestmark = pytest.mark.docker


def workbench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, algorithm_images: dict[str, str]) -> Any:
    root = tmp_path_factory.mktemp("signed")
    for who in ("publisher", "stranger"):
        assert workbench("keys", "new", root / who).returncode == 0
    for name in ("naive-baseline", "lung-lav950"):
        key = root / "publisher" / "private.pem"
        done = workbench("algorithm", "sign", algorithm_images[name], "--key", key,
                         "--out", root / f"{name}.sig")  # fmt: skip
        assert done.returncode == 0, done.stderr
    generate_cohort(root / "cohort", 1, 1)
    (root / "case").symlink_to(next((root / "cohort" / "site-01" / "dicom").iterdir()))
    return root


def run(root: Path, image: str, signature: str | None, trust: str, out: str) -> Any:
    extra = ["--signature", root / signature] if signature else []
    return workbench("algorithm", "run-local", image, "--dicom", root / "case", "--out",
                     root / out, "--trust", root / trust / "public.pem",
                     "--secret-file", root / "secret", *extra)  # fmt: skip


def test_a_signed_image_runs(signed: Path, algorithm_images: dict[str, str]) -> None:
    done = run(signed, algorithm_images["naive-baseline"], "naive-baseline.sig", "publisher", "ok")
    assert done.returncode == 0, done.stderr
    assert (signed / "ok" / "output.json").is_file()


@pytest.mark.parametrize(
    ("signature", "trust", "why"),
    [
        ("lung-lav950.sig", "publisher", "swapped"),  # a valid signature, for another image
        ("naive-baseline.sig", "stranger", "untrusted"),
        (None, "publisher", "unsigned"),
    ],
)
def test_a_refused_image_never_starts(
    signed: Path, algorithm_images: dict[str, str], signature: str | None, trust: str, why: str
) -> None:
    done = run(signed, algorithm_images["naive-baseline"], signature, trust, f"refused-{why}")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "IMAGE_UNTRUSTED" in done.stderr
    assert not (signed / f"refused-{why}" / "participant.json").exists()  # nothing was staged
