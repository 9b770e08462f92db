"""The batchapp database: engines per process, the tables, and Celery's result backend on them."""
