"""Where the workers' metrics meet: the variable prometheus-client's multiprocess mode reads
(``http/metrics.py``), set by the supervisor of ``--workers N``, which imports nothing else of
the metrics."""

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
