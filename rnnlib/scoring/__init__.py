"""A bundle applied to new text: one partition at a time (`partition`), a whole resumable run
(`run.score`), and the registry that decides which model scoring uses (`registry`)."""
