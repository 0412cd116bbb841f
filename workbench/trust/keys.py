"""Ed25519 signing keys on disk, their key ids, and the store of keys a party trusts.

A key pair lives in one folder, as written by ``workbench keys new DIR``::

    DIR/private.pem    PKCS#8, unencrypted, mode 0600: stays with its owner
    DIR/public.pem     SubjectPublicKeyInfo: handed to whoever verifies

A key id is the first 16 hex digits of the SHA-256 of the 32-byte raw public key; it names
the signer in every signature. A ``TrustStore`` maps key ids to the public keys a party
accepts, each with a name (the Hub's store names each spoke's key after the spoke).

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp()) / "hub"
>>> pair = new_key_pair(folder)
>>> trust = TrustStore.from_paths([pair.public])
>>> trust.name_of(pair.key_id)
'hub'
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from workbench.errors import KeyFileError

__all__ = [
    "KEY_ID_LENGTH",
    "PRIVATE_FILE",
    "PUBLIC_FILE",
    "KeyPairFiles",
    "TrustStore",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "new_key_pair",
]

log = logging.getLogger(__name__)

PRIVATE_FILE = "private.pem"
PUBLIC_FILE = "public.pem"
KEY_ID_LENGTH = 16


@dataclass(frozen=True)
class KeyPairFiles:
    """Where a new key pair was written, and its key id."""

    private: Path
    public: Path
    key_id: str


def generate_key() -> Ed25519PrivateKey:
    """A new random Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The key id: the first 16 hex digits of SHA-256 over the raw 32-byte public key.

    >>> len(key_id(generate_key()))
    16
    """
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(public.public_bytes_raw()).hexdigest()[:KEY_ID_LENGTH]


def new_key_pair(directory: Path | str, key: Ed25519PrivateKey | None = None) -> KeyPairFiles:
    """Write a key pair as ``directory/private.pem`` (mode 0600) and ``directory/public.pem``.

    The folder is created (mode 0700) if missing. Existing key files are never overwritten:
    losing a private key that others trust is not something to do by accident.

    Args:
        directory: the folder of the pair.
        key: the private key to write; a new one by default.

    Raises:
        KeyFileError: either file exists already, or the folder cannot be written.
    """
    folder = Path(directory)
    key = key or generate_key()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    paths = (folder / PRIVATE_FILE, folder / PUBLIC_FILE)
    for path in paths:
        if path.exists() or path.is_symlink():
            raise KeyFileError(f"{path} exists already; refusing to overwrite a key")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise KeyFileError(f"cannot create {folder}: {e.strerror}") from e
    created: list[Path] = []
    try:
        for path, data, mode in ((paths[0], private_pem, 0o600), (paths[1], public_pem, 0o644)):
            _write_new(path, data, mode)
            created.append(path)
    except OSError as e:
        for path in created:  # never leave half a pair behind
            path.unlink(missing_ok=True)
        if isinstance(e, FileExistsError):
            raise KeyFileError(f"{e.filename} exists already; refusing to overwrite a key") from e
        raise KeyFileError(f"cannot write the key pair in {folder}: {e.strerror}") from e
    return KeyPairFiles(paths[0], paths[1], key_id(key))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL closes the gap between the existence check and the write; O_NOFOLLOW refuses a
    # planted symlink. fchmod because the umask may have taken bits from ``mode``.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """Read an unencrypted PKCS#8 PEM Ed25519 private key.

    A key file readable by group or others is loaded, with a warning in the log.

    Raises:
        KeyFileError: missing, unreadable, encrypted, not PEM, or not an Ed25519 key.
    """
    path = Path(path)
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:  # what cryptography raises for an encrypted key without password
        raise KeyFileError(f"{path} is encrypted; use an unencrypted PKCS#8 key") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{path} is not a PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key ({type(key).__name__})")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("private key %s is readable by others (mode %04o); chmod 600 it", path, mode)
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key (SubjectPublicKeyInfo, as in ``public.pem``).

    Raises:
        KeyFileError: missing, unreadable, a private key, not PEM, or not an Ed25519 key.
    """
    path = Path(path)
    data = _read(path)
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(f"{path} holds a private key; trust only public keys (public.pem)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{path} is not a PEM public key") from e
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 key ({type(key).__name__})")
    return key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from e


class TrustStore:
    """The public keys a party accepts signatures from, by key id, each with a name.

    Names say whose a key is (``hub``, ``site-01``); several keys may share a name while a
    key is rotated. Build one from files or folders with ``from_paths``, or in code::

        trust = TrustStore()
        trust.add(spoke_key.public_key(), name="site-01")
    """

    def __init__(self) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._raw: dict[str, bytes] = {}
        self._names: dict[str, str] = {}

    @classmethod
    def from_paths(cls, paths: Iterable[Path | str]) -> TrustStore:
        """A store of the public keys in ``paths``: PEM files, or folders of ``*.pem`` files.

        A key is named after its file (``site-01.pem`` is ``site-01``), or after its folder
        when the file is called ``public.pem`` (``keys/site-01/public.pem``).

        Raises:
            KeyFileError: a path is missing, a folder holds no ``.pem`` file, or a file is not
                an Ed25519 public key (a private key in a trust folder is refused too).
        """
        store = cls()
        for path in map(Path, paths):
            if path.is_dir():
                files = sorted(p for p in path.glob("*.pem") if p.is_file())
                if not files:
                    raise KeyFileError(f"no .pem public keys in the trust folder {path}")
            else:
                files = [path]
            for file in files:
                name = file.parent.name if file.name == PUBLIC_FILE else file.stem
                store.add(load_public_key(file), name=name)
        return store

    def add(self, key: Ed25519PublicKey, name: str | None = None) -> str:
        """Trust ``key`` under ``name`` (its key id by default); returns its key id.

        Raises:
            KeyFileError: another key with the same key id is trusted already (a 64-bit
                collision: never by chance).
        """
        kid = key_id(key)
        held = self._keys.get(kid)
        if held is not None and held.public_bytes_raw() != key.public_bytes_raw():
            raise KeyFileError(f"two different keys share the key id {kid}")
        self._keys[kid] = key
        self._raw[kid] = key.public_bytes_raw()
        self._names[kid] = name or kid
        return kid

    def get(self, kid: str) -> Ed25519PublicKey | None:
        """The trusted public key with this key id, or ``None``."""
        return self._keys.get(kid)

    def raw(self, kid: str) -> bytes | None:
        """The 32 bytes of the trusted public key with this key id, or ``None``."""
        return self._raw.get(kid)

    def name_of(self, kid: str) -> str | None:
        """The name the key with this key id was trusted under, or ``None``."""
        return self._names.get(kid)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The trusted key ids, sorted."""
        return tuple(sorted(self._keys))

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self.key_ids)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        keys = ", ".join(f"{self._names[k]}={k}" for k in self.key_ids)
        return f"TrustStore({keys})"
