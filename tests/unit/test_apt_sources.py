from __future__ import annotations

from pathlib import Path

import pytest

from workbench.errors import ImageBuildError
from workbench.images.apt_sources import debian_mirror

DEB822 = """Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
# a comment
URIs: http://mirror.invalid/debian/
Suites: bookworm bookworm-updates
Components: main
"""


def apt_dir(tmp_path: Path, sources: str = "", one_line: str = "") -> Path:
    (tmp_path / "sources.list.d").mkdir()
    if sources:
        (tmp_path / "sources.list.d" / "debian.sources").write_text(sources)
    if one_line:
        (tmp_path / "sources.list").write_text(one_line)
    return tmp_path


def test_deb822_sources_give_the_suite_mirror(tmp_path: Path) -> None:
    assert debian_mirror("bookworm", apt_dir(tmp_path, DEB822)) == "http://mirror.invalid/debian"


def test_one_line_sources_are_read_too(tmp_path: Path) -> None:
    text = "deb [arch=amd64] http://other.invalid/debian bookworm main\n"
    assert (
        debian_mirror("bookworm", apt_dir(tmp_path, one_line=text)) == "http://other.invalid/debian"
    )


def test_a_missing_suite_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match="no apt source for Debian 'trixie'"):
        debian_mirror("trixie", apt_dir(tmp_path, DEB822))
