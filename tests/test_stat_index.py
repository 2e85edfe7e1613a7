"""Input fingerprints read a file again only when it may have changed."""

from __future__ import annotations

import os
import time

import pytest

from rnnlib.common import stat_index
from rnnlib.config import InputSpec, SourceConfig
from rnnlib.sources.inputs import fingerprint_inputs


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose bytes the index reads."""
    seen: list[str] = []
    real = stat_index.file_digest

    def spy(path: str, *args: object) -> str:
        seen.append(os.path.basename(path))
        return real(path, *args)

    monkeypatch.setattr(stat_index, "file_digest", spy)
    return seen


def _age(path: os.PathLike[str], seconds: float = 60) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_unchanged_input_is_not_read_again_and_a_same_size_rewrite_is(tmp_path, reads):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.csv", "b.csv"):
        (data / name).write_text("text,label\nhello,x\n")
        _age(data / name)
    source = SourceConfig(inputs=[InputSpec(path=str(data), format="csv", label_column="label")])
    index = tmp_path / "work" / stat_index.STAT_INDEX

    first = fingerprint_inputs(source, index)
    assert sorted(reads) == ["a.csv", "b.csv"]
    reads.clear()
    assert fingerprint_inputs(source, index) == first
    assert reads == []  # nothing read: the stat index vouches for both files

    mtime = (data / "a.csv").stat().st_mtime_ns
    (data / "a.csv").write_text("text,label\nhellp,x\n")  # same size ...
    os.utime(data / "a.csv", ns=(mtime, mtime))  # ... and the same modification time
    changed = fingerprint_inputs(source, index)
    assert reads == ["a.csv"]
    assert changed != first


def test_a_file_hashed_in_the_second_it_was_written_is_read_again(tmp_path, reads):
    """Timestamps are coarse on some filesystems: a rewrite in the same second as the hashing
    could leave the stat unchanged, so such an entry is not trusted until the file has aged."""
    path = tmp_path / "x.csv"
    path.write_text("text,label\nhello,x\n")
    source = SourceConfig(inputs=[InputSpec(path=str(path), label_column="label")])
    index = tmp_path / stat_index.STAT_INDEX
    fingerprint_inputs(source, index)
    fingerprint_inputs(source, index)
    assert reads == ["x.csv", "x.csv"]
    _age(path)
    fingerprint_inputs(source, index)  # stat changed: read, now trusted
    fingerprint_inputs(source, index)
    assert reads == ["x.csv", "x.csv", "x.csv"]


def test_index_is_a_cache_only(tmp_path, reads):
    """The fingerprint is the same with or without an index, and a damaged index is re-built."""
    path = tmp_path / "x.csv"
    path.write_text("text,label\nhello,x\n")
    _age(path)
    source = SourceConfig(inputs=[InputSpec(path=str(path), label_column="label")])
    index = tmp_path / stat_index.STAT_INDEX
    assert fingerprint_inputs(source, index) == fingerprint_inputs(source)
    for f in index.iterdir():
        f.write_text("{not json")
    reads.clear()
    fingerprint_inputs(source, index)
    assert reads == ["x.csv"]
