"""Evaluation: point-wise detection metrics and the promotion gate."""
