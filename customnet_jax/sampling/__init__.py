"""Inference: the sampling pipeline and the files it writes."""
