"""The file watcher announces a file once it is complete, once per version of it, never a link."""

from __future__ import annotations

import os
import time

from rnnlib_deployments.watcher import Arrival, Watcher, batches


def _paths(arrivals: list[Arrival]) -> list:
    return [a.path for a in arrivals]


def test_a_file_is_announced_once_its_size_is_stable(tmp_path):
    drop = tmp_path / "in"
    drop.mkdir()
    watcher = Watcher(drop, "*", tmp_path / "state.json")
    (drop / "a.txt").write_text("half")
    assert watcher.poll() == []  # first sight: its size is not known to be stable yet
    (drop / "a.txt").write_text("half and more")
    assert watcher.poll() == []  # still growing
    (drop / ".b.txt").write_text("being written under a dot-name")
    ready = watcher.poll()
    assert _paths(ready) == [drop / "a.txt"]  # unchanged since the last poll: complete
    watcher.mark(ready)
    assert watcher.poll() == []  # announced already
    restarted = Watcher(drop, "*", tmp_path / "state.json")
    restarted.poll()
    assert restarted.poll() == []  # ... also after a restart


def test_a_file_replaced_under_its_name_is_announced_again(tmp_path):
    drop = tmp_path / "in"
    drop.mkdir()
    watcher = Watcher(drop, "*.txt", tmp_path / "state.json")
    (drop / "a.txt").write_text("first\n")
    watcher.poll()
    first = watcher.poll()
    watcher.mark(first)
    (drop / "a.txt").write_text("second version\n")
    watcher.poll()
    again = watcher.poll()
    assert _paths(again) == [drop / "a.txt"] and again[0] != first[0]


def test_unconfirmed_files_are_offered_again_and_names_are_literal(tmp_path):
    drop = tmp_path / "in"
    drop.mkdir()
    watcher = Watcher(drop, "*", tmp_path / "state.json")
    (drop / "report[2024].txt").write_text("x\n")  # glob characters in a name: just a name
    watcher.poll()
    assert _paths(watcher.poll()) == [drop / "report[2024].txt"]
    assert _paths(watcher.poll()) == [drop / "report[2024].txt"]  # not marked: offered again


def test_symbolic_links_are_refused_and_not_followed(tmp_path):
    drop, outside = tmp_path / "in", tmp_path / "outside"
    drop.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("not for scoring\n")
    os.symlink(outside / "secret.txt", drop / "link.txt")
    os.symlink(outside, drop / "linked-folder")
    (drop / "real.txt").write_text("fine\n")
    watcher = Watcher(drop, "*", tmp_path / "state.json")
    watcher.poll()
    assert _paths(watcher.poll()) == [drop / "real.txt"]


def test_arrivals_are_announced_in_bounded_batches_in_order(tmp_path):
    arrivals = [Arrival(tmp_path / f"{i}.txt", i, i) for i in range(23)]
    announced = batches(arrivals, 10)
    assert [len(b) for b in announced] == [10, 10, 3]
    assert [a for b in announced for a in b] == arrivals


def test_a_fifo_is_refused_not_announced(tmp_path):
    """A named pipe's size never changes: announced, its reader would block forever."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    os.mkfifo(inbox / "pipe.txt")
    (inbox / "real.txt").write_text("Smith\n")
    watcher = Watcher(inbox, "*.txt", tmp_path / "state.json")
    watcher.poll()
    assert [a.path.name for a in watcher.poll()] == ["real.txt"]
    assert watcher.refused == {(inbox / "pipe.txt").resolve()}


def test_a_file_written_within_the_quiet_period_waits(tmp_path):
    """A writer that pauses for longer than a poll: its file is stable between two polls, yet
    was written a moment ago, so it is not announced until it has been quiet long enough."""
    drop = tmp_path / "in"
    drop.mkdir()
    watcher = Watcher(drop, "*", tmp_path / "state.json", quiet_seconds=3600)
    (drop / "a.txt").write_text("first half")
    watcher.poll()
    assert watcher.poll() == []  # unchanged, but written within the last hour
    old = time.time() - 7200
    os.utime(drop / "a.txt", (old, old))
    watcher.poll()
    assert _paths(watcher.poll()) == [drop / "a.txt"]


def test_an_event_the_server_never_stores_is_not_taken_as_delivered(tmp_path, http_root):
    """`announce()` reads its event back before it reports delivery: where the API is not a
    Prefect server (a plain web server here, as a wrong URL or a proxy would be) the event is
    lost, so it reports False and the files are offered again on the next poll."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from rnnlib_deployments.watcher import announce

    root, url = http_root
    (root / "a.txt").write_text("x\n")
    st = (root / "a.txt").stat()
    with temporary_settings({PREFECT_API_URL: f"{url}/api"}):
        assert announce([Arrival(root / "a.txt", st.st_size, st.st_mtime_ns)], confirm_seconds=2) is False
