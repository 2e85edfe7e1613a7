"""What every stage uses: atomic stage folders, content fingerprints, Dask access, row accounting."""
