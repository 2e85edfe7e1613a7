"""Registry of well-known public datasets: where they live publicly, how to check them, and how
their files are laid out. A local mirror (same layout) makes the pipeline work offline; otherwise
the files are downloaded once into a cache directory and checked against known checksums."""

from __future__ import annotations

import hashlib
import posixpath
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from rnnlib.common.fingerprint import file_digest
from rnnlib.common.locks import file_lock
from rnnlib.common.storage import building
from rnnlib.config import InputSpec, SourceConfig
from rnnlib.errors import InputError


@dataclass(frozen=True)
class Download:
    """One public file. `extract` maps archive member prefixes to folders under the dataset root;
    without it the file is saved as `target`."""

    url: str
    checksum: str | None  # "md5:<hex>" or "sha256:<hex>" of the downloaded file
    target: str = ""
    extract: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    inputs: tuple[InputSpec, ...]  # paths relative to the dataset root (mirror or cache)
    downloads: tuple[Download, ...]
    label_names: dict[str, str] = field(default_factory=dict)
    file_sha256: dict[str, str] = field(default_factory=dict)  # extracted files to check


_SEMEVAL_RAW = (
    "https://raw.githubusercontent.com/UBC-NLP/DL2022/4c9c8389cf4f893f30898889670b697359addfe7/"
    "2023-ADLNLP/text_classification_attention/data/sentiment-twitter-2016-task4/"
)
_AG_NEWS_RAW = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/"

REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            name="names",
            description="Surnames by language of origin, 18 classes (PyTorch char-RNN tutorial)",
            inputs=(InputSpec(path="names", format="file_per_class"),),
            downloads=(
                Download(
                    url="https://download.pytorch.org/tutorial/data.zip",
                    checksum=None,  # the archive is unversioned; its 18 files are checked instead
                    extract={"data/names/": "names/"},
                ),
            ),
            file_sha256={
                "names/Arabic.txt": "6f424a8dbe51cbbbabab7a57d38b617210125e4e3991f3c657cb79b8f104bafc",
                "names/Chinese.txt": "49263ef55a8cb1740e841d65cad8214b2f9b5b869bc534c811746422496fa91e",
                "names/Czech.txt": "145bbbd6d0816578f03388e92c264d39ef1c60df920b081d371fa5c5cc055a8e",
                "names/Dutch.txt": "924f32b635170eae561f84538632138fc07d4c8bbd70ba3fb980de1ecc4d2af3",
                "names/English.txt": "9cca037066d3d5989e24bc01801416162de506b5e28e15b7c092a47905d29bf2",
                "names/French.txt": "81e65b36c60ed5b89a17422f6edcadbb89546f38ad69e960e64e7ba682012a95",
                "names/German.txt": "7449cd590b97a733e18d613a4155decd77ec35dc5f8aadd7a82204dce4f051db",
                "names/Greek.txt": "3555b5186de7f401e6d991b088e9e644ca3099116477818c25ab5793801389e6",
                "names/Irish.txt": "cf8c7013256252a88d2503127b87282a11f21b2ff6db1bded68834c19a1ec058",
                "names/Italian.txt": "f88414c27d0606a11a678b4859277828c2565d6cc4d9ee932deef6e94f3b35e4",
                "names/Japanese.txt": "e0e717e114fec3e7eade4d9dabe0067c475f43147e36a22b47902ee76ad9e67f",
                "names/Korean.txt": "cd54221ccb362a6cba4c78828838cf3268a0e59744767a37cf6ec4b74036b136",
                "names/Polish.txt": "45bab898af2f60ed3a728bbf6980e28821011a7caa53227553b5785903a40826",
                "names/Portuguese.txt": "50a8735f41f4f73757c8ce5b16cb0275cd86b2b214bcbc8c9805f508cb131c53",
                "names/Russian.txt": "43b3e64ce351f77f1ac9e0cdf7566012d127f4371875fd25208845b5c9d6f7c3",
                "names/Scottish.txt": "78d0252711d87d948ea86fe34826c51d2d794a8e52d15b5d6f7b6244d45d62dd",
                "names/Spanish.txt": "1bcb462ed3316756a85781d68232bddae04498fdddd5d9219c53fd1fbdeba7a7",
                "names/Vietnamese.txt": "f3f9e4164ab47601178a6e45b216464a64122f49d05541f24bf18a757253281d",
            },
        ),
        Dataset(
            name="imdb",
            description="IMDB movie reviews, pos/neg (Maas et al. 2011), official train/test",
            inputs=(
                InputSpec(path="imdb/aclImdb/train", format="folder_per_class", split="train"),
                InputSpec(path="imdb/aclImdb/test", format="folder_per_class", split="test"),
            ),
            downloads=(
                Download(
                    url="https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                    checksum="md5:7c2ac02c03563afcf9b574c7e56c153a",
                    extract={
                        f"aclImdb/{s}/{c}/": f"imdb/aclImdb/{s}/{c}/" for s in ("train", "test") for c in ("pos", "neg")
                    },
                ),
            ),
        ),
        Dataset(
            name="semeval2016_tweets",
            description="SemEval-2016 Task 4A tweet sentiment, 3 classes, official train/dev/test",
            inputs=tuple(
                InputSpec(
                    path=f"semeval2016_tweets/{file}.tsv",
                    format="tsv",
                    split=split,
                    header=False,
                    text_columns=[0],
                    label_column=1,
                )
                for file, split in (("train", "train"), ("dev", "val"), ("test", "test"))
            ),
            downloads=tuple(
                Download(
                    url=f"{_SEMEVAL_RAW}{file}.tsv", checksum=f"sha256:{sha}", target=f"semeval2016_tweets/{file}.tsv"
                )
                for file, sha in (
                    ("train", "07c9e20ca18009c0cd9590e6ef8d293e189897c978ee3b1492beda22ed429bac"),
                    ("dev", "ec5d795c2274e86140a153765450aff091ae0a2084f273607e866bce75426a41"),
                    ("test", "eb30c20dc4310c0e4e9115c86f6861ccd8cc5a58a94e3eb98c99102fe5bf2af3"),
                )
            ),
            label_names={"0": "neutral", "1": "positive", "2": "negative"},
        ),
        Dataset(
            name="ag_news",
            description="AG News headlines, 4 topics (Zhang et al. 2015), title + description",
            inputs=tuple(
                InputSpec(
                    path=f"ag_news/{split}.csv",
                    format="csv",
                    split=split,
                    header=False,
                    text_columns=[1, 2],
                    label_column=0,
                )
                for split in ("train", "test")
            ),
            downloads=(
                Download(
                    url=f"{_AG_NEWS_RAW}train.csv",
                    target="ag_news/train.csv",
                    checksum="md5:b1a00f826fdfbd249f79597b59e1dc12",
                ),
                Download(
                    url=f"{_AG_NEWS_RAW}test.csv",
                    target="ag_news/test.csv",
                    checksum="md5:d52ea96a97a2d943681189a97654912d",
                ),
            ),
            label_names={"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"},
        ),
    ]
}


def _verify(path: Path, checksum: str, what: str) -> None:
    algorithm, _, expected = checksum.partition(":")
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise InputError(f"{algorithm} checksum mismatch: expected {expected}, got {actual}", file=what)


def _extract(archive: Path, mapping: dict[str, str], root: Path, expected: dict[str, str]) -> None:
    """Copy the archive members under each prefix to their folder under `root`. A member that
    would land outside `root` refuses the archive; with `expected` (sha256 by path under `root`),
    only those files are written, each checked before it is."""
    inside = root.resolve()

    def target_of(name: str) -> Path | None:
        for prefix, folder in mapping.items():
            if name.startswith(prefix) and not name.endswith("/") and name != prefix:
                dest = (root / folder / name[len(prefix) :].lstrip("/")).resolve()
                if not dest.is_relative_to(inside) or ".." in name.split("/") or name[len(prefix) :].startswith("/"):
                    raise InputError(
                        f"archive member {name!r} would be written outside the dataset folder", file=str(archive)
                    )
                return dest
        return None

    def write(name: str, dest: Path, data: bytes) -> None:
        rel = dest.relative_to(inside).as_posix()
        if expected:
            if rel not in expected:
                return  # not a file of the dataset
            if (actual := hashlib.sha256(data).hexdigest()) != expected[rel]:
                raise InputError(
                    f"sha256 checksum mismatch before extraction: expected {expected[rel]}, got {actual}",
                    file=f"{archive}:{name}",
                )
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = [(info.filename, target_of(info.filename)) for info in zf.infolist()]
            for name, dest in members:
                if dest is not None:
                    write(name, dest, zf.read(name))
        return
    with tarfile.open(archive) as tf:  # one pass (a compressed tar cannot seek back cheaply); a
        for member in tf:  # refused archive leaves only the discarded scratch folder
            if member.isfile() and (dest := target_of(member.name)) is not None:
                with tf.extractfile(member) as src:
                    write(member.name, dest, src.read())


def download(dataset: Dataset, cache_dir: str | Path) -> Path:
    """Download, check and unpack a dataset once; later calls return the cached copy."""
    root = Path(cache_dir).expanduser() / dataset.name
    done = root / ".complete"
    if done.is_file():
        return root
    # one download at a time: a second first run waits, then finds the first one's copy (it
    # would otherwise replace the finished folder while the first run reads it)
    with file_lock(root.with_name(f".{dataset.name}.lock")):
        if not done.is_file():
            _fetch(dataset, root)
    return root


def _fetch(dataset: Dataset, root: Path) -> None:
    with building(root) as scratch:
        for item in dataset.downloads:
            local = scratch / ".download" / posixpath.basename(item.url)
            local.parent.mkdir(parents=True, exist_ok=True)
            with fsspec.open(item.url, "rb") as src, open(local, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
            if item.checksum:
                _verify(local, item.checksum, item.url)
            if item.extract:
                _extract(local, item.extract, scratch, dataset.file_sha256)
            else:
                (scratch / item.target).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(local, scratch / item.target)
        for rel, sha in dataset.file_sha256.items():
            if not (scratch / rel).is_file():
                raise InputError(f"download lacks {rel}", file=dataset.downloads[0].url)
            _verify(scratch / rel, f"sha256:{sha}", rel)
        shutil.rmtree(scratch / ".download", ignore_errors=True)
        (scratch / ".complete").touch()


def materialize(source: SourceConfig) -> SourceConfig:
    """Resolve a registered dataset to explicit local inputs (mirror, else cached download)."""
    if source.dataset is None:
        return source
    if source.dataset not in REGISTRY:
        raise InputError(f"unknown dataset {source.dataset!r}; known: {sorted(REGISTRY)}")
    dataset = REGISTRY[source.dataset]
    mirror = Path(source.mirror).expanduser() if source.mirror else None
    if mirror is not None and all((mirror / spec.path).exists() for spec in dataset.inputs):
        root = mirror.resolve()
    else:
        root = download(dataset, source.cache_dir)
    inputs = [spec.model_copy(update={"path": str(root / spec.path)}) for spec in dataset.inputs]
    unlabelled = [
        spec
        if "://" in spec.path or Path(spec.path).is_absolute()
        else spec.model_copy(update={"path": str(root / spec.path)})
        for spec in source.unlabelled
    ]
    return source.model_copy(
        update={
            "dataset": None,
            "inputs": inputs,
            "unlabelled": unlabelled,
            "label_names": {**dataset.label_names, **source.label_names},
        }
    )
