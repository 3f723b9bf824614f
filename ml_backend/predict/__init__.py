"""Predictions: the served version per project, the predictor and its parts (class, saliency, proposals, influence)."""
