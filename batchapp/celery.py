"""The Celery app: ``celery -A batchapp worker`` and ``celery -A batchapp beat`` find it here."""

from __future__ import annotations

from celery import Celery

from batchapp import settings as config

try:
    settings = config.load()
except config.SettingsError as exc:
    # Celery's CLI would show a traceback from inside its app loader; this line says it all.
    raise SystemExit(f"batchapp: {exc}") from None
try:
    config.ensure_dirs(settings)
except OSError as exc:
    raise SystemExit(
        f"batchapp: BATCHAPP_DATA_DIR: cannot create {str(exc.filename)!r}: {exc.strerror or exc}"
    ) from None

app = Celery("batchapp", include=["batchapp.tasks"], task_cls="batchapp.publishing:BatchappTask")
app.config_from_object(config.celery_config(settings))
