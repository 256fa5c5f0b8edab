"""Nothing outside the root is touched (issue 24, item 5): every write of :class:`PosixStorage`
refuses a symbolic link planted at the name it writes, or at a folder between it and its output
root, naming the link, and leaves the file the link points at as it was (bytes and mtime)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from slimtok.errors import OutputError
from slimtok.protocol import OutputRoot
from slimtok.protocol.storage import POSIX, WriteMode


def _open_write(path: Path, mode: WriteMode) -> None:
    POSIX.open_write(path, mode).close()


#: One write of every kind the storage offers, on ``path`` (a file under the root).
WRITES: dict[str, Callable[[Path], object]] = {
    "create_exclusive": lambda p: POSIX.create_exclusive(p, b"token data"),
    "write_whole": lambda p: POSIX.write_whole(p, b"token data"),
    **{f"open_write {mode}": functools.partial(_open_write, mode=mode)
       for mode in ("create", "truncate", "append", "keep", "update")},
    "copy": lambda p: POSIX.copy(p.parent.parent / "source", p),
    "link": lambda p: POSIX.link(p.parent.parent / "source", p),
    "replace": lambda p: POSIX.replace(p.parent.parent / "source", p),
    "set_mtime": lambda p: POSIX.set_mtime(p, 10**18),
    "now": lambda p: POSIX.now(p),
}


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


@pytest.fixture()
def planted(tmp_path: Path) -> tuple[OutputRoot, Path]:
    """An output root with a real folder ``shards/`` and a file outside it with known bytes and mtime."""
    root = OutputRoot(tmp_path / "out")
    (root.root / "shards").mkdir(parents=True)
    (root.root / "source").write_bytes(b"ours")
    outside = tmp_path / "elsewhere" / "victim.bin"
    outside.parent.mkdir()
    outside.write_bytes(b"another user's bytes")
    os.utime(outside, ns=(10**18 + 7, 10**18 + 7))
    return root, outside


@pytest.mark.parametrize("write", WRITES, ids=list(WRITES))
def test_a_link_at_the_written_name_is_refused_and_its_target_untouched(planted, write):
    root, outside = planted
    link = root.root / "shards" / "victim.bin"
    link.symlink_to(outside)
    before = _snapshot(outside)
    with pytest.raises(OutputError) as refused:
        WRITES[write](link)
    assert str(refused.value).startswith(f"{link}: is a symbolic link where slimtok writes")
    assert "remove the link" in str(refused.value)
    assert _snapshot(outside) == before
    assert link.is_symlink()


@pytest.mark.parametrize("write", WRITES, ids=list(WRITES))
def test_a_linked_folder_below_the_root_is_refused(planted, write):
    """``shards -> elsewhere``: a write of ``shards/victim.bin`` would land on the outside file."""
    root, outside = planted
    folder = root.root / "shards"
    folder.rmdir()
    folder.symlink_to(outside.parent)
    before = _snapshot(outside), sorted(os.listdir(outside.parent))
    with pytest.raises(OutputError) as refused:
        WRITES[write](folder / "victim.bin")
    assert str(refused.value).startswith(f"{folder}: is a symbolic link where slimtok writes")
    assert (_snapshot(outside), sorted(os.listdir(outside.parent))) == before


def test_a_link_deeper_down_is_named_at_the_outermost_link(planted):
    root, outside = planted
    (root.root / "dedup").symlink_to(outside.parent)
    with pytest.raises(OutputError, match=f"^{root.root / 'dedup'}: is a symbolic link"):
        POSIX.write_whole(root.root / "dedup" / "buckets" / "3.drops", b"x")
    assert not (outside.parent / "buckets").exists() or not os.listdir(outside.parent / "buckets")


def test_a_root_that_is_itself_a_link_is_written_as_usual(tmp_path):
    """The user may make the root (or a folder above it) a link: that is never refused."""
    real = tmp_path / "scratch" / "real"
    real.mkdir(parents=True)
    (tmp_path / "linked").symlink_to(tmp_path / "scratch")
    root = OutputRoot(tmp_path / "linked" / "real")
    POSIX.write_whole(root.root / "shards" / "a.bin", b"ids")
    with POSIX.open_write(root.root / "logs" / "w.log", "append") as f:
        f.write(b"line\n")
    assert POSIX.create_exclusive(root.root / "done" / "a.json", b"{}")
    assert (real / "shards" / "a.bin").read_bytes() == b"ids"
    assert (real / "logs" / "w.log").read_bytes() == b"line\n"


def test_good_writes_keep_their_bytes_mode_and_times(tmp_path):
    """The refusals change nothing on the good path: copy keeps copy2's bytes, mode and times."""
    root = OutputRoot(tmp_path / "out")
    source = tmp_path / "tok.json"
    source.write_bytes(b"{\"model\": 1}")
    os.chmod(source, 0o640)
    os.utime(source, ns=(123_000_000_000, 456_000_000_000))
    target = root.root / "tokenizer" / "tokenizer.json"
    POSIX.copy(source, target)
    POSIX.copy(source, target)  # replacing an existing copy
    st = target.stat()
    assert (target.read_bytes(), st.st_mode & 0o777, st.st_mtime_ns) == (source.read_bytes(), 0o640, 456_000_000_000)
    assert sorted(os.listdir(target.parent)) == ["tokenizer.json"]  # no temporary left


#: The calls by which the storage finally touches a file (by name, or by name inside a folder's descriptor).
_FINAL_CALLS = ("open", "replace", "link", "utime")


@pytest.mark.parametrize("write", WRITES, ids=list(WRITES))
def test_a_folder_swapped_for_a_link_between_check_and_write_redirects_nothing(planted, write, monkeypatch):
    """The race the folder checks alone lose: ``shards/`` is a real folder when the write looks at it,
    and is renamed away and replaced by ``shards -> elsewhere`` just before the file itself is
    created, renamed, linked or touched. Nothing may land outside the root, and the swap is refused
    naming ``shards``."""
    root, outside = planted
    folder = root.root / "shards"
    if write in ("open_write update", "set_mtime"):  # these need the file to exist
        (folder / "victim.bin").write_bytes(b"ours")
    before = _snapshot(outside), sorted(os.listdir(outside.parent))
    swapped: list[bool] = []

    def swap_first(real: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            names = [os.path.basename(str(a)) for a in args[:2] if isinstance(a, (str, Path))]
            if not swapped and any("victim" in name for name in names):
                swapped.append(True)
                folder.rename(root.root / "shards.moved")
                folder.symlink_to(outside.parent)
            return real(*args, **kwargs)
        return call

    for name in _FINAL_CALLS:
        monkeypatch.setattr(os, name, swap_first(getattr(os, name)))
    with pytest.raises(OutputError) as refused:
        WRITES[write](folder / "victim.bin")
    monkeypatch.undo()
    assert swapped
    assert str(refused.value).startswith(f"{folder}: is a symbolic link where slimtok writes")
    assert (_snapshot(outside), sorted(os.listdir(outside.parent))) == before
