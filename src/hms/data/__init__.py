"""Data layer: schema, validated readers, labels, folds, the embedded simulator."""
