"""Server mode: the `loadonce serve` command, its configuration, workers and supervisor."""
