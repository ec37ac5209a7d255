"""Industrial anomaly-detection pipeline: ingest -> windows -> autoencoder -> threshold -> score -> report."""

__version__ = "0.1.0"
