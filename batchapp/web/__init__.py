"""batchapp web: pages, an API and /metrics over the same service functions the CLI calls."""
