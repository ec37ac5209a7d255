"""How per-asset work is spread: in this process, or in worker processes on this machine."""
