"""lipseg: lip landmarks (Tweaked CNN) and lip segmentation as a reproducible DVC + MLflow pipeline."""

__version__ = "0.1.0"
