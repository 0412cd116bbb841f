"""Finds the Debian archive this machine already uses, so images build without the internet.

The mirror is read from the machine's apt configuration at build time and never written
into the repository: deb822 ``*.sources`` files first, then one-line ``sources.list`` files.
"""

from __future__ import annotations

from pathlib import Path

from workbench.errors import ImageBuildError

APT_DIR = Path("/etc/apt")


def debian_mirror(suite: str, apt_dir: Path = APT_DIR) -> str:
    """The archive URL serving ``suite`` (e.g. ``bookworm``) in this machine's apt sources.

    Raises:
        ImageBuildError: no configured source serves that suite.
    """
    for url, suites in _entries(apt_dir):
        if suite in suites and "security" not in url:
            return url
    raise ImageBuildError(
        f"no apt source for Debian {suite!r} in {apt_dir}/sources.list(.d); "
        "configure one (the base image is built from the machine's own mirror)"
    )


def _entries(apt_dir: Path) -> list[tuple[str, set[str]]]:
    found: list[tuple[str, set[str]]] = []
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        found += _deb822(path.read_text(errors="replace"))
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if path.is_file():
            found += _one_line(path.read_text(errors="replace"))
    return found


def _deb822(text: str) -> list[tuple[str, set[str]]]:
    entries = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        suites = set(fields.get("suites", "").split())
        entries += [(url.rstrip("/"), suites) for url in fields.get("uris", "").split()]
    return entries


def _one_line(text: str) -> list[tuple[str, set[str]]]:
    entries = []
    for line in text.splitlines():
        words = [w for w in line.split() if not w.startswith("[")]
        if len(words) >= 3 and words[0] == "deb":
            entries.append((words[1].rstrip("/"), {words[2]}))
    return entries
