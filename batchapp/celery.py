"""The Celery app: ``celery -A batchapp worker`` and ``celery -A batchapp beat`` find it here."""

from __future__ import annotations

from celery import Celery

from batchapp import settings as config

settings = config.load()
config.ensure_dirs(settings)

app = Celery("batchapp", include=["batchapp.tasks"])
app.config_from_object(config.celery_config(settings))
