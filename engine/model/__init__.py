"""The model layer: a loaded classifier with its preprocessing, labels and compiled functions."""
