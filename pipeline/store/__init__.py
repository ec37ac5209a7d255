"""The store: the one atomic writer, the run state, the lock, and the names of every output and state file."""
