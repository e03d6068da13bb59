"""What a model reads, over the prepared caches: the dataset of an experiment config
(dataset.make_dataset, train or eval mode), its per-item transforms (transforms) and the
loaders (loaders: batch sizes, worker counts, worker seeding)."""
