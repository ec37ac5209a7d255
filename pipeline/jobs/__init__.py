"""The jobs the command line calls: short wiring of the layers below and of tracking."""
