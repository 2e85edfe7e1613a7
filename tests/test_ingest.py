"""Readers and the canonical table: every format, provenance, ids, and the real mirrored sets."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rnnlib.config import InputSpec, SourceConfig
from rnnlib.prepare.ingest import ingest
from rnnlib.sources.inputs import fingerprint_inputs


def run(tmp_path: Path, *inputs: InputSpec, **source) -> tuple[dict, pd.DataFrame]:
    out = tmp_path / "out"
    manifest = ingest(SourceConfig(inputs=list(inputs), **source), out_dir=out)
    return manifest, pq.read_table(out).to_pandas()


def test_csv_with_header_and_concatenated_columns(tmp_path):
    (tmp_path / "news.csv").write_text(
        'title,body,topic\n"Stocks rise","Markets, up",Business\nGoal!,"Late win",Sports\n'
    )
    spec = InputSpec(path=str(tmp_path / "news.csv"), text_columns=["title", "body"], label_column="topic")
    manifest, df = run(tmp_path, spec)
    assert df["text"].tolist() == ["Stocks rise Markets, up", "Goal! Late win"]
    assert df["label"].tolist() == ["Business", "Sports"]
    assert df["source"].tolist() == ["news.csv"] * 2 and df["row"].tolist() == [1, 2]
    assert df["id"].tolist() == ["news.csv:1", "news.csv:2"]
    assert manifest.rows == manifest.kept == 2


def test_headerless_csv_by_position_as_ag_news_is_laid_out(tmp_path):
    (tmp_path / "train.csv").write_text('"3","Wall St.","Shares fell"\n"2","Cup","Final"\n')
    spec = InputSpec(path=str(tmp_path / "train.csv"), header=False, text_columns=[1, 2], label_column=0)
    _, df = run(tmp_path, spec, label_names={"3": "Business"})
    assert df["text"].tolist() == ["Wall St. Shares fell", "Cup Final"]
    assert df["label"].tolist() == ["Business", "2"]


def test_gzipped_tsv_with_id_column_keeps_ids(tmp_path):
    with gzip.open(tmp_path / "t.tsv.gz", "wt") as fh:
        fh.write("doc\ttext\tlabel\nA7\tgood film\tpos\nB9\tbad, film\tneg\n")
    manifest, df = run(tmp_path, InputSpec(path=str(tmp_path / "t.tsv.gz"), id_column="doc"))
    assert df["id"].tolist() == ["A7", "B9"]
    assert df["text"].tolist() == ["good film", "bad, film"]


def test_jsonl_and_zipped_jsonl(tmp_path):
    lines = [json.dumps({"text": f"doc {i}", "label": i % 2}) for i in range(5)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with zipfile.ZipFile(tmp_path / "d.jsonl.zip", "w") as zf:
        zf.writestr("d.jsonl", "\n".join(lines))
    for name in ("d.jsonl", "d.jsonl.zip"):
        manifest, df = run(tmp_path / name.replace(".", "_"), InputSpec(path=str(tmp_path / name)))
        assert df["text"].tolist() == [f"doc {i}" for i in range(5)]
        assert df["label"].tolist() == ["0", "1", "0", "1", "0"]
        assert manifest.kept == 5


def test_jsonl_blocks_parsed_by_arrow_or_line_by_line_agree(tmp_path, monkeypatch):
    """Blocks of clean lines go to Arrow's parser, a block with a bad line is read line by line:
    rows, row numbers, ids and values come out the same either way (integer labels beside nulls
    stay "1", never "1.0")."""
    from rnnlib.sources import readers

    records = [{"text": f"doc {i}", "label": None if i % 10 == 7 else i % 3, "uid": i} for i in range(40)]
    lines = [json.dumps(r) for r in records]
    lines[25] = '{"text": "broken'  # its block goes line by line
    lines[33] = json.dumps({"text": "a\udc80b", "label": 1, "uid": 33})  # a lone surrogate escape
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    spec = InputSpec(path=str(tmp_path / "d.jsonl"), id_column="uid")
    monkeypatch.setattr(readers, "JSON_BLOCK_BYTES", 300)  # blocks of a few lines each
    manifest, df = run(tmp_path / "blocks", spec, partition_rows=7)
    monkeypatch.setattr(readers, "_parse_json_block", lambda *args: None)  # every line by itself
    _, by_line = run(tmp_path / "lines", spec, partition_rows=7)
    pd.testing.assert_frame_equal(df, by_line)
    assert df["row"].tolist() == list(range(1, 41))
    assert manifest.rejected == {"malformed JSON": 1, "undecodable bytes (not UTF-8)": 1, "missing label": 4}
    kept = df[df["reject"].isna()]
    assert kept["id"].tolist() == [str(i) for i in range(40) if i % 10 != 7 and i not in (25, 33)]
    assert kept["label"].tolist() == [str(int(i) % 3) for i in kept["id"]]


def test_parquet_input(tmp_path):
    pq.write_table(pa.table({"review": ["fine", "awful"], "y": ["p", "n"]}), tmp_path / "r.parquet")
    spec = InputSpec(path=str(tmp_path / "r.parquet"), text_columns=["review"], label_column="y")
    _, df = run(tmp_path, spec)
    assert df[["text", "label"]].values.tolist() == [["fine", "p"], ["awful", "n"]]


def test_plain_text_is_unlabelled_one_document_per_line(tmp_path):
    (tmp_path / "dump.txt").write_text("first doc\nsecond doc\n")
    manifest, df = run(tmp_path, InputSpec(path=str(tmp_path / "dump.txt"), label_column=None))
    assert df["text"].tolist() == ["first doc", "second doc"]
    assert df["label"].isna().all() and manifest.labelled is False


def _folder_layout(root: Path) -> None:
    for label, docs in {"pos": ["great", "superb"], "neg": ["dull"]}.items():
        (root / label).mkdir(parents=True)
        for i, doc in enumerate(docs):
            (root / label / f"{i}_1.txt").write_text(doc)


def test_folder_per_class_plain_and_zipped(tmp_path):
    _folder_layout(tmp_path / "train")
    _, df = run(tmp_path, InputSpec(path=str(tmp_path / "train"), split="train"))
    assert sorted(zip(df["label"], df["text"])) == [("neg", "dull"), ("pos", "great"), ("pos", "superb")]
    assert set(df["id"]) == {"train/neg/0_1.txt", "train/pos/0_1.txt", "train/pos/1_1.txt"}
    assert (df["split"] == "train").all()
    with zipfile.ZipFile(tmp_path / "train.zip", "w") as zf:
        for f in (tmp_path / "train").rglob("*.txt"):
            zf.write(f, f.relative_to(tmp_path / "train"))
    _, zdf = run(tmp_path / "z", InputSpec(path=str(tmp_path / "train.zip"), format="folder_per_class"))
    assert sorted(zdf["text"]) == sorted(df["text"])


def test_file_per_class_label_is_file_name(tmp_path):
    (tmp_path / "names").mkdir()
    (tmp_path / "names" / "Irish.txt").write_text("Ó Briain\nMurphy\n")
    (tmp_path / "names" / "Greek.txt").write_text("Pappas\n")
    _, df = run(tmp_path, InputSpec(path=str(tmp_path / "names")))
    assert sorted(zip(df["label"], df["text"])) == [("Greek", "Pappas"), ("Irish", "Murphy"), ("Irish", "Ó Briain")]
    assert set(df["source"]) == {"names/Irish.txt", "names/Greek.txt"}


def test_partitions_are_bounded(tmp_path):
    (tmp_path / "d.txt").write_text("".join(f"doc {i}\n" for i in range(25)))
    manifest = ingest(
        SourceConfig(inputs=[InputSpec(path=str(tmp_path / "d.txt"), label_column=None)], partition_rows=10),
        out_dir=tmp_path / "out",
    )
    sizes = [pq.read_metadata(tmp_path / "out" / p).num_rows for p in manifest.parts]
    assert sizes == [10, 10, 5]


def test_partitions_are_bounded_by_text_bytes_too(tmp_path):
    """Long documents close a partition before its row bound: at most partition_bytes of text
    each (a single longer document alone), no row lost or moved."""
    lengths = [5, 40, 200, 10, 10, 10, 90, 1, 60, 60, 30]
    (tmp_path / "d.txt").write_text("".join("x" * n + "\n" for n in lengths))
    manifest = ingest(
        SourceConfig(
            inputs=[InputSpec(path=str(tmp_path / "d.txt"), label_column=None)], partition_rows=4, partition_bytes=100
        ),
        out_dir=tmp_path / "out",
    )
    parts = [pq.read_table(tmp_path / "out" / p)["text"].to_pylist() for p in manifest.parts]
    assert [[len(t) for t in part] for part in parts] == [[5, 40], [200], [10, 10, 10], [90, 1], [60], [60, 30]]


def test_folder_layout_partitions_are_bounded_and_even(tmp_path):
    for i in range(25):
        (tmp_path / "docs" / ("pos" if i % 2 else "neg")).mkdir(parents=True, exist_ok=True)
        (tmp_path / "docs" / ("pos" if i % 2 else "neg") / f"{i}.txt").write_text(f"doc {i}")
    (tmp_path / "docs" / "neg" / ".hidden.txt").write_text("not a document")
    manifest = ingest(
        SourceConfig(inputs=[InputSpec(path=str(tmp_path / "docs"))], partition_rows=10), out_dir=tmp_path / "out"
    )
    sizes = [pq.read_metadata(tmp_path / "out" / p).num_rows for p in manifest.parts]
    assert sizes == [8, 8, 9]  # three units of equal work, not 10, 10, 5


def test_mirrored_surnames(datasets, tmp_path):
    manifest = ingest(SourceConfig(dataset="names", mirror=str(datasets)), out_dir=tmp_path / "out")
    assert manifest.rows == manifest.kept == 20074
    assert manifest.files["names/Russian.txt"].rows == 9408
    df = pq.read_table(tmp_path / "out").to_pandas()
    assert df["label"].nunique() == 18


def test_mirrored_tweets_keep_predefined_splits_and_label_names(datasets, tmp_path):
    manifest = ingest(SourceConfig(dataset="semeval2016_tweets", mirror=str(datasets)), out_dir=tmp_path / "o")
    df = pq.read_table(tmp_path / "o").to_pandas()
    assert manifest.rows == 6000 + 1999 + 20632
    assert df.groupby("split").size().to_dict() == {"train": 6000, "val": 1999, "test": 20632}
    assert df[df["split"] == "train"]["label"].value_counts().to_dict() == {
        "positive": 3094,
        "neutral": 2043,
        "negative": 863,
    }


@pytest.mark.slow
def test_mirrored_imdb_folders_and_unlabelled_dump(datasets, tmp_path):
    manifest = ingest(SourceConfig(dataset="imdb", mirror=str(datasets)), out_dir=tmp_path / "imdb")
    assert manifest.rows == manifest.kept == 50000
    df = pq.read_table(tmp_path / "imdb", columns=["split", "label"]).to_pandas()
    assert df.groupby(["split", "label"]).size().tolist() == [12500] * 4
    dump = InputSpec(path=str(datasets / "imdb" / "unsup.jsonl.gz"), label_column=None)
    manifest = ingest(SourceConfig(inputs=[dump]), out_dir=tmp_path / "unsup")
    assert manifest.rows == manifest.kept == 50000 and not manifest.labelled


def test_fingerprint_follows_content_not_location(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.csv").write_text("text,label\nhi,1\n")
    fp = lambda d: fingerprint_inputs(SourceConfig(inputs=[InputSpec(path=str(tmp_path / d / "x.csv"))]))  # noqa: E731
    assert fp("a") == fp("b")
    (tmp_path / "b" / "x.csv").write_text("text,label\nhi,2\n")
    assert fp("a") != fp("b")


def test_local_cluster_workers_keep_glibc_malloc_defaults(client):
    """Dask's MALLOC_TRIM_THRESHOLD_ made every large buffer a fresh mapping (the prepare
    pipeline up to 22% slower); a run's own LocalCluster leaves it unset, and keeps the
    one-thread settings."""
    import os

    assert set(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()) == {None}
    assert set(client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()) == {"1"}


@pytest.mark.parametrize("suffix,opener", [(".bz2", "bz2"), (".xz", "lzma"), (".gz", "gzip")])
def test_compressed_inputs_are_read_transparently(tmp_path, suffix, opener):
    import importlib

    module = importlib.import_module(opener)
    with module.open(tmp_path / f"d.csv{suffix}", "wt") as fh:
        fh.write("text,label\nfirst doc,a\nsecond doc,b\n")
    with module.open(tmp_path / f"d.jsonl{suffix}", "wt") as fh:
        fh.write('{"text": "third", "label": "a"}\n')
    manifest, df = run(
        tmp_path, InputSpec(path=str(tmp_path / f"d.csv{suffix}")), InputSpec(path=str(tmp_path / f"d.jsonl{suffix}"))
    )
    assert manifest.kept == 3 and sorted(df["text"]) == ["first doc", "second doc", "third"]


def test_an_input_in_another_encoding_is_read_in_it_and_its_bad_bytes_rejected(tmp_path):
    """Windows-1252 text (as the MR sentences): read as cp1252, every character survives; a byte
    cp1252 leaves undefined rejects its row, naming the encoding."""
    lines = ["caf\xe9 cr\xe8me \u201cquoted\u201d", "na\xefve", "plain"]
    data = b"\n".join(line.encode("cp1252") for line in lines) + b"\nbad \x81 byte\n"
    (tmp_path / "pos.txt").write_bytes(data)
    as_utf8, _ = run(tmp_path, InputSpec(path=str(tmp_path / "pos.txt"), label_column=None))
    assert as_utf8.rejected == {"undecodable bytes (not UTF-8)": 3}
    manifest, df = run(tmp_path, InputSpec(path=str(tmp_path / "pos.txt"), label_column=None, encoding="cp1252"))
    assert df["text"].tolist()[:3] == lines and manifest.rejected == {"undecodable bytes (not cp1252)": 1}
    assert manifest.encodings == {"pos.txt": "cp1252"}


def test_encoding_auto_detects_each_file_and_the_manifest_records_it(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "win.csv").write_bytes(
        ("text,label\n" + "".join(f"Cr\xe8me br\xfbl\xe9e n\xb0{i}, d\xe9j\xe0 vu,a\n" for i in range(50)))
        .encode("cp1252")
        .replace(b", d", b" d")
    )
    (tmp_path / "data" / "wide.csv").write_text("text,label\nS\u00f8ren \u0160koda,b\n", encoding="utf-16")
    (tmp_path / "data" / "plain.csv").write_text("text,label\nna\u00efve \u2013 \u20ac,c\n", encoding="utf-8")
    manifest, df = run(tmp_path, InputSpec(path=str(tmp_path / "data" / "*.csv"), encoding="auto"))
    assert manifest.kept == 52 and not manifest.rejected
    assert manifest.encodings["plain.csv"] == "utf-8" and manifest.encodings["wide.csv"].startswith("utf-16")
    assert manifest.encodings["win.csv"].startswith("cp125")
    # a short single-byte text fits several code pages: which one is a guess, that it is read is not
    assert set(df["text"]) >= {"S\u00f8ren \u0160koda", "na\u00efve \u2013 \u20ac"}


def test_an_unknown_encoding_is_refused_by_name():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown encoding 'klingon'"):
        InputSpec(path="x.csv", encoding="klingon")
    assert InputSpec(path="x.csv", encoding="Windows-1252").encoding == "cp1252"


def test_only_regular_files_are_read_and_paths_without_a_scheme_are_literal(tmp_path):
    """A FIFO given as an input is refused by name (reading it would block), one inside a class
    folder is passed over; `::` in a local file name is part of the name, not a URL chain."""
    import os

    from rnnlib.errors import InputError

    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(InputError, match="pipe.csv.*not a regular file"):
        run(tmp_path, InputSpec(path=str(tmp_path / "pipe.csv")))
    (tmp_path / "classes").mkdir()
    (tmp_path / "classes" / "a.txt").write_text("one\ntwo\n")
    os.mkfifo(tmp_path / "classes" / "b.txt")
    manifest, _ = run(tmp_path, InputSpec(path=str(tmp_path / "classes"), format="file_per_class"))
    assert manifest.kept == 2
    (tmp_path / "x.csv").write_text("text,label\nwrong,file\n")
    (tmp_path / "x.csv::y.csv").write_text("text,label\nright,file\n")
    _, df = run(tmp_path, InputSpec(path=str(tmp_path / "x.csv::y.csv"), glob=False))
    assert df["text"].tolist() == ["right"]


def test_a_linked_class_folder_is_fingerprinted_as_it_is_read(tmp_path):
    """A class folder that is a link is read: its files must be in the input's fingerprint too,
    or an edit to them would be served from a stale cache. A link cycle ends."""
    (tmp_path / "elsewhere" / "neg").mkdir(parents=True)
    (tmp_path / "elsewhere" / "neg" / "1.txt").write_text("dull")
    (tmp_path / "data" / "pos").mkdir(parents=True)
    (tmp_path / "data" / "pos" / "1.txt").write_text("fine")
    (tmp_path / "data" / "neg").symlink_to(tmp_path / "elsewhere" / "neg")
    (tmp_path / "elsewhere" / "neg" / "loop").symlink_to(tmp_path / "data")
    spec = InputSpec(path=str(tmp_path / "data"), format="folder_per_class")
    manifest, _ = run(tmp_path, spec)
    assert manifest.kept == 2
    before = fingerprint_inputs(SourceConfig(inputs=[spec]))
    (tmp_path / "elsewhere" / "neg" / "1.txt").write_text("dull, and long")
    assert fingerprint_inputs(SourceConfig(inputs=[spec])) != before


def test_one_document_files_are_read_in_frames_bounded_by_bytes(tmp_path):
    """200 documents of 3 MiB made one 600 MiB frame; frames now close at about partition_bytes."""
    from fsspec.implementations.local import LocalFileSystem

    from rnnlib.sources.readers import plan_units, read_unit

    for label in ("pos", "neg"):
        (tmp_path / "docs" / label).mkdir(parents=True)
        for i in range(20):
            (tmp_path / "docs" / label / f"{i}.txt").write_text(f"{label} " * 25_000)  # 100 KB
    spec = InputSpec(path=str(tmp_path / "docs"), format="folder_per_class")
    (unit,) = plan_units(LocalFileSystem(), str(tmp_path / "docs"), spec, chunk_rows=5000)
    frames = list(read_unit(unit, 5000, chunk_bytes=300_000))
    assert sum(map(len, frames)) == 40 and len(frames) == 14
    assert max(frame["text"].str.len().sum() for frame in frames) <= 300_000
    manifest, _ = run(tmp_path, spec, partition_bytes=300_000)
    assert manifest.kept == 40 and len(manifest.parts) >= 13


def test_a_glob_of_class_files_reads_each_as_its_class_and_a_file_is_no_class_folder(tmp_path):
    """`format: file_per_class` with a glob (`*.txt`) reads each matched file as one class's
    lines, as the folder holding them would; folder_per_class given a file says what it takes."""
    from rnnlib.config import SourceConfig
    from rnnlib.errors import InputError

    (tmp_path / "pos.txt").write_text("good\nfine\n")
    (tmp_path / "neg.txt").write_text("bad\n")
    (tmp_path / "notes.md").write_text("not a class\n")
    manifest = ingest(
        SourceConfig(inputs=[{"path": str(tmp_path / "*.txt"), "format": "file_per_class"}]), out_dir=tmp_path / "out"
    )
    rows = pq.read_table(tmp_path / "out").to_pandas()
    assert manifest.kept == 3 and sorted(zip(rows["text"], rows["label"])) == [
        ("bad", "neg"),
        ("fine", "pos"),
        ("good", "pos"),
    ]
    with pytest.raises(InputError, match="pos.txt: format folder_per_class takes a folder"):
        ingest(
            SourceConfig(inputs=[{"path": str(tmp_path / "pos.txt"), "format": "folder_per_class"}]),
            out_dir=tmp_path / "out-2",
        )
