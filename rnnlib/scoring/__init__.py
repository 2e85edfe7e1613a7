"""A bundle applied to new text: one partition at a time (`partition`), a scoring run's output
folder (`output`), the run's order (`pipeline.score`), and the registry that decides which
model scoring uses (`registry`)."""
