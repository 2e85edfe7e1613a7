"""The file watcher announces a file once, and only once its size has stopped changing."""

from __future__ import annotations

from rnnlib_deployments.watcher import Watcher


def test_a_file_is_announced_once_its_size_is_stable(tmp_path):
    drop = tmp_path / "in"
    drop.mkdir()
    watcher = Watcher(drop, "*", tmp_path / "state.json")
    (drop / "a.txt").write_text("half")
    assert watcher.poll() == []  # first sight: its size is not known to be stable yet
    (drop / "a.txt").write_text("half and more")
    assert watcher.poll() == []  # still growing
    (drop / ".b.txt").write_text("being written under a dot-name")
    assert watcher.poll() == [drop / "a.txt"]  # unchanged since the last poll: complete
    watcher.mark(drop / "a.txt")
    assert watcher.poll() == []  # announced already
    assert Watcher(drop, "*", tmp_path / "state.json").poll() == []  # ... also after a restart
