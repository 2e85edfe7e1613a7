"""The dataset registry: local mirror first, else a checked download cached for next time
(served here by a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from rnnlib.common.fingerprint import file_digest
from rnnlib.config import InputSpec, SourceConfig
from rnnlib.errors import InputError
from rnnlib.prepare.ingest import ingest
from rnnlib.sources.datasets import REGISTRY, Dataset, Download, materialize


def _names_zip(*extra: tuple[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("data/names/Greek.txt", "Pappas\nAntonopoulos\n")
        zf.writestr("data/names/Irish.txt", "Murphy\n")
        zf.writestr("data/other/ignored.txt", "x\n")
        for name, text in extra:
            zf.writestr(name, text)
    return buffer.getvalue()


def _register(monkeypatch, url: str, checksum: str | None, file_sha256=None) -> None:
    dataset = Dataset(
        name="tiny_names",
        description="test",
        downloads=(Download(url=url, checksum=checksum, extract={"data/names/": "names/"}),),
        inputs=(InputSpec(path="names", format="file_per_class"),),
        file_sha256=file_sha256 or {},
    )
    monkeypatch.setitem(REGISTRY, dataset.name, dataset)


def test_download_checked_extracted_and_cached(http_root, tmp_path, monkeypatch):
    root, base = http_root
    archive = _names_zip()
    (root / "data.zip").write_bytes(archive)
    greek, irish = (hashlib.sha256(t).hexdigest() for t in (b"Pappas\nAntonopoulos\n", b"Murphy\n"))
    _register(
        monkeypatch,
        f"{base}/data.zip",
        f"md5:{hashlib.md5(archive).hexdigest()}",
        {"names/Greek.txt": greek, "names/Irish.txt": irish},
    )
    source = SourceConfig(dataset="tiny_names", cache_dir=str(tmp_path / "cache"), mirror=None)
    resolved = materialize(source)
    assert resolved.dataset is None and Path(resolved.inputs[0].path).parent == tmp_path / "cache" / "tiny_names"
    assert sorted(p.name for p in Path(resolved.inputs[0].path).iterdir()) == ["Greek.txt", "Irish.txt"]
    assert ingest(source, out_dir=tmp_path / "out").kept == 3
    (root / "data.zip").unlink()  # the cached copy is used from now on
    assert materialize(source) == resolved


def test_checksum_mismatch_is_refused_and_not_cached(http_root, tmp_path, monkeypatch):
    root, base = http_root
    (root / "data.zip").write_bytes(_names_zip())
    _register(monkeypatch, f"{base}/data.zip", "md5:" + "0" * 32)
    source = SourceConfig(dataset="tiny_names", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(InputError, match="md5 checksum mismatch"):
        materialize(source)
    assert not (tmp_path / "cache" / "tiny_names").exists()


def test_extracted_file_checksums_are_verified(http_root, tmp_path, monkeypatch):
    root, base = http_root
    (root / "data.zip").write_bytes(_names_zip())
    _register(monkeypatch, f"{base}/data.zip", None, {"names/Greek.txt": "0" * 64})
    with pytest.raises(InputError, match=r"names/Greek\.txt: sha256 checksum mismatch"):
        materialize(SourceConfig(dataset="tiny_names", cache_dir=str(tmp_path / "cache")))


@pytest.mark.parametrize(
    "member", ["data/names//tmp/evil.txt", "data/names/../../evil.txt", "data/names/sub/../../../evil.txt"]
)
def test_an_archive_member_outside_the_dataset_folder_refuses_the_archive(http_root, tmp_path, monkeypatch, member):
    root, base = http_root
    (root / "data.zip").write_bytes(_names_zip((member, "gotcha\n")))
    _register(monkeypatch, f"{base}/data.zip", None)
    with pytest.raises(InputError, match="would be written outside the dataset folder"):
        materialize(SourceConfig(dataset="tiny_names", cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "cache" / "tiny_names").exists() and not Path("/tmp/evil.txt").exists()
    assert not list(tmp_path.rglob("evil.txt"))


def test_with_file_checksums_only_checked_files_are_written(http_root, tmp_path, monkeypatch):
    """An archive without a checksum of its own (the surnames' is unversioned) has each of its
    files checked before it is written, and files not in the list are not taken."""
    root, base = http_root
    (root / "data.zip").write_bytes(_names_zip(("data/names/Unlisted.txt", "Smith\n")))
    _register(
        monkeypatch,
        f"{base}/data.zip",
        None,
        {"names/Greek.txt": hashlib.sha256(b"Pappas\nAntonopoulos\n").hexdigest()},
    )
    resolved = materialize(SourceConfig(dataset="tiny_names", cache_dir=str(tmp_path / "cache")))
    assert [p.name for p in Path(resolved.inputs[0].path).iterdir()] == ["Greek.txt"]


def test_mirror_is_preferred(datasets, tmp_path):
    resolved = materialize(
        SourceConfig(dataset="semeval2016_tweets", mirror=str(datasets), cache_dir=str(tmp_path / "never"))
    )
    assert [Path(i.path).name for i in resolved.inputs] == ["train.tsv", "dev.tsv", "test.tsv"]
    assert resolved.label_names == {"0": "neutral", "1": "positive", "2": "negative"}
    assert not (tmp_path / "never").exists()


def test_registry_checksums_match_the_mirror(datasets):
    """The checksums the registry ships are those of the real files."""
    for rel, sha in REGISTRY["names"].file_sha256.items():
        assert datasets.joinpath(rel).is_file()
        assert file_digest(datasets / rel, "sha256") == sha
    for item in REGISTRY["semeval2016_tweets"].downloads:
        assert "sha256:" + file_digest(datasets / item.target, "sha256") == item.checksum


def test_two_first_runs_at_once_download_once(http_root, tmp_path, monkeypatch):
    """The second waits for the first's download and uses it: it never replaces the folder the
    first is reading (each finished download would otherwise be swapped in under the other)."""
    from concurrent.futures import ThreadPoolExecutor

    root, base = http_root
    archive = _names_zip()
    (root / "data.zip").write_bytes(archive)
    _register(monkeypatch, f"{base}/data.zip", f"md5:{hashlib.md5(archive).hexdigest()}")
    source = SourceConfig(dataset="tiny_names", cache_dir=str(tmp_path / "cache"), mirror=None)
    folder = tmp_path / "cache" / "tiny_names"
    inodes = []

    def first_run(_: int) -> None:
        materialize(source)
        inodes.append(folder.stat().st_ino)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(first_run, range(4)))
    assert len(set(inodes)) == 1  # one folder, never replaced
