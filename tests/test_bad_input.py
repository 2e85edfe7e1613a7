"""Bad input: a clear error naming file (and row) and reason, or a counted rejection."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from rnnlib.config import (
    InputSpec,
    PrepareConfig,
    SourceConfig,
)
from rnnlib.errors import InputError
from rnnlib.prepare.ingest import ingest
from rnnlib.prepare.pipeline import prepare


def ingest_one(tmp_path, name: str, **spec):
    return ingest(SourceConfig(inputs=[InputSpec(path=str(tmp_path / name), **spec)]), out_dir=tmp_path / "out")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.csv: file not found"):
        ingest_one(tmp_path, "nope.csv")


@pytest.mark.parametrize("name,content", [("e.csv", ""), ("e.txt", ""), ("e.jsonl", ""), ("h.csv", "text,label\n")])
def test_empty_file(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=rf"{name}: file is empty"):
        ingest_one(tmp_path, name, **({"label_column": None} if name.endswith(".txt") else {}))


@pytest.mark.parametrize(
    "name,content",
    [
        ("u.csv", "body,label\nhi,1\n"),
        ("u.jsonl", '{"body": "hi", "label": 1}\n'),
    ],
)
def test_unknown_column(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=rf"{name}: unknown (column|field) 'text'"):
        ingest_one(tmp_path, name)


def test_unknown_parquet_column_and_out_of_range_position(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(InputError, match=r"p\.parquet: unknown column 'text'"):
        ingest_one(tmp_path, "p.parquet")
    (tmp_path / "n.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=r"n\.csv: column 5 out of range"):
        ingest_one(tmp_path, "n.csv", header=False, text_columns=[5], label_column=0)


def test_corrupt_parquet(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(InputError, match=r"bad\.parquet: corrupt Parquet file"):
        ingest_one(tmp_path, "bad.parquet")


def test_csv_row_with_extra_fields_is_rejected_and_row_numbers_stay_true(tmp_path):
    (tmp_path / "m.csv").write_text('text,label\nok,1\nbroken,1,extra,fields\n"two\nlines",0\nlast,1\n')
    manifest = ingest_one(tmp_path, "m.csv")
    assert manifest.rows == 4 and manifest.kept == 3
    assert manifest.rejected == {"malformed row (more fields than the header)": 1}
    df = pq.read_table(tmp_path / "out").to_pandas().set_index("row")
    assert df.loc[2, "reject"].startswith("malformed row") and pd.isna(df.loc[2, "text"])
    assert df.loc[3, "text"] == "two\nlines" and df.loc[4, "text"] == "last"


def test_unreadable_csv_names_the_file(tmp_path):
    (tmp_path / "m.csv").write_text('text,label\nok,1\n"never closed,1\n')
    with pytest.raises(InputError, match=r"m\.csv, row 2: malformed CSV: unexpected end of data"):
        ingest_one(tmp_path, "m.csv")


def test_bad_rows_are_rejected_with_file_row_and_reason(tmp_path):
    data = b"text,label\ngood,1\n,1\n   ,0\nbad \xff\xfe bytes,0\nno label,\nfine,0\n"
    (tmp_path / "rows.csv").write_bytes(data)
    manifest = ingest_one(tmp_path, "rows.csv")
    assert manifest.rows == 6 and manifest.kept == 2
    assert manifest.rejected == {
        "empty text": 2,
        "missing label": 1,
        "undecodable bytes (not UTF-8)": 1,
    }
    df = pq.read_table(tmp_path / "out").to_pandas()
    rejected = df[df["reject"].notna()]
    assert rejected[["source", "row", "reject"]].values.tolist() == [
        ["rows.csv", 2, "empty text"],
        ["rows.csv", 3, "empty text"],
        ["rows.csv", 4, "undecodable bytes (not UTF-8)"],
        ["rows.csv", 5, "missing label"],
    ]
    assert rejected["text"].isna().all()


def test_malformed_and_null_json_lines_are_rejected(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok", "label": "a"}\n{"text": null, "label": "a"}\n{not json\n[1, 2]\n')
    manifest = ingest_one(tmp_path, "d.jsonl")
    assert manifest.rows == 4 and manifest.kept == 1
    assert manifest.rejected == {"malformed JSON": 2, "null text": 1}
    df = pq.read_table(tmp_path / "out").to_pandas()
    assert df.loc[df["row"] == 3, "reject"].item() == "malformed JSON"


def test_every_json_fault_is_a_per_line_reject(tmp_path):
    """Deep nesting (RecursionError in Python's parser) and a number too long to convert
    (ValueError) are rejects of their own line, not a failure of the file."""
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "d.jsonl").write_text(
        '{"text": "ok", "label": "a"}\n'
        + '{"text": "x", "label": "a", "deep": '
        + deep
        + "}\n"
        + '{"text": "y", "label": '
        + "9" * 5000
        + "}\n"
        + '{"text": "also ok", "label": "b"}\n'
    )
    manifest = ingest_one(tmp_path, "d.jsonl")
    assert manifest.rows == 4 and manifest.kept == 2
    assert manifest.rejected == {"JSON nested too deeply": 1, "malformed JSON": 1}


def test_undecodable_line_in_plain_text(tmp_path):
    (tmp_path / "d.txt").write_bytes(b"fine\n\xc3\x28 broken\nalso fine\n")
    manifest = ingest_one(tmp_path, "d.txt", label_column=None)
    assert manifest.kept == 2 and manifest.files["d.txt"].rejected == {"undecodable bytes (not UTF-8)": 1}


def test_mixed_labelled_and_unlabelled_inputs_are_refused(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\nx,1\n")
    (tmp_path / "b.txt").write_text("y\n")
    source = SourceConfig(
        inputs=[InputSpec(path=str(tmp_path / "a.csv")), InputSpec(path=str(tmp_path / "b.txt"), label_column=None)]
    )
    with pytest.raises(InputError, match="some inputs have labels and others not"):
        ingest(source, out_dir=tmp_path / "out")


def test_unknown_dataset():
    with pytest.raises(InputError, match="unknown dataset 'nope'"):
        ingest(SourceConfig(dataset="nope"), out_dir="/tmp/never-written")


def test_label_unseen_at_fit_time_is_rejected_not_lost(tmp_path, client):
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"word{i} common,a\n" for i in range(20)))
    (tmp_path / "test.csv").write_text("text,label\ncommon,a\nrare text,zzz\n")
    source = SourceConfig(
        inputs=[
            InputSpec(path=str(tmp_path / "train.csv"), split="train"),
            InputSpec(path=str(tmp_path / "test.csv"), split="test"),
        ]
    )
    data = prepare(PrepareConfig(source=source, preprocess={"level": "word"}, work_dir=str(tmp_path)), client)
    assert data.rows == 22 and data.kept == 21
    assert data.rejected == {"label unseen at fit time": 1}
    rejects = pq.read_table(f"{data.tensorize.path}/rejects").to_pandas()
    assert rejects[["source", "row", "reason"]].values.tolist() == [["test.csv", 2, "label unseen at fit time"]]


def test_keep_labels_counts_the_others_as_not_selected(datasets, tmp_path):
    manifest = ingest(
        SourceConfig(dataset="names", mirror=str(datasets), keep_labels=["German", "Italian"]), out_dir=tmp_path / "out"
    )
    assert manifest.rows == 20074 and manifest.kept == 724 + 709
    assert manifest.rejected == {"label not selected (source.keep_labels)": 20074 - 1433}


def test_every_reject_keeps_its_reason_through_the_whole_pipeline(tmp_path, client):
    """Rows rejected at ingest stay rejected, with the same reason, in every later stage, and
    end up in the rejects table with file and row."""
    (tmp_path / "train.csv").write_text(
        "text,label\n" + "".join(f"good words {i},{'ab'[i % 2]}\n" for i in range(30)) + ",a\n...,b\nno label,\n"
    )
    data = prepare(
        PrepareConfig(
            source=SourceConfig(inputs=[InputSpec(path=str(tmp_path / "train.csv"))]),
            preprocess={"level": "word", "punctuation": "remove"},
            work_dir=str(tmp_path),
        ),
        client,
    )
    pre = data.preprocess.manifest
    assert pre.rejected == {"empty text": 1, "missing label": 1, "no tokens after preprocessing": 1}
    assert data.rows == 33 and data.kept == 30
    assert data.rejected == pre.rejected
    rejects = pq.read_table(f"{data.tensorize.path}/rejects").to_pandas().sort_values("row")
    assert rejects[["source", "row", "reason"]].values.tolist() == [
        ["train.csv", 31, "empty text"],
        ["train.csv", 32, "no tokens after preprocessing"],
        ["train.csv", 33, "missing label"],
    ]


def test_more_labels_than_max_labels_is_refused(tmp_path):
    """A wrong label column (an id) would make a class per row and an n x n confusion matrix."""
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"text {i},id-{i}\n" for i in range(30)))
    config = PrepareConfig.model_validate(
        {
            "source": {"inputs": [{"path": str(tmp_path / "d.csv")}]},
            "vocab": {"max_labels": 10},
            "work_dir": str(tmp_path / "w"),
        }
    )
    with pytest.raises(InputError, match=r"distinct labels in the 'train' split, more than vocab.max_labels \(10\)"):
        prepare(config)


def test_a_zip_of_several_files_is_refused_not_read_in_part(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "d.csv.zip", "w") as zf:
        zf.writestr("a.csv", "text,label\nx,1\n")
        zf.writestr("b.csv", "text,label\ny,2\n")
    with pytest.raises(
        InputError, match=r"d.csv.zip: a .zip input must hold exactly one file, this one holds 2 \(a.csv, b.csv\)"
    ):
        ingest(SourceConfig(inputs=[InputSpec(path=str(tmp_path / "d.csv.zip"))]), out_dir=tmp_path / "out")


def test_bounded_lines_skip_an_over_long_line_without_holding_it():
    """Every line comes back exactly, in order, with each line over the limit as one None,
    whether it ends inside a block, spans several blocks or ends the stream unterminated."""
    import io
    import random

    from rnnlib.sources.readers import bounded_lines

    rng = random.Random(0)
    for _ in range(300):
        lines = [b"x" * rng.choice([0, 1, 5, 9, 10, 11, 30, 100]) for _ in range(rng.randint(1, 12))]
        stream = b"\n".join(lines) + rng.choice([b"", b"\n"])
        size, limit = rng.randint(1, 40), 10

        class Reader(io.BytesIO):  # records the most bytes ever handed out at once
            def read(self, n=-1):
                assert n == size
                return super().read(n)

        got = []
        for block in bounded_lines(Reader(stream), size, limit):
            if block is None:
                got.append(None)
            else:
                assert len(block) <= size + limit + 1  # held: one read plus a line under the limit
                got += block.removesuffix(b"\n").split(b"\n")
        lines = stream.split(b"\n")
        if lines[-1] == b"":
            lines.pop()  # after the last line end: no line
        assert got == [line if len(line) <= limit else None for line in lines], (stream, size)


def test_csv_record_ends_match_pandas_in_chunks_of_any_size():
    """Record ends found chunk by chunk are where the records end, quoting read as pandas reads it:
    a quote opens a field only at its start, "" inside a quoted field is a literal quote, a stray
    quote mid-field is text, and a newline in a quoted field is not a record end, whichever
    chunk boundary splits a run of quotes."""
    import io
    import random

    from rnnlib.sources.readers import CsvRecordEnds

    rng = random.Random(0)
    fields = [
        "a",
        "",
        '"q"',
        '"with\nnewline"',
        '"x""y"',
        '""',
        '""""',
        'mid"quote',
        '"a""\n"""',
        '"ends"late',
        '"a,b"',
        'x""y',
    ]
    for _ in range(300):
        records = [",".join(rng.choice(fields) for _ in range(2)).encode() + b"\n" for _ in range(rng.randint(1, 8))]
        stream = b"".join(records)
        expected = (np.cumsum([len(r) for r in records]) - 1).tolist()
        scanner, got, offset = CsvRecordEnds(","), [], 0
        while offset < len(stream):
            size = rng.randint(1, 12)
            got += (scanner(stream[offset : offset + size]) + offset).tolist()
            offset += size
        assert got == expected, stream
        parsed = pd.read_csv(
            io.BytesIO(stream), header=None, dtype=object, keep_default_na=False, skip_blank_lines=False
        )
        assert len(parsed) == len(records), stream


@pytest.mark.parametrize("name", ["d.csv", "d.csv.gz", "wide.csv"])
def test_an_over_long_csv_record_is_rejected_and_the_rest_read(tmp_path, name):
    """A CSV field longer than max_record_bytes (quoted, spanning lines) is one rejected row; the
    rows around it are read and numbered as they stand, on the pandas path and on the row-by-row
    path a wider-than-header row sends a block to."""
    import gzip

    long = "word\n" * 300  # 1,500 bytes over 300 lines: over the 1,000-byte limit
    rows = ["text,label", "ok,a", f'"{long}",a', "fine,b"] + (["too,many,fields"] if name == "wide.csv" else [])
    content = ("\n".join(rows) + f'\n"{long}",b\nlast,b\n').encode()
    (tmp_path / name).write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    manifest = ingest_one(tmp_path, name, max_record_bytes=1000)
    reason = "record longer than 1000 bytes (source's max_record_bytes)"
    wide = {"malformed row (more fields than the header)": 1} if name == "wide.csv" else {}
    assert manifest.rejected == {reason: 2, **wide}
    df = pq.read_table(tmp_path / "out").to_pandas().sort_values("row")
    assert df.loc[df["reject"].isna(), "text"].tolist() == ["ok", "fine", "last"]
    assert df.loc[df["reject"] == reason, "row"].tolist() == ([2, 5] if name == "wide.csv" else [2, 4])


def test_a_csv_bomb_is_read_in_bounded_memory(tmp_path):
    """A 200 MB field compressed into a small .csv.gz (a row of 300 M characters took 724 MiB):
    the field is rejected as it streams past, memory bounded by the block and record sizes."""
    import gzip
    import subprocess
    import sys

    with gzip.open(tmp_path / "bomb.csv.gz", "wb", compresslevel=9) as fh:
        fh.write(b'text,label\nfirst,a\n"')
        for _ in range(200):
            fh.write(b"a" * (1 << 20))
        fh.write(b'",b\nlast,b\n')
    assert (tmp_path / "bomb.csv.gz").stat().st_size < 1 << 20
    script = (
        "import json, resource; from rnnlib.config import SourceConfig; "
        "from rnnlib.prepare.ingest import ingest; import pandas, pyarrow.parquet; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        f"m = ingest(SourceConfig(inputs=[{{'path': {str(tmp_path / 'bomb.csv.gz')!r}}}]), "
        f"out_dir={str(tmp_path / 'out')!r}); "
        "grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10; "
        "print(json.dumps([m.kept, m.rejected, grown]))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    kept, rejected, grown_mib = json.loads(run.stdout)
    assert kept == 2 and rejected == {"record longer than 16777216 bytes (source's max_record_bytes)": 1}
    assert grown_mib < 160, grown_mib  # two 16 MiB blocks and their copies, not the 200 MB field


def test_a_quoted_csv_field_that_never_closes_fails_the_file_by_name(tmp_path):
    """Its field would swallow the rest of the file: an error naming file and row, never a loss."""
    (tmp_path / "d.csv").write_text('text,label\nok,a\n"open,b\n' + "more,a\n" * 400)
    with pytest.raises(InputError, match=r"d.csv.*row 2.*malformed CSV"):
        ingest_one(tmp_path, "d.csv", max_record_bytes=1000)


@pytest.mark.parametrize("name,layout", [("d.jsonl", "jsonl"), ("d.txt", "text"), ("docs", "folder")])
def test_an_over_long_record_is_rejected_and_the_rest_read(tmp_path, name, layout):
    long = "word " * 300  # 1,500 bytes: over the 1,000-byte limit
    if layout == "jsonl":
        lines = ['{"text": "ok", "label": "a"}', f'{{"text": "{long}", "label": "a"}}', '{"text": "b", "label": "b"}']
        (tmp_path / name).write_text("\n".join(lines) + "\n" + '{"text": "' + long)  # the last unterminated
        spec, rows = {}, 4
    elif layout == "text":
        (tmp_path / name).write_text(f"ok\n{long}\nfine\n{long}")
        spec, rows = {"label_column": None}, 4
    else:
        for label, docs in {"pos": ["good", long], "neg": ["bad", long[:999]]}.items():
            (tmp_path / name / label).mkdir(parents=True)
            for i, doc in enumerate(docs):
                (tmp_path / name / label / f"{i}.txt").write_text(doc)
        spec, rows = {"format": "folder_per_class"}, 4
    manifest = ingest_one(tmp_path, name, max_record_bytes=1000, **spec)
    reason = "record longer than 1000 bytes (source's max_record_bytes)"
    too_long = 2 if layout != "folder" else 1
    assert manifest.rows == rows and manifest.rejected == {reason: too_long}
    df = pq.read_table(tmp_path / "out").to_pandas()
    assert df.loc[df["reject"].isna(), "text"].str.len().max() < 1000
    if layout != "folder":
        assert df["row"].tolist() == [1, 2, 3, 4] and df.loc[df["reject"] == reason, "row"].tolist() == [2, 4]


def test_a_csv_field_up_to_max_record_bytes_survives_a_bad_row(tmp_path):
    """The row-by-row CSV reader (after a bad row) takes fields up to max_record_bytes, beyond
    the standard library's 128 KiB default."""
    big = "w " * 100_000
    (tmp_path / "d.csv").write_text(f'text,label\n"{big}",a\nx,b,extra\ny,b\n')
    manifest = ingest_one(tmp_path, "d.csv")
    assert manifest.rows == 3 and manifest.rejected == {"malformed row (more fields than the header)": 1}


def test_a_json_line_nested_too_deep_for_arrow_is_rejected_not_a_crash(tmp_path):
    """A 40 KB line nested 20,000 deep, in a file Arrow would otherwise parse whole, crashed the
    process inside Arrow's parser; run in a child process, so a crash fails only this test."""
    import subprocess
    import sys

    deep = "[" * 20_000 + "]" * 20_000
    (tmp_path / "rows.jsonl").write_text(
        '{"text": "one", "label": "a"}\n{"text": "two", "label": "b", "deep": ' + deep + "}\n"
        '{"text": "three", "label": "a"}\n'
    )
    script = (
        "import json, sys; from rnnlib.config import SourceConfig; from rnnlib.prepare.ingest import ingest; "
        f"m = ingest(SourceConfig(inputs=[{{'path': {str(tmp_path / 'rows.jsonl')!r}}}]), "
        f"out_dir={str(tmp_path / 'out')!r}); print(json.dumps(m.rejected), m.kept)"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.split() == ['{"JSON', "nested", "too", 'deeply":', "1}", "2"]


@pytest.mark.parametrize(
    "name,content",
    [
        ("cut.txt.bz2", __import__("bz2").compress(b"Smith\n" * 1000)[:40] + b"\x00" * 64),  # bz2: a bare OSError
        ("bad.txt.zip", b"PK\x03\x04" + b"not a zip archive at all" * 4),  # zipfile.BadZipFile
    ],
)
def test_a_corrupt_bz2_or_zip_is_one_line_naming_the_file_never_retried(tmp_path, name, content):
    from rnnlib.config import SourceConfig

    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=f"{name}.*corrupt or truncated compressed file"):
        ingest(SourceConfig(inputs=[{"path": str(tmp_path / name), "label_column": None}]), out_dir=tmp_path / "out")


def test_the_row_by_row_csv_path_numbers_rows_as_pandas_does(tmp_path):
    """An over-wide row after the first chunk sends the file to the row-by-row reader, which
    resumes where pandas stopped: whitespace-only lines (skipped by pandas) must be skipped there
    too, or one row is read twice and another lost. A quoted field keeps its blank lines, and a
    file may start with a blank line."""
    from rnnlib.config import SourceConfig

    lines = ["", "id,text,label"]
    for i in range(30):
        lines.append(f"r{i},row {i},a")
        if i % 7 == 3:
            lines.append("   ")  # whitespace only: not a row
    lines.insert(40, "r-wide,too,many,fields")  # in the third chunk of 10
    lines.append('r-quoted,"two lines\n\n  \nwith blanks",b')
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    manifest = ingest(
        SourceConfig(inputs=[{"path": str(tmp_path / "rows.csv"), "id_column": "id"}], partition_rows=10),
        out_dir=tmp_path / "out",
    )
    table = pq.read_table(tmp_path / "out").to_pandas()
    kept = table[table["reject"].isna()]
    assert sorted(kept["id"]) == sorted([f"r{i}" for i in range(30)] + ["r-quoted"])
    assert len(table) == manifest.rows == 32 and manifest.rejected == {"malformed row (more fields than the header)": 1}
    assert kept.set_index("id").loc["r-quoted", "text"] == "two lines\n\n  \nwith blanks"
