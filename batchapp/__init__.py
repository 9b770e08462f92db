"""batchapp: batch processing on Celery.

The Celery app lives in :mod:`batchapp.celery` (``celery -A batchapp`` finds it there); tasks
live in :mod:`batchapp.tasks`.
"""

__version__ = "0.1.0"
