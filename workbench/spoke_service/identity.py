"""A spoke's two secrets, each made on its first start when it has none.

- its Ed25519 signing key (``state_dir/keys/private.pem`` unless ``signing_key`` names
  one): every message it sends is signed with it; the operator gives ``public.pem`` to the
  hub, which trusts it under the spoke's id;
- its pseudonym secret (``SpokeConfig.secret_path``, mode 0600): the key of the HMAC that
  names participants and series without identifiers. It never leaves the spoke; losing it
  renames every participant.
"""

from __future__ import annotations

import os
import secrets

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from workbench.spoke_service.config import SpokeConfig
from workbench.trust.keys import load_private_key, new_key_pair

__all__ = ["pseudonym_secret", "signing_key"]


def signing_key(config: SpokeConfig) -> Ed25519PrivateKey:
    """The spoke's signing key; a new pair is made when none is configured or present."""
    path = config.key_path
    if not path.exists() and config.signing_key is None:
        new_key_pair(path.parent)
    return load_private_key(path)


def pseudonym_secret(config: SpokeConfig) -> bytes:
    """The spoke's pseudonym secret (32 random bytes); made, mode 0600, when absent."""
    path = config.secret_path
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())
