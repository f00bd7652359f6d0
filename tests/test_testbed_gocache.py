"""The testbed's cache of Go builds (testbed/gocache.py), with stand-in builds instead of Go."""

from __future__ import annotations

import fcntl
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed import build, jaeger
from testbed.gocache import BuildError, ensure_entry, go_build, source_key


def _complete(entry: Path) -> bool:
    return (entry / "bin" / "prog").is_file()


def _writes_prog(calls: list[Path]) -> Callable[[Path], None]:
    def build(scratch: Path) -> None:
        calls.append(scratch)
        (scratch / "bin").mkdir(parents=True)
        (scratch / "bin" / "prog").write_text("built")
    return build


def test_the_key_is_the_documented_hash_of_salt_paths_and_contents(tmp_path: Path) -> None:
    # A cached build is found by its key alone: if this formula changed, every machine
    # would rebuild kube-apiserver (~4 min) and Jaeger (~15 min).
    (tmp_path / "go.mod").write_text("module x\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.go").write_text("package sub\n")
    sources = [tmp_path / "go.mod", tmp_path / "sub" / "a.go"]
    expected = hashlib.sha256(b"salt\0go.mod\0module x\n\0sub/a.go\0package sub\n\0")
    assert source_key(tmp_path, sources, salt=b"salt\0") == expected.hexdigest()[:16]


def test_the_testbed_keys_follow_the_documented_hash() -> None:
    mod = build.MODULE_DIR
    digest = hashlib.sha256(build._ldflags(build.kubernetes_version()).encode() + b"\0")
    for path in [mod / "go.mod", mod / "go.sum", *sorted(mod.rglob("*.go"))]:
        digest.update(str(path.relative_to(mod)).encode() + b"\0" + path.read_bytes() + b"\0")
    assert build.source_key() == digest.hexdigest()[:16]
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update(name.encode() + b"\0" + (jaeger.MODULE_DIR / name).read_bytes() + b"\0")
    assert jaeger.source_key() == digest.hexdigest()[:16]


def test_a_complete_entry_is_used_without_building(tmp_path: Path) -> None:
    entry = tmp_path / "k1"
    (entry / "bin").mkdir(parents=True)
    (entry / "bin" / "prog").write_text("old")
    calls: list[Path] = []
    assert ensure_entry(entry, complete=_complete, build=_writes_prog(calls)) == entry
    assert calls == []


def test_a_missing_entry_is_built_once_in_scratch_then_renamed(tmp_path: Path) -> None:
    entry = tmp_path / "k1"
    calls: list[Path] = []
    for _ in range(2):
        ensure_entry(entry, complete=_complete, build=_writes_prog(calls))
    assert len(calls) == 1 and calls[0] != entry and calls[0].parent == tmp_path
    assert (entry / "bin" / "prog").read_text() == "built"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1", "k1.lock"]


def test_an_incomplete_leftover_is_replaced(tmp_path: Path) -> None:
    entry = tmp_path / "k1"
    (entry / "bin").mkdir(parents=True)
    calls: list[Path] = []
    ensure_entry(entry, complete=_complete, build=_writes_prog(calls))
    assert len(calls) == 1 and _complete(entry)


def test_a_failed_build_leaves_neither_entry_nor_scratch(tmp_path: Path) -> None:
    def fails(scratch: Path) -> None:
        (scratch / "half").write_text("")
        raise BuildError("no")

    with pytest.raises(BuildError):
        ensure_entry(tmp_path / "k1", complete=_complete, build=fails)
    assert [p.name for p in tmp_path.iterdir()] == ["k1.lock"]


def test_a_caller_waits_for_the_builder_and_uses_its_result(tmp_path: Path) -> None:
    entry = tmp_path / "k1"
    told = threading.Event()
    calls: list[Path] = []
    result: list[Path] = []
    with open(tmp_path / "k1.lock", "w") as held:  # another builder holds the lock
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: result.append(ensure_entry(
            entry, complete=_complete, build=_writes_prog(calls),
            waiting=lambda lock: told.set())))
        waiter.start()
        assert told.wait(30), "the waiting caller is told who holds the lock"
        _writes_prog([])(entry)
    waiter.join(30)
    assert result == [entry] and calls == []


def test_a_failed_go_build_carries_gos_output(tmp_path: Path) -> None:
    fake_go = tmp_path / "go"
    fake_go.write_text("#!/bin/sh\necho \"compile error in $*\" >&2\nexit 2\n")
    fake_go.chmod(0o755)
    with pytest.raises(BuildError, match=r"exit code 2:\ncompile error in build -trimpath ."):
        go_build(str(fake_go), ["."], module_dir=tmp_path)
