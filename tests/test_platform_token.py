"""The Platform API's bearer token file (sniffer/platform_token.py), without a server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sniffer.platform_model import PlatformRejected
from sniffer.platform_token import TokenFile


@pytest.fixture
def always_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    # Look at the file on every call, so that a test needs no clock.
    monkeypatch.setattr(TokenFile, "RECHECK_S", 0.0)


def _rotate(path: Path, token: str) -> None:
    # As a Secret mount does: a new file swapped in, so the inode changes.
    fresh = path.with_suffix(".new")
    fresh.write_text(token + "\n")
    os.replace(fresh, path)


def test_the_token_is_the_files_content_without_white_space(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  secret-1\n")
    assert TokenFile(path).current() == "secret-1"


@pytest.mark.usefixtures("always_recheck")
def test_a_rotated_file_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("secret-1\n")
    token = TokenFile(path)
    assert token.current() == "secret-1"
    _rotate(path, "secret-2")
    assert token.current() == "secret-2"


def test_reread_says_whether_the_token_changed(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("secret-1\n")
    token = TokenFile(path)
    token.current()
    assert not token.reread()
    _rotate(path, "secret-2")
    assert token.reread()
    assert token.current() == "secret-2"


@pytest.mark.usefixtures("always_recheck")
def test_a_vanished_or_empty_file_keeps_the_last_good_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("secret-1\n")
    token = TokenFile(path)
    token.current()
    path.unlink()
    assert token.current() == "secret-1"
    path.write_text("")
    assert token.current() == "secret-1"


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_no_token_ever_read_is_rejected_as_token_unavailable(
        tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PlatformRejected) as caught:
        TokenFile(path).current()
    assert (caught.value.status, caught.value.code) == (0, "token_unavailable")


def test_the_repr_never_shows_the_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("secret-1\n")
    token = TokenFile(path)
    token.current()
    assert "secret-1" not in repr(token)
