"""Kaggle round trip: download, dataset packaging and upload, offline notebook."""
