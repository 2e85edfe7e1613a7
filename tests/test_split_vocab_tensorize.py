"""Split stratification and determinism, vocabulary leakage, shard round-trip and accounting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rnnlib.config import SplitConfig, TensorizeConfig, VocabConfig
from rnnlib.errors import InputError
from rnnlib.prepare.preprocess import TOKENS_SCHEMA
from rnnlib.prepare.split import allocate, largest_remainder, split
from rnnlib.prepare.tensorize import tensorize
from rnnlib.prepare.vocab import LABELS_FILE, VOCAB_FILE, LabelEncoder, Vocabulary, build_vocabulary


def write_partitions(root, frame: pd.DataFrame, parts: int) -> None:
    root.mkdir(parents=True)
    bounds = np.linspace(0, len(frame), parts + 1).astype(int)
    for i in range(parts):
        chunk = frame.iloc[bounds[i] : bounds[i + 1]]
        table = pa.Table.from_pandas(chunk, schema=TOKENS_SCHEMA, preserve_index=False)
        pq.write_table(table, root / f"part-{i:05d}.parquet")


def write_assigned(tmp_path, frame: pd.DataFrame, parts: int) -> None:
    """Tokens partitions in `pre` and their split assignment in `s`, as the split stage writes."""
    write_partitions(tmp_path / "pre", frame, parts)
    (tmp_path / "s").mkdir()
    for f in sorted((tmp_path / "pre").glob("part-*.parquet")):
        pq.write_table(pq.read_table(f, columns=["id", "split"]), tmp_path / "s" / f.name)


def corpus(n_per_class: dict[str, int], split_col=None, reject_every: int = 0) -> pd.DataFrame:
    rows = []
    for label, n in n_per_class.items():
        for i in range(n):
            rows.append(
                {
                    "id": f"{label}-{i}",
                    "tokens": [label.lower(), f"w{i % 7}"],
                    "label": label,
                    "split": split_col,
                    "source": "s",
                    "row": len(rows) + 1,
                    "reject": "empty text" if reject_every and i % reject_every == 0 else None,
                }
            )
    frame = pd.DataFrame(rows)
    frame.loc[frame["reject"].notna(), ["tokens", "label"]] = None
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_largest_remainder_and_allocation_are_exact():
    assert largest_remainder(73, np.array([0.7, 0.15, 0.15])).tolist() == [51, 11, 11]
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 40, size=rng.integers(1, 8))
        fractions = rng.dirichlet(np.ones(3))
        quotas = allocate(sizes, fractions)
        assert (quotas >= 0).all()
        assert quotas.sum(axis=1).tolist() == sizes.tolist()
        assert quotas.sum(axis=0).tolist() == largest_remainder(int(sizes.sum()), fractions).tolist()


def test_split_is_stratified_exact_and_deterministic(tmp_path, client):
    write_partitions(tmp_path / "pre", corpus({"A": 1000, "B": 140, "C": 73}), parts=4)
    cfg = SplitConfig(seed=7)
    manifest = split(tmp_path / "pre", out_dir=tmp_path / "s1", cfg=cfg, labelled=True, client=client)
    counts = {s: v.class_counts for s, v in manifest.splits.items()}
    assert counts["train"] == {"A": 700, "B": 98, "C": 51}
    assert counts["val"] == {"A": 150, "B": 21, "C": 11}
    assert counts["test"] == {"A": 150, "B": 21, "C": 11}
    split(tmp_path / "pre", out_dir=tmp_path / "s2", cfg=cfg, labelled=True, client=client)
    first = pq.read_table(tmp_path / "s1").to_pandas().set_index("id")["split"]
    again = pq.read_table(tmp_path / "s2").to_pandas().set_index("id")["split"]
    assert first.equals(again)
    split(tmp_path / "pre", out_dir=tmp_path / "s3", cfg=SplitConfig(seed=8), labelled=True, client=client)
    other = pq.read_table(tmp_path / "s3").to_pandas().set_index("id")["split"]
    assert not first.equals(other.loc[first.index])


def test_predefined_test_kept_and_val_carved_from_train(tmp_path, client):
    frame = pd.concat(
        [
            corpus({"A": 100, "B": 100}, split_col="train"),
            corpus({"A": 50, "B": 50}, split_col="test").assign(id=lambda d: "t" + d["id"]),
        ]
    )
    write_partitions(tmp_path / "pre", frame, parts=3)
    manifest = split(tmp_path / "pre", out_dir=tmp_path / "s", cfg=SplitConfig(), labelled=True, client=client)
    rows = {s: v.rows for s, v in manifest.splits.items()}
    assert rows == {"test": 100, "train": 164, "val": 36}  # 15/85 of 200 carved from train
    df = pq.read_table(tmp_path / "s").to_pandas()
    assert (df[df["id"].str.startswith("t")]["split"] == "test").all()
    assert df["id"].tolist() == pq.read_table(tmp_path / "pre")["id"].to_pylist()  # row-aligned


def test_a_sample_shrinks_train_and_val_alike_stratified_and_leaves_the_test_whole(tmp_path, client):
    frame = pd.concat(
        [
            corpus({"A": 600, "B": 200}, split_col="train"),
            corpus({"A": 50, "B": 50}, split_col="test").assign(id=lambda d: "t" + d["id"]),
        ]
    )
    write_partitions(tmp_path / "pre", frame, parts=3)
    manifest = split(
        tmp_path / "pre", out_dir=tmp_path / "s", cfg=SplitConfig(sample=200), labelled=True, client=client
    )
    counts = {s: v.class_counts for s, v in manifest.splits.items()}
    assert counts["train"] == {"A": 124, "B": 41} and counts["val"] == {"A": 26, "B": 9}  # 3:1; 70:15
    assert counts["test"] == {"A": 50, "B": 50}
    assert counts["unused"] == {"A": 450, "B": 150} and manifest.kept == 900  # every row accounted
    again = split(tmp_path / "pre", out_dir=tmp_path / "s2", cfg=SplitConfig(sample=200), labelled=True, client=client)
    assert again == manifest.model_copy(update={"parts": again.parts})
    assert pq.read_table(tmp_path / "s")["split"].equals(pq.read_table(tmp_path / "s2")["split"])


def test_rejected_rows_get_no_split_but_stay(tmp_path, client):
    write_partitions(tmp_path / "pre", corpus({"A": 30}, reject_every=10), parts=2)
    manifest = split(tmp_path / "pre", out_dir=tmp_path / "s", cfg=SplitConfig(), labelled=True, client=client)
    df = pq.read_table(tmp_path / "s").to_pandas()
    rejected = pq.read_table(tmp_path / "pre")["reject"].is_valid().to_numpy(zero_copy_only=False)
    assert len(df) == 30 and manifest.kept == 27 and df.loc[rejected, "split"].isna().all()


def test_vocab_fits_on_train_only(tmp_path, client):
    frame = corpus({"A": 50, "B": 50})
    frame["split"] = "train"
    leak = pd.DataFrame(
        [
            {
                "id": f"v{i}",
                "tokens": ["valonly", "a"],
                "label": "A",
                "split": s,
                "source": "s",
                "row": 0,
                "reject": None,
            }
            for i, s in enumerate(["val", "test"] * 5)
        ]
    )
    write_assigned(tmp_path, pd.concat([frame, leak], ignore_index=True), parts=3)
    manifest = build_vocabulary(
        tmp_path / "pre",
        tmp_path / "s",
        out_dir=tmp_path / "v",
        cfg=VocabConfig(),
        counted_split="train",
        client=client,
    )
    vocab = Vocabulary.load(tmp_path / "v" / VOCAB_FILE)
    assert "valonly" not in vocab.tokens
    assert vocab.tokens[:2] == ("<PAD>", "<UNK>")
    assert set(vocab.tokens[2:]) == {"a", "b"} | {f"w{i}" for i in range(7)}
    assert manifest.labels == ["A", "B"]
    # most frequent first, ties broken alphabetically
    assert vocab.tokens[2:4] == ("a", "b")


def test_vocab_min_freq_and_max_size(tmp_path, client):
    frame = corpus({"A": 20})
    frame["split"] = "train"
    write_assigned(tmp_path, frame, parts=2)
    build_vocabulary(
        tmp_path / "pre",
        tmp_path / "s",
        out_dir=tmp_path / "v1",
        cfg=VocabConfig(min_freq=3),
        counted_split="train",
        client=client,
    )
    assert set(Vocabulary.load(tmp_path / "v1" / VOCAB_FILE).tokens[2:]) == {"a", "w0", "w1", "w2", "w3", "w4", "w5"}
    build_vocabulary(
        tmp_path / "pre",
        tmp_path / "s",
        out_dir=tmp_path / "v2",
        cfg=VocabConfig(max_size=4),
        counted_split="train",
        client=client,
    )
    assert Vocabulary.load(tmp_path / "v2" / VOCAB_FILE).tokens == ("<PAD>", "<UNK>", "a", "w0")


def test_damaged_vocab_is_refused(tmp_path):
    Vocabulary(("<PAD>", "<UNK>", "x")).save(tmp_path / "v.json")
    text = (tmp_path / "v.json").read_text().replace('"x"', '"y"')
    (tmp_path / "v.json").write_text(text)
    with pytest.raises(InputError, match="vocabulary is damaged"):
        Vocabulary.load(tmp_path / "v.json")


def test_shards_round_trip_and_manifests_add_up(tmp_path, client):
    frame = corpus({"A": 300, "B": 120}, reject_every=50)
    frame.loc[frame.index[:40], "tokens"] = frame.loc[frame.index[:40], "tokens"].apply(
        lambda t: None if t is None else t * 3
    )
    write_partitions(tmp_path / "pre", frame, parts=3)
    split(tmp_path / "pre", out_dir=tmp_path / "s", cfg=SplitConfig(), labelled=True, client=client)
    build_vocabulary(
        tmp_path / "pre",
        tmp_path / "s",
        out_dir=tmp_path / "v",
        cfg=VocabConfig(),
        counted_split="train",
        client=client,
    )
    cfg = TensorizeConfig(max_length=4, shard_rows=50)
    manifest = tensorize(
        tmp_path / "pre", tmp_path / "s", tmp_path / "v", out_dir=tmp_path / "t", cfg=cfg, labelled=True, client=client
    )
    assert manifest.rows == 420 and manifest.kept + sum(manifest.rejected.values()) == 420
    assert manifest.rejected == {"empty text": 9}
    vocab = Vocabulary.load(tmp_path / "v" / VOCAB_FILE)
    labels = LabelEncoder.load(tmp_path / "v" / LABELS_FILE)
    source = pq.read_table(tmp_path / "pre").to_pandas().set_index("id")
    total = 0
    for name, n in manifest.splits.items():
        split_manifest = pd.read_json(tmp_path / "t" / name / "_manifest.json", typ="series")
        shards = list((tmp_path / "t" / name).glob("shard-*.parquet"))
        assert len(shards) == len(split_manifest["shards"])
        assert all(pq.read_metadata(s).num_rows <= 50 for s in shards)
        df = pq.read_table(tmp_path / "t" / name).to_pandas()
        assert len(df) == n == split_manifest["rows"] and split_manifest["vocab_hash"] == vocab.hash
        assert sum(split_manifest["class_counts"].values()) == n
        for row in df.itertuples():
            original = source.loc[row.id]
            expected = [vocab.tokens.index(t) if t in vocab.tokens else 1 for t in original["tokens"][:4]]
            assert list(row.ids) == expected and row.length == len(expected)
            assert labels.labels[row.label] == original["label"]
        total += n
        if name == "train":
            assert (
                split_manifest["truncated"]
                == (df["id"].isin(frame.loc[frame.index[:40], "id"]) & df["length"].eq(4)).sum()
            )
    assert total == manifest.kept


def test_split_never_reads_the_tokens(tmp_path, monkeypatch):
    """The split needs ids, labels and predefined splits only: it never reads (let alone
    gathers) the tokens."""
    from rnnlib.prepare import split as split_module

    write_partitions(tmp_path / "pre", corpus({"A": 40, "B": 20}), parts=3)
    read = []
    real = split_module.pq.read_table

    def spy(path, columns=None, **kwargs):
        read.append(columns)
        return real(path, columns=columns, **kwargs)

    monkeypatch.setattr(split_module.pq, "read_table", spy)
    manifest = split(tmp_path / "pre", out_dir=tmp_path / "s", cfg=SplitConfig(), labelled=True)
    assert manifest.kept == 60 and len(read) == 6  # two passes over three partitions
    assert all(columns is not None and "tokens" not in columns and "text" not in columns for columns in read)


def test_finished_files_and_folders_reach_the_disk_before_their_rename(tmp_path, monkeypatch):
    """A power loss must not leave an empty file under a final name: every file of a finished
    output is fsynced before the rename, and the directory after it."""
    import os

    from rnnlib.common import storage

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        storage.os,
        "fsync",
        lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))[1],
    )
    monkeypatch.setattr(storage.os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b))[1])
    with storage.building(tmp_path / "stage" / "key") as scratch:
        storage.write_json(scratch / "a.json", {"x": 1})
        events.clear()
    synced_before = [
        path for kind, path in events[: events.index(("replace", str(tmp_path / "stage" / "key")))] if kind == "fsync"
    ]
    assert any(p.endswith("a.json") for p in synced_before) and any(p.endswith(".tmp") for p in synced_before)
    assert events[-1] == ("fsync", str(tmp_path / "stage"))  # the rename itself made durable
