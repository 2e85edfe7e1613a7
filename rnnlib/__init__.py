"""rnnlib: recurrent text classifiers as a pipeline. The library alone, free of orchestration
(the Prefect flows and tasks wrap it); its parts, in pipeline order:

    sources/   where text comes from: datasets, inputs, readers
    prepare/   ingest -> preprocess -> split -> vocab -> tensorize   (prepare.pipeline.prepare)
    modeling/  model, batches, train, evaluate, bundle               (modeling.pipeline.train_model)
    scoring/   a bundle over new text, resumable; the model registry  (scoring.run.score)

beside `config` (every setting, typed), `errors`, `stages` (content-addressed stage outputs) and
`common/` (storage, fingerprints, Dask, accounting).
"""
