"""Stage 6: test predictions from trained folds (`hms predict`, the Kaggle notebook), the
OOF-fitted ensemble and the run summary."""
