"""Prediction from trained runs: batched prediction with the left/right TTA and the per-row
fallback (batch), the fitted-once members' cached features (trees), test predictions of an
experiment (predict: `hms predict` and the Kaggle notebook), the OOF-fitted ensemble and the
run summary. Imports nothing from hms.training (tests/test_layout.py)."""
