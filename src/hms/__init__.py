"""HMS harmful brain activity classification: data, signals, models, ensembles, Kaggle round trip."""
__version__ = "0.1.0"
