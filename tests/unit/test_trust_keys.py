"""Key pairs on disk, key ids and the trust store."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from workbench.errors import KeyFileError
from workbench.trust.keys import (
    TrustStore,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    new_key_pair,
)


def test_new_pair_is_written_private_0600_and_loads_back(tmp_path: Path) -> None:
    key = generate_key()

    pair = new_key_pair(tmp_path / "hub", key)

    assert stat.S_IMODE(os.stat(pair.private).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pair.public).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "hub").st_mode) == 0o700
    assert b"BEGIN PRIVATE KEY" in pair.private.read_bytes()  # PKCS#8, not encrypted
    assert load_private_key(pair.private).private_bytes_raw() == key.private_bytes_raw()
    assert load_public_key(pair.public).public_bytes_raw() == key.public_key().public_bytes_raw()
    assert pair.key_id == key_id(key)


def test_private_key_is_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        pair = new_key_pair(tmp_path / "k")
    finally:
        os.umask(old)

    assert stat.S_IMODE(os.stat(pair.private).st_mode) == 0o600


@pytest.mark.parametrize("existing", ["private.pem", "public.pem"])
def test_existing_key_files_are_never_overwritten(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious\n")

    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        new_key_pair(tmp_path)

    assert (tmp_path / existing).read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]  # no half pair left


def test_key_id_is_first_16_hex_of_sha256_of_raw_public_key() -> None:
    key = generate_key()

    kid = key_id(key.public_key())

    raw = key.public_key().public_bytes_raw()
    assert kid == hashlib.sha256(raw).hexdigest()[:16]
    assert key_id(key) == kid


def test_loading_refuses_other_kinds_of_files(tmp_path: Path) -> None:
    pair = new_key_pair(tmp_path / "k")
    ec = generate_private_key(SECP256R1())
    ec_pem = tmp_path / "ec.pem"
    ec_pem.write_bytes(
        ec.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(
        generate_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )

    with pytest.raises(KeyFileError, match="holds a private key"):
        load_public_key(pair.private)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_private_key(pair.public)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_public_key(ec_pem)
    with pytest.raises(KeyFileError, match="encrypted"):
        load_private_key(encrypted)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_public_key(tmp_path / "missing.pem")


def test_a_private_key_readable_by_others_is_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pair = new_key_pair(tmp_path / "k")
    pair.private.chmod(0o644)

    with caplog.at_level(logging.WARNING, logger="workbench.trust.keys"):
        load_private_key(pair.private)

    assert "readable by others" in caplog.text


def test_trust_store_from_files_and_folders_names_each_key(tmp_path: Path) -> None:
    hub = new_key_pair(tmp_path / "hub")
    folder = tmp_path / "trusted"
    folder.mkdir()
    spokes = {}
    for name in ("site-01", "site-02"):
        key = generate_key()
        spokes[name] = key_id(key)
        (folder / f"{name}.pem").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    trust = TrustStore.from_paths([hub.public, folder])

    assert len(trust) == 3
    assert trust.name_of(hub.key_id) == "hub"
    assert {trust.name_of(k) for k in spokes.values()} == {"site-01", "site-02"}
    assert spokes["site-01"] in trust
    assert trust.get("0" * 16) is None


def test_trust_store_refuses_an_empty_folder_and_a_private_key(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    pair = new_key_pair(tmp_path / "k")

    with pytest.raises(KeyFileError, match=r"no \.pem public keys"):
        TrustStore.from_paths([tmp_path / "empty"])
    with pytest.raises(KeyFileError, match="holds a private key"):
        TrustStore.from_paths([tmp_path / "k"])
    assert TrustStore.from_paths([pair.public]).key_ids == (pair.key_id,)
