"""The classifier: the model, batches streamed from tensor shards, training, evaluation and the
model bundle, chained by `rnnlib.modeling.pipeline.train_model`."""
