"""Benchmark commands: they print and log figures; tests never assert timings."""
