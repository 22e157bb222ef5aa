"""Segmentation of a CT volume: the predictor, the slice-batch iterator, the z strategies, the
first pass, smoothing along z, post-processing and the result.

Importing this package imports no PyTorch: ``segmatecore.inference.result`` is read by the Slicer
panel, which must not load the network's libraries into Slicer's process.
"""
