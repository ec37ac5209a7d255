"""The detector, pure (no MLflow, no output paths): window error, threshold, events, bundle, fitting, scoring, stream carry."""
