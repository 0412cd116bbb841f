"""``workbench keys``, ``workbench audit verify`` and ``workbench algorithm sign``."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from workbench.cli.main import main
from workbench.core.run_errors import RunErrorCode
from workbench.errors import EngineError, ImageSignatureError
from workbench.spoke_service.engine import DockerEngine, ImageInfo
from workbench.trust.audit import AuditLog
from workbench.trust.image_signature import verify_image
from workbench.trust.keys import TrustStore

IMAGE_ID = "sha256:" + "5e" * 32


@dataclass
class _Engine:
    """Knows one image; records the references it was asked about."""

    images: dict[str, str]
    asked: list[str] = field(default_factory=list)

    def image(self, reference: str) -> ImageInfo:
        self.asked.append(reference)
        if reference not in self.images:
            raise EngineError(RunErrorCode.IMAGE_NOT_FOUND, f"no image {reference!r}")
        return ImageInfo(self.images[reference], {})


@pytest.mark.parametrize(
    "command", [["keys", "new"], ["keys", "id"], ["audit", "verify"], ["algorithm", "sign"]]
)
def test_trust_commands_have_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])

    assert done.value.code == 0
    assert "usage: workbench" in capsys.readouterr().out


def test_keys_new_writes_a_pair_and_refuses_to_overwrite_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "site-01"

    first = main(["keys", "new", str(folder)])
    printed = capsys.readouterr().out
    before = (folder / "private.pem").read_bytes()
    second = main(["keys", "new", str(folder)])

    assert first == 0 and second == 1
    assert stat.S_IMODE(os.stat(folder / "private.pem").st_mode) == 0o600
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (folder / "private.pem").read_bytes() == before
    assert main(["keys", "id", str(folder / "public.pem")]) == 0
    kid = capsys.readouterr().out.strip()
    assert f"key id {kid}" in printed
    assert TrustStore.from_paths([folder / "public.pem"]).key_ids == (kid,)


def test_audit_verify_exits_zero_on_a_clean_log_and_one_naming_the_bad_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        for n in range(4):
            log.append("event", {"n": n})
        head = log.head()

    clean = main(["audit", "verify", str(path), "--head", str(head)])
    clean_out = capsys.readouterr().out
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([lines[0], lines[2], lines[1], lines[3]]))
    swapped = main(["audit", "verify", str(path)])
    swapped_err = capsys.readouterr().err
    path.write_bytes(b"".join(lines[:3]))
    truncated = main(["audit", "verify", str(path), "--head", str(head)])
    truncated_err = capsys.readouterr().err

    assert clean == 0 and f"ok, 4 entries, head {head}" in clean_out
    assert swapped == 1 and "entry 2 (line 2): out_of_sequence" in swapped_err
    assert truncated == 1 and "entry 4 (line 4): truncated" in truncated_err


def test_audit_verify_refuses_a_malformed_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["audit", "verify", str(tmp_path / "a.jsonl"), "--head", "7:nothex"])

    assert done.value.code == 2
    assert "SEQ:HASH" in capsys.readouterr().err


def test_algorithm_sign_signs_the_local_image_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = _Engine({"elic/lung:1.0": IMAGE_ID})
    monkeypatch.setattr(DockerEngine, "from_env", staticmethod(lambda: engine))
    assert main(["keys", "new", str(tmp_path / "publisher")]) == 0
    sig = tmp_path / "lung.sig.json"
    key = str(tmp_path / "publisher" / "private.pem")

    status = main(["algorithm", "sign", "elic/lung:1.0", "--key", key, "--out", str(sig)])

    trust = TrustStore.from_paths([tmp_path / "publisher" / "public.pem"])
    assert status == 0 and engine.asked == ["elic/lung:1.0"]
    assert IMAGE_ID in capsys.readouterr().out
    signed = verify_image(sig, IMAGE_ID, trust, signer="publisher")
    assert signed.reference == "elic/lung:1.0"
    assert set(signed.optional) == {"signed_at", "tool"}
    with pytest.raises(ImageSignatureError, match="a different image"):
        verify_image(sig, "sha256:" + "00" * 32, trust)


def test_algorithm_sign_fails_cleanly_without_the_image_or_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(DockerEngine, "from_env", staticmethod(lambda: _Engine({})))
    assert main(["keys", "new", str(tmp_path / "k")]) == 0
    capsys.readouterr()
    key = str(tmp_path / "k" / "private.pem")
    out = str(tmp_path / "x.sig.json")

    no_image = main(["algorithm", "sign", "elic/absent:1", "--key", key, "--out", out])
    no_image_err = capsys.readouterr().err
    no_key = main(["algorithm", "sign", "elic/absent:1", "--key", str(tmp_path), "--out", out])
    no_key_err = capsys.readouterr().err

    assert no_image == 1 and "no image 'elic/absent:1'" in no_image_err
    assert no_key == 1 and "cannot read key file" in no_key_err
    assert not Path(out).exists()
