"""Accuracy of a model on prepared data: the metrics and ``segmate evaluate``."""
