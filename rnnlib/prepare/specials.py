"""The reserved tokens every vocabulary starts with; a token's id is its position. Kept apart
from `rnnlib.prepare.vocab` (which pulls in Dask) so the model can use the ids without importing it."""

PAD, UNK = "<PAD>", "<UNK>"
SPECIALS = (PAD, UNK)
PAD_ID, UNK_ID = SPECIALS.index(PAD), SPECIALS.index(UNK)
