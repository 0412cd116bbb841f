"""``workbench algorithm``: tools for algorithm developers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from workbench.cli.common import (
    DEFAULT_SECRET,
    Sub,
    group,
    load_secret,
    positive_float,
    positive_int,
)
from workbench.cli.experiment import add_hub_option


def register(sub: Sub) -> None:
    """Add this area's commands to the ``workbench`` parser."""
    algorithm = group(sub, "algorithm", "algorithm developer tools")
    p = algorithm.add_parser(
        "run-local",
        help="run an algorithm image on one local case exactly as a spoke would",
        description="Treat the DICOM below --dicom as one participant case, build its "
        "de-identified participant.json, run IMAGE in the spoke's sandbox (no network, "
        "read-only root, non-root, no capabilities, limits) and write output.json, "
        "participant.json and container.log into --out. Exits 1 with a one-line reason "
        "(an error code from the fixed table) when the run fails.",
    )
    p.add_argument("image", metavar="IMAGE", help="image reference or id (never pulled)")
    p.add_argument("--dicom", type=Path, required=True, help="the case's DICOM folder")
    p.add_argument("--out", type=Path, required=True, help="where results are written")
    p.add_argument(
        "--arg", action="append", default=[], metavar="KEY=VALUE",
        help="an algorithm argument (repeatable); JSON values keep their type",
    )  # fmt: skip
    p.add_argument("--timeout", type=positive_float, default=600.0, help="seconds (600)")
    p.add_argument("--memory", default="2g", help="memory limit, e.g. 512m, 2g (2g)")
    p.add_argument("--cpus", type=positive_float, default=1.0, help="CPU limit (1.0)")
    p.add_argument("--pids", type=positive_int, default=128, help="process limit (128)")
    p.add_argument(
        "--secret-file", type=Path, default=DEFAULT_SECRET,
        help=f"pseudonym secret, created if missing ({DEFAULT_SECRET})",
    )  # fmt: skip
    p.add_argument(
        "--signature", type=Path, metavar="SIG",
        help="the image's signature (workbench algorithm sign); checked by digest first",
    )  # fmt: skip
    p.add_argument(
        "--trust", type=Path, action="append", default=[], metavar="PUBKEY",
        help="a trusted publisher key (PEM file or folder; repeatable); with it an unsigned, "
        "swapped or untrusted image is refused before any container starts",
    )  # fmt: skip
    p.set_defaults(handler=_run_local)

    p = algorithm.add_parser(
        "register",
        help="register a local algorithm image with the hub",
        description="Read IMAGE's org.elic.* labels (name, version, output and argument "
        "schemas) and its digest from the local Docker Engine, and register it with the hub. "
        "The same name and version with another digest is refused: give it a new version. "
        "With --signature, the image's publisher signature travels in every experiment's "
        "manifest; spokes verify it by digest before each run.",
    )
    p.add_argument("image", metavar="IMAGE", help="local image reference or id (never pulled)")
    p.add_argument(
        "--signature", type=Path, metavar="SIG",
        help="the image's signature file (workbench algorithm sign); must name its digest",
    )  # fmt: skip
    add_hub_option(p)
    p.set_defaults(handler=_register)

    p = algorithm.add_parser(
        "sign",
        help="sign a local algorithm image's id with a publisher key",
        description="Read IMAGE's id (sha256:..., the content id a spoke checks before every "
        "run) from the local Docker Engine and write a signature of it and of the name IMAGE "
        "(a cosign-style simple-signing payload, sealed with the Ed25519 key) to SIG. "
        "Spokes that trust the key's public.pem run the image only if its id matches.",
    )
    p.add_argument("image", metavar="IMAGE", help="local image reference (never pulled)")
    p.add_argument("--key", type=Path, required=True, metavar="FILE", help="a private.pem")
    p.add_argument("--out", type=Path, required=True, metavar="SIG", help="signature file")
    p.set_defaults(handler=_sign)


def _verified(engine: Any, image: str, signature: Path | None, trust: list[Path]) -> str:
    """The image id to run, once its signature verified against ``trust`` (as a spoke does)."""
    from workbench.core.run_errors import RunErrorCode
    from workbench.errors import ConfigError, EngineError, SignatureError
    from workbench.trust.image_signature import verify_image
    from workbench.trust.keys import TrustStore

    if not trust:
        raise ConfigError("--signature needs at least one --trust key to check it against")
    image_id = str(engine.image(image).id)
    try:
        verify_image(signature, image_id, TrustStore.from_paths(trust))
    except SignatureError as e:
        raise EngineError(RunErrorCode.IMAGE_UNTRUSTED, f"{image}: {e}") from e
    return image_id


def _run_local(ns: argparse.Namespace) -> int:
    from workbench.core.contract import parse_cli_args
    from workbench.core.pseudonym import Pseudonymizer
    from workbench.errors import CaseError, ConfigError, EngineError
    from workbench.spoke_service.engine import DockerEngine
    from workbench.spoke_service.run_local import run_local
    from workbench.spoke_service.sandbox import Limits, parse_size

    try:
        args = parse_cli_args(ns.arg)
        limits = Limits(
            timeout_s=ns.timeout, memory_bytes=parse_size(ns.memory), cpus=ns.cpus, pids=ns.pids
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
    secret = load_secret(ns.secret_file.expanduser())
    try:
        engine = DockerEngine.from_env()
        image = ns.image
        if ns.trust or ns.signature:
            image = _verified(engine, ns.image, ns.signature, ns.trust)
        done = run_local(engine, image, ns.dicom, ns.out, Pseudonymizer(secret), args, limits)
    except (CaseError, EngineError) as e:
        print(f"run-local: {e.code.value}: {e.detail}", file=sys.stderr)
        return 1
    result = done.result
    skipped = sum(done.skipped.values())
    note = f"; {skipped} non-image files skipped" if skipped else ""
    if result.error is not None:
        where = f"; log: {ns.out / 'container.log'}" if result.log_path else ""
        print(
            f"run-local: {result.error.code.value}: {result.error.reason} ({result.detail}){where}",
            file=sys.stderr,
        )
        return 1
    print(
        f"ok in {result.seconds:.2f} s: {done.case.instance_count} files in "
        f"{len(done.case.series)} series{note}; wrote {ns.out / 'output.json'}"
    )
    return 0


def _register(ns: argparse.Namespace) -> int:
    from workbench.hub_kernel.client import HubClient
    from workbench.hub_kernel.registry import spec_from_image
    from workbench.spoke_service.engine import DockerEngine

    spec = spec_from_image(DockerEngine.from_env(), ns.image)
    body = spec.model_dump(mode="json")
    if ns.signature is not None:
        from workbench.trust.image_signature import read_signature

        body["signature"] = read_signature(ns.signature)
    reply = HubClient(ns.hub).register_algorithm(body)
    what = "registered" if reply["created"] else "already registered"
    signed = " (signed)" if reply["algorithm"].get("signature") else ""
    print(f"{what}: {spec.name}:{spec.version} = {spec.digest}{signed}")
    return 0


def _sign(ns: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from workbench import __version__
    from workbench.spoke_service.engine import DockerEngine
    from workbench.trust.image_signature import sign_image, write_signature
    from workbench.trust.keys import load_private_key

    key = load_private_key(ns.key)
    image_id = DockerEngine.from_env().image(ns.image).id
    optional = {"signed_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "tool": f"workbench {__version__}"}  # fmt: skip
    signature = sign_image(ns.image, image_id, key, optional)
    write_signature(ns.out, signature)
    print(f"signed {ns.image} = {image_id} with key {signature['signature']['key_id']}: {ns.out}")
    return 0
