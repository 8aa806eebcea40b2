"""Layer 2, where images come from: the built-in datasets, the user's files, the splits, the
labels the labelled models read, and the transform a trained run applies to new data."""
