"""The Celery app: ``celery -A batchapp worker`` and ``celery -A batchapp beat`` find it here."""

from __future__ import annotations

from functools import partial

from celery import Celery
from celery.signals import before_task_publish, celeryd_after_setup

from batchapp import settings as config
from batchapp.internals import contract, result_backend
from batchapp.jobs import discovery

try:
    settings = config.load()
    config.ensure_dirs(settings)
except config.SettingsError as exc:
    # Celery's CLI would show a traceback from inside its app loader; this line says it all.
    raise SystemExit(f"batchapp: {exc}") from None

# A Celery, kombu or py-amqp release that reshaped a hook would otherwise stop it silently.
contract.refuse_to_start(contract.broken_hooks())

app = Celery(
    "batchapp", include=["batchapp.tasks"], task_cls="batchapp.broker.publishing:BatchappTask"
)
app.config_from_object(config.celery_config(settings))
celeryd_after_setup.connect(config.ignore_cancel_on_connection_loss_warning, weak=False)
# A caller of a task name no worker serves learns it from the worker's refusal.
before_task_publish.connect(partial(result_backend.remember_unserved, app), weak=False)

# Job types from BATCHAPP_JOBS and entry points, before the worker forks its pool and before
# the CLI plans a job: every process of a deployment knows the same jobs, or stops here.
try:
    discovery.discover(settings.jobs)
except discovery.DiscoveryError as exc:
    raise SystemExit(f"batchapp: {exc}") from None
