"""Stage 3, `hms prepare`: memory-mapped npy caches of the raw bipolar signals and the log Kaggle
spectrograms (store), built after the dataset is validated (prepare)."""
