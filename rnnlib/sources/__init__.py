"""Where text comes from: registered public datasets (mirror, cache or download), inputs resolved
to files, and the readers of every supported format."""
