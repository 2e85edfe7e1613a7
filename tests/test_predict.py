"""In-process prediction (`rnnlib.scoring.predictor.Predictor`, `rnnlib predict`): the same
results as the score flow and the test shards, with no Prefect and no Dask."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rnnlib.config import InputSpec, ScoreConfig
from rnnlib.modeling.bundle import load_bundle
from rnnlib.modeling.inference import predict_proba
from rnnlib.scoring.output import SCORES
from rnnlib.scoring.pipeline import score
from rnnlib.scoring.predictor import Predictor
from rnnlib.scoring.registry import held_out_rows, promote

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def test_rows(names_data) -> pa.Table:
    return held_out_rows(names_data.ingest.path, names_data.split.path)


def test_predictions_match_the_test_shards_and_a_scoring_run(names_bundle, names_data, test_rows, tmp_path):
    """Exactly, on the CPU, as the shards' probabilities are computed here (a GPU's differ in the last bits)."""
    predictor = Predictor.from_bundle(names_bundle, engine="fp32", device="cpu")  # the shards' own format
    predictions = predictor.predict(test_rows["text"].to_pylist(), top_k=3)
    by_id = dict(zip(test_rows["id"].to_pylist(), predictions))
    shards = pq.read_table(f"{names_data.tensorize.path}/test")
    bundle = load_bundle(names_bundle)
    probabilities = predict_proba(bundle.model, shards["ids"].combine_chunks(), len(bundle.labels.labels), 64)
    expected = np.array(bundle.labels.labels)[probabilities.argmax(1)]
    got = [by_id[i] for i in shards["id"].to_pylist()]
    assert [p.label for p in got] == expected.tolist()
    assert np.allclose([p.probability for p in got], probabilities.max(1), atol=1e-5)
    assert all(len(p.top_k) == 3 and p.top_k[0] == (p.label, p.probability) for p in got)

    pq.write_table(test_rows.select(["id", "text"]), tmp_path / "test.parquet")
    score(
        ScoreConfig(
            bundle=str(names_bundle),
            output=str(tmp_path / "out"),
            engine="fp32",
            device="cpu",
            inputs=[InputSpec(path=str(tmp_path / "test.parquet"), id_column="id")],
        )
    )
    scored = pq.read_table(tmp_path / "out" / SCORES).to_pandas().set_index("id")
    assert [by_id[i].label for i in scored.index] == scored["label"].tolist()
    assert [by_id[i].probability for i in scored.index] == scored["probability"].tolist()


def test_rejected_and_truncated_texts(names_bundle):
    predictor = Predictor.from_bundle(names_bundle, max_length=5)
    first, empty, blank, none, long = predictor.predict(["Rossi", "", "   ", None, "Abcdefghijklmnop"])
    assert first.label in predictor.labels and first.rejected is None and not first.truncated
    assert (empty.rejected, blank.rejected, none.rejected) == ("empty text", "empty text", "null text")
    assert empty.label is None and empty.top_k == []
    assert long.truncated and long.label is not None


def test_a_registry_folder_means_its_current_model(names_bundle, names_data, tmp_path):
    promote(tmp_path / "models", names_bundle, names_data.ingest.path, names_data.split.path)
    predictor = Predictor.from_bundle(tmp_path / "models")
    assert predictor.bundle.version == load_bundle(names_bundle).version


def test_predict_command_starts_no_prefect_and_no_cluster(names_bundle):
    script = (
        "import sys, psutil; from rnnlib_flows.cli import main; "
        f"code = main(['predict', {str(names_bundle)!r}, 'Rossi', 'Schmidt', '', '--top-k', '2']); "
        "assert code == 0; assert 'prefect' not in sys.modules, 'Prefect was imported'; "
        "assert not psutil.Process().children(recursive=True), 'a process was started'"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["Rossi", "Schmidt", ""]
    assert len(lines[0]["top_k"]) == 2 and lines[0]["top_k"][0]["label"] == lines[0]["label"]
    assert lines[2]["rejected"] == "empty text" and lines[2]["label"] is None


def test_predict_command_reads_standard_input_and_prints_a_table(names_bundle):
    run = subprocess.run(
        [sys.executable, "-m", "rnnlib_flows.cli", "predict", str(names_bundle), "--output", "table"],
        input="Rossi\nNakamura\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = run.stdout.splitlines()
    assert len(rows) == 2 and rows[0].endswith("Rossi") and rows[1].endswith("Nakamura")


# The stated tolerance of the engines, on the surnames test split (3,008 rows): the same label for
# at least 99% of rows, every probability within 0.05 of fp32's. The same on any CPU: without
# bf16 units bf16 is emulated, slower but no less exact. auto picks among those.
SAME_LABELS, PROBABILITY_CHANGE = 0.99, 0.05


@pytest.mark.parametrize("engine", ["bf16", "int8", "onnx", "onnx-int8", "openvino", "openvino-bf16", "auto"])
def test_every_engine_agrees_with_fp32_within_the_stated_tolerance(names_bundle, test_rows, engine, tmp_path):
    texts = test_rows["text"].to_pylist()
    fp32 = Predictor.from_bundle(names_bundle, engine="fp32", device="cpu").predict(texts, top_k=18)
    reduced = Predictor.from_bundle(names_bundle, engine=engine, engine_cache=tmp_path, device="cpu").predict(
        texts, top_k=18
    )
    assert_within_tolerance(fp32, reduced)
    if engine == "auto":  # it measured every engine installed (the dev extras: OpenVINO's too)
        (choice,) = tmp_path.glob("choice-*.json")
        measured = {trial["engine"] for trial in json.loads(choice.read_text())["trials"]}
        assert {"fp32", "bf16", "int8", "onnx", "onnx-int8", "openvino"} <= measured


def assert_within_tolerance(fp32: list, reduced: list) -> None:
    assert np.mean([a.label == b.label for a, b in zip(fp32, reduced)]) >= SAME_LABELS
    change = max(abs(dict(a.top_k)[label] - p) for a, b in zip(fp32, reduced) for label, p in b.top_k)
    assert change <= PROBABILITY_CHANGE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CI has none; run where one is lent)")
@pytest.mark.parametrize("engine", ["fp32", "bf16", "auto"])
def test_on_a_gpu_every_engine_agrees_with_the_cpu_and_auto_measures_them(names_bundle, test_rows, engine, tmp_path):
    texts = test_rows["text"].to_pylist()
    cpu = Predictor.from_bundle(names_bundle, engine="fp32", device="cpu").predict(texts, top_k=18)
    gpu = Predictor.from_bundle(names_bundle, engine=engine, engine_cache=tmp_path, device="cuda")
    assert_within_tolerance(cpu, gpu.predict(texts, top_k=18))
    assert gpu.loaded.engine.device.type == "cuda"
    if engine == "auto":
        (choice,) = tmp_path.glob("choice-*.json")
        assert {trial["engine"] for trial in json.loads(choice.read_text())["trials"]} == {"fp32", "bf16"}


def test_with_device_auto_the_cpu_only_engines_stay_on_the_cpu(monkeypatch):
    """On a GPU machine `device: auto` runs fp32 and bf16 on the GPU and int8 and the graph
    engines on the CPU, where they run, instead of refusing them."""
    from rnnlib.modeling.engines import CPU_ONLY_ENGINES, engine_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert {engine_device("auto", e).type for e in ("fp32", "bf16")} == {"cuda"}
    assert {engine_device("auto", e).type for e in CPU_ONLY_ENGINES} == {"cpu"}
    assert engine_device("cuda", "int8").type == "cuda"  # asked for: for_inference says int8 cannot run there
    assert engine_device("cpu", "fp32").type == "cpu"


def test_onnx_int8_runs_an_lstm_in_8_bits_within_the_stated_tolerance(names_data, test_rows, tmp_path):
    """ONNX Runtime's 8-bit LSTM and matrix products replace the fp32 ones in the graph the
    onnx-int8 engine runs (a GRU has no 8-bit kernel there: the parametrised test above runs
    one), and the labels stay as fp32's within the stated tolerance."""
    import onnx

    from rnnlib.config import ModelConfig, PreprocessConfig, TrainConfig
    from rnnlib.modeling.bundle import save_bundle
    from rnnlib.modeling.train import BEST, train

    # hidden 48: weights large enough that the exporter leaves them computed in the graph
    model = ModelConfig(cell="lstm", embedding_dim=16, hidden_size=48, bidirectional=True)
    train(names_data.tensorize.path, out_dir=tmp_path / "fit", model=model, cfg=TrainConfig(epochs=1, lr=3e-3))
    bundle = tmp_path / "bundle"
    save_bundle(
        bundle, tmp_path / "fit" / BEST, Path(names_data.vocab.path), PreprocessConfig(level="char"), model, None, {}
    )
    texts = test_rows["text"].to_pylist()
    fp32 = Predictor.from_bundle(bundle, engine="fp32").predict(texts, top_k=18)
    int8 = Predictor.from_bundle(bundle, engine="onnx-int8", engine_cache=tmp_path / "engines")
    reduced = int8.predict(texts, top_k=18)
    operators = {node.op_type for node in onnx.load(int8.settings.graph).graph.node}
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= operators and not {"LSTM", "Gemm", "MatMul"} & operators
    assert np.mean([a.label == b.label for a, b in zip(fp32, reduced)]) >= SAME_LABELS
    change = max(abs(dict(a.top_k)[label] - p) for a, b in zip(fp32, reduced) for label, p in b.top_k)
    assert 0 < change <= PROBABILITY_CHANGE  # changed (8 bits), but within the tolerance


def test_auto_measures_the_pytorch_engines_without_onnx_runtime(names_bundle, test_rows, tmp_path, run_without):
    """ONNX Runtime is an extra (`export`): without it `auto` measures and chooses among the
    PyTorch engines instead of failing to export a graph."""
    texts = test_rows["text"].to_pylist()[:600]  # enough rows to measure on
    printed = run_without(
        "onnxruntime",
        "from rnnlib.scoring.predictor import Predictor; "
        f"p = Predictor.from_bundle({str(names_bundle)!r}, engine='auto', engine_cache={str(tmp_path)!r}); "
        f"p.predict({texts!r}); print(p.settings.engine, p.settings.graph)",
    )
    engine, graph = printed.split()
    assert engine in ("fp32", "bf16", "int8") and graph == "None"
    (choice,) = tmp_path.glob("choice-*.json")
    assert [t["engine"] for t in json.loads(choice.read_text())["trials"]] == ["fp32", "bf16", "int8"]
    assert not list(tmp_path.glob("*.onnx"))


def test_a_cached_graph_is_made_again_after_an_upgrade_of_onnx_runtime(names_bundle, tmp_path, monkeypatch):
    """The engine cache keys a graph by the bundle and by the code that made it, libraries
    included: a graph exported or quantised by an older ONNX Runtime is not reused after an
    upgrade (simulated: its installed version is reported as another)."""
    import importlib.metadata

    from rnnlib.common.fingerprint import code_version
    from rnnlib.scoring.partition import ScoringSettings, onnx_graph

    settings = ScoringSettings(str(names_bundle), load_bundle(names_bundle).version, top_k=1, max_length=64)
    graph = onnx_graph(settings, tmp_path, "onnx-int8")
    made = graph.stat().st_mtime_ns
    assert onnx_graph(settings, tmp_path, "onnx-int8") == graph and graph.stat().st_mtime_ns == made  # reused

    installed = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9" if name == "onnxruntime" else installed(name))
    code_version.cache_clear()
    try:
        upgraded = onnx_graph(settings, tmp_path, "onnx-int8")
    finally:
        monkeypatch.undo()
        code_version.cache_clear()
    assert upgraded != graph and upgraded.is_file() and len(list(tmp_path.glob("*.onnx"))) == 4


def test_a_bundle_keeps_its_stop_words_and_scores_without_nltk(names_bundle, names_data, tmp_path, run_without):
    """A bundle trained with NLTK's stop words holds the words themselves: the machine that
    scores with it needs neither NLTK's corpus nor NLTK, and NLTK's list changing later does not
    change what the model is given."""
    from rnnlib.config import ModelConfig, PreprocessConfig
    from rnnlib.modeling.bundle import save_bundle
    from rnnlib.modeling.train import BEST

    model = ModelConfig(cell="gru", embedding_dim=16, hidden_size=32, bidirectional=True)  # names_bundle's
    save_bundle(
        tmp_path / "bundle",
        names_bundle.parent / "fit" / BEST,
        Path(names_data.vocab.path),
        PreprocessConfig(level="word", stopwords=True),
        model,
        None,
        {},
    )
    assert "the" in load_bundle(tmp_path / "bundle").preprocess.stopword_list
    printed = run_without(
        "nltk",
        "from rnnlib.scoring.predictor import Predictor; "
        f"p = Predictor.from_bundle({str(tmp_path / 'bundle')!r}, engine='fp32'); "
        "print([r.rejected for r in p.predict(['the smith', 'the'])])",
    )
    assert printed == "[None, 'no tokens after preprocessing']"  # "the" was dropped


def test_onnx_export_matches_torch_on_the_test_split(names_bundle, names_data, tmp_path):
    import onnx
    import onnxruntime

    from rnnlib.modeling.batches import collate
    from rnnlib_flows.cli import main

    assert main(["export", str(names_bundle), "-o", str(tmp_path / "model.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    bundle = load_bundle(names_bundle)
    ids = pq.read_table(f"{names_data.tensorize.path}/test")["ids"].combine_chunks()
    expected = predict_proba(bundle.model, ids, len(bundle.labels.labels), 64)
    got = []
    for start in range(0, len(ids), 500):  # batches in file order: mixed lengths, padded
        batch = collate(ids.slice(start, 500), np.zeros(min(500, len(ids) - start), np.int64))
        got.append(session.run(None, {"ids": batch.ids.numpy(), "lengths": batch.lengths.numpy()})[0])
    assert np.abs(np.concatenate(got) - expected).max() < 1e-4
    props = {p.key: p.value for p in onnx.load(tmp_path / "model.onnx").metadata_props}
    assert json.loads(props["labels"]) == list(bundle.labels.labels)
    assert props["rnnlib_bundle_version"] == bundle.version


def unexportable_bundle(names_data, folder: Path) -> Path:
    """An untrained plain-RNN bundle: torch exports such cells with a fixed length."""
    from rnnlib.config import ModelConfig, PreprocessConfig
    from rnnlib.modeling.bundle import save_bundle
    from rnnlib.modeling.model import RNNClassifier

    cfg = ModelConfig(cell="rnn_tanh", bidirectional=True, embedding_dim=8, hidden_size=8)
    torch.save(RNNClassifier(names_data.vocab_size, len(names_data.labels), cfg).state_dict(), folder / "w.pt")
    save_bundle(folder / "bundle", folder / "w.pt", Path(names_data.vocab.path), PreprocessConfig(), cfg, None, {})
    return folder / "bundle"


def test_a_model_that_cannot_be_exported_faithfully_is_refused(names_data, tmp_path):
    from rnnlib.modeling.export import ExportError, export_onnx

    bundle = unexportable_bundle(names_data, tmp_path)
    with pytest.raises(ExportError, match="does not run on other shapes"):
        export_onnx(bundle, tmp_path / "model.onnx")
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*"))  # nothing left behind


def test_the_model_card_of_a_model_that_cannot_be_exported_measures_pytorch_and_says_why(names_data, tmp_path):
    """The card's engine table covers the graph engines where the model exports (the train flow's
    test); where it does not, evaluation goes on with PyTorch's engines and the card says why."""
    from rnnlib.modeling.card import model_card
    from rnnlib.modeling.engines import GRAPH_ENGINES, available_engines
    from rnnlib.modeling.evaluate import Selection, evaluate_bundle

    bundle = unexportable_bundle(names_data, tmp_path)
    figures = {"train_loss": 2.0, "val_loss": 2.0, "train_acc": 0.1, "val_acc": 0.1, "val_macro_f1": 0.1}
    history = [{"epoch": 1, "seconds": 1.0, **figures}]
    selection = Selection(monitor="loss", epoch=1, value=2.0)
    evaluation = evaluate_bundle(bundle, Path(names_data.tensorize.path) / "test", history=history, selection=selection)
    engines = evaluation.engines
    assert [t.engine for t in engines.trials] == ["fp32", "bf16", "int8"]
    graphs = [name for name in available_engines(torch.device("cpu")) if name in GRAPH_ENGINES]
    assert list(engines.not_measured) == graphs and {"onnx", "openvino"} <= set(graphs)  # the dev extras
    assert all("does not run on other shapes" in why for why in engines.not_measured.values())
    assert f"Not measured: {', '.join(graphs)} (" in model_card(bundle, evaluation)


def test_auto_scores_a_model_that_cannot_be_exported_and_says_what_it_left_out(names_data, test_rows, tmp_path):
    """`engine: auto`, the default, measures the engines that can run the model instead of failing
    on the graph engines' export."""
    predictor = Predictor.from_bundle(
        unexportable_bundle(names_data, tmp_path), engine="auto", engine_cache=tmp_path / "engines", device="cpu"
    )
    predictions = predictor.predict(test_rows["text"].to_pylist()[:600])
    assert all(p.label in predictor.labels for p in predictions)
    assert predictor.settings.engine in ("fp32", "bf16", "int8")
    assert "not measured, the model does not export: onnx, onnx-int8, openvino" in predictor.engine_reason


def test_two_exports_of_one_output_at_once_both_succeed(names_bundle, tmp_path):
    """Each export works in a scratch folder of its own, so neither removes nor reads the other's files,
    and nothing of either is left beside the output."""
    import onnx

    command = [sys.executable, "-m", "rnnlib_flows.cli", "export", str(names_bundle), "-o", str(tmp_path / "m.onnx")]
    runs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err.decode()[-2000:]
    onnx.checker.check_model(onnx.load(tmp_path / "m.onnx"))
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
