"""The private Celery hooks batchapp's consumer relies on (batchapp/internals/consumer.py) are
where it expects them in the installed Celery, and a worker refuses to start if one is not.

No broker, database or worker is needed: a Celery upgrade that moves a hook fails here first.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import celery
import pytest
from celery.worker import loops
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from celery.worker.consumer.tasks import Tasks
from kombu.asynchronous.hub import Hub
from kombu.message import Message
from kombu.messaging import Consumer as KombuConsumer
from kombu.utils.imports import symbol_by_name

from batchapp.internals import consumer as hooks


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_delayed_delivery_private_methods_take_what_batchapps_step_passes() -> None:
    # DelayedDeliveryOnLiveBroker.start calls them as Celery's own start does.
    assert parameters(DelayedDelivery._validate_configuration) == ["self", "app"]
    assert parameters(DelayedDelivery._setup_delayed_delivery) == ["self", "c", "broker_url"]
    assert parameters(DelayedDelivery.start) == ["self", "c"]


def test_celerys_delayed_delivery_step_is_in_the_consumer_blueprint_by_that_path() -> None:
    assert hooks.CELERY_STEP in CeleryConsumer.Blueprint.default_steps
    assert symbol_by_name(hooks.CELERY_STEP) is DelayedDelivery


def test_batchapps_consumer_runs_its_step_instead_of_celerys() -> None:
    steps = hooks.Consumer.Blueprint.default_steps
    assert hooks.CELERY_STEP not in steps
    assert steps.index(hooks.BATCHAPP_STEP) == CeleryConsumer.Blueprint.default_steps.index(
        hooks.CELERY_STEP
    )
    assert symbol_by_name(hooks.BATCHAPP_STEP) is hooks.DelayedDeliveryOnLiveBroker


def test_create_task_handler_is_what_the_event_loops_ask_for_with_no_arguments() -> None:
    signature = inspect.signature(CeleryConsumer.create_task_handler)
    assert list(signature.parameters) == ["self", "promise"]
    assert all(
        p.default is not p.empty for name, p in signature.parameters.items() if name != "self"
    )
    for loop in (loops.asynloop, loops.synloop):
        assert "create_task_handler" in loop.__code__.co_names, loop.__name__


def test_the_consumer_sets_the_error_tuples_batchapp_narrows_and_reads() -> None:
    assigned = CeleryConsumer.__init__.__code__.co_names
    assert "channel_errors" in assigned
    assert "connection_errors" in assigned


def test_the_consumer_keeps_its_hub_and_the_tasks_step_its_qos_mode() -> None:
    # CallsPrefetch schedules on the consumer's hub and leaves a channel-wide prefetch alone.
    assert "hub" in CeleryConsumer.__init__.__code__.co_names
    assert "qos_global" in Tasks.start.__code__.co_names
    assert parameters(Hub.call_soon) == ["self", "callback", "args"]
    assert parameters(Hub.call_repeatedly) == ["self", "delay", "callback", "args"]


def test_the_calls_queue_is_consumed_again_through_kombus_public_calls() -> None:
    assert parameters(KombuConsumer.cancel_by_queue) == ["self", "queue"]
    assert parameters(KombuConsumer.add_queue) == ["self", "queue"]
    assert parameters(KombuConsumer.consume) == ["self", "no_ack"]
    assert parameters(KombuConsumer.consuming_from) == ["self", "queue"]


def test_a_lost_qos_mode_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Tasks, "start", lambda self, c: None)

    with pytest.raises(hooks.HookNotTaken, match=r"Tasks\.start no longer sets qos_global"):
        hooks.check_hooks(CeleryConsumer, DelayedDelivery)


def test_a_rejected_message_is_not_requeued_through_kombus_public_call() -> None:
    assert parameters(Message.reject_log_error) == ["self", "logger", "errors", "requeue"]


def test_every_hook_takes_on_the_installed_celery() -> None:
    hooks.check_hooks(CeleryConsumer, DelayedDelivery)


def test_a_missing_step_is_named_with_the_celery_version() -> None:
    renamed = [s for s in CeleryConsumer.Blueprint.default_steps if s != hooks.CELERY_STEP]

    with pytest.raises(hooks.HookNotTaken) as raised:
        hooks.swap_step(renamed)

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("batchapp: the worker cannot start: its hook ")
    assert f"Celery {celery.__version__}" in message
    assert hooks.CELERY_STEP in message


def test_a_lost_task_handler_hook_is_named() -> None:
    class Renamed:
        class Blueprint:
            default_steps = CeleryConsumer.Blueprint.default_steps

    with pytest.raises(hooks.HookNotTaken, match="create_task_handler did not take on Celery"):
        hooks.check_hooks(Renamed, DelayedDelivery)


def test_a_lost_delayed_delivery_method_is_named() -> None:
    class Renamed:
        start = DelayedDelivery.start

    with pytest.raises(hooks.HookNotTaken, match="DelayedDelivery has no _validate_configuration"):
        hooks.check_hooks(CeleryConsumer, Renamed)


def test_a_worker_on_a_celery_without_the_step_refuses_to_start_in_one_line(
    tmp_path: Path,
) -> None:
    # A Celery that renamed the step, as far as batchapp can tell; the worker stops before it
    # connects to anything.
    code = textwrap.dedent(
        """
        import sys
        from celery.worker.consumer import Consumer
        Consumer.Blueprint.default_steps = [
            step for step in Consumer.Blueprint.default_steps if "delayed_delivery" not in step
        ]
        from celery.__main__ import main
        sys.argv = ["celery", "-A", "batchapp", "worker", "-c", "1", "-l", "INFO"]
        main()
        """
    )
    env = {
        **os.environ,
        "BATCHAPP_DATA_DIR": str(tmp_path),
        "BATCHAPP_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",
        "PYTHONWARNINGS": "ignore",
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr
    assert lines == [
        f"batchapp: the worker cannot start: its hook DelayedDeliveryOnLiveBroker did not take "
        f"on Celery {celery.__version__} (no step {hooks.CELERY_STEP!r} in "
        "celery.worker.consumer.Consumer.Blueprint.default_steps); batchapp supports Celery 5.7"
    ], done.stderr
