"""Labelled text to tensors: ingest -> preprocess -> split -> vocab -> tensorize, each stage a
module, chained by `rnnlib.prepare.pipeline.prepare`."""
