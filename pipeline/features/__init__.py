"""Features: the scaler (fitted on normal training rows only) and sliding windows."""
