"""Queues by kind of work, as declared: each task's route, the queues' arguments, and a broker
failover list checked in full with no password shown.

tests/integration/test_queues.py holds a real broker and workers to these.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from kombu.connection import Connection

from batchapp.broker import queues, routing
from batchapp.celery import app
from batchapp.settings import SettingsError, celery_config, load, mask_url
from tests.support import run_cli


def route(task_name: str, **options: Any) -> str:
    """The queue Celery would publish ``task_name`` to."""
    queue = app.amqp.router.route(options, task_name)["queue"]
    return str(queue.name)


@pytest.mark.parametrize(
    ("task_name", "queue"),
    [
        ("batchapp.tasks.calculate_sum", queues.CALLS),
        ("batchapp.tasks.run_chunk", queues.CHUNKS),
        ("batchapp.tasks.run_periodic", queues.PERIODIC),
        ("celery.backend_cleanup", queues.PERIODIC),
        # An unknown or future task goes where a default worker reads, not to a dead queue.
        ("someone.elses.task", queues.CALLS),
    ],
)
def test_each_task_is_routed_to_its_kind_of_queue(task_name: str, queue: str) -> None:
    assert route(task_name) == queue


def test_every_beat_entry_ticks_on_the_periodic_queue() -> None:
    schedule = app.conf.beat_schedule

    assert schedule
    for name, entry in schedule.items():
        assert route(entry["task"], **entry["options"]) == queues.PERIODIC, name


def test_a_chunk_can_be_sent_to_the_periodic_queue_explicitly() -> None:
    assert route("batchapp.tasks.run_chunk", queue=queues.PERIODIC) == queues.PERIODIC


def test_queues_are_quorum_by_default_with_the_broker_delivery_limit() -> None:
    settings = load({"BATCHAPP_MAX_DELIVERIES": "4"})
    declared = routing.task_queues(settings.queue_type, settings.max_deliveries)

    assert [queue.name for queue in declared] == list(queues.ALL)
    for queue in declared:
        assert queue.durable
        assert queue.exchange.type == "topic"
        assert queue.queue_arguments == {
            "x-queue-type": "quorum",
            "x-delivery-limit": 4,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "batchapp.dead",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


def test_classic_queues_have_no_delivery_limit() -> None:
    settings = load({"BATCHAPP_QUEUE_TYPE": "classic"})

    for queue in routing.task_queues(settings.queue_type, settings.max_deliveries):
        assert queue.queue_arguments == {
            "x-queue-type": "classic",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "batchapp.dead",
        }


# -- Failover: BATCHAPP_BROKER_URL may list several brokers, kombu's `url1;url2` syntax --

FAILOVER = "amqp://alice:s3cret-one@rabbit-1:5672//; amqp://bob:s3cret-two@rabbit-2:5672//"


def test_a_failover_list_is_accepted_and_passed_to_celery_whole() -> None:
    config = celery_config(load({"BATCHAPP_BROKER_URL": FAILOVER}))

    assert config["broker_url"] == FAILOVER.replace("; ", ";")
    assert Connection(config["broker_url"]).alt == FAILOVER.split("; ")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("amqp://a:s3cret-one@h1//;amqp://b:s3cret-two@h2:x//", "'amqp://b:**@h2:x//': Port"),
        ("amqp://a:s3cret-one@h1//;kafka://b:s3cret-two@h2", "unsupported broker scheme 'kafka'"),
        ("amqp://a:s3cret-one@h1//;h2:5672", "'h2:5672' is not a URL"),
        ("amqp://a:s3cret-one@h1//;", "empty URL in the failover list"),
        ("amqp://a:s3cret-one@h1//;redis://:s3cret-two@h2", "must use one transport"),
        ("amqp://a:s3cret-one@h1//;filesystem://", "embedded broker cannot be in a failover"),
    ],
)
def test_every_url_of_a_failover_list_is_checked_and_no_password_shown(
    value: str, message: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        load({"BATCHAPP_BROKER_URL": value})

    assert str(raised.value).startswith("BATCHAPP_BROKER_URL: ")
    assert message in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_mask_url_masks_every_password_of_a_failover_list() -> None:
    assert mask_url(FAILOVER.replace("; ", ";")) == (
        "amqp://alice:**@rabbit-1:5672//;amqp://bob:**@rabbit-2:5672//"
    )


def test_cli_masks_every_password_when_no_broker_of_the_list_answers() -> None:
    unreachable = "amqp://alice:s3cret-one@127.0.0.1:1//;amqp://bob:s3cret-two@127.0.0.1:2//"
    done = run_cli(
        "submit", "parallel_sum", "n=10", env={**os.environ, "BATCHAPP_BROKER_URL": unreachable}
    )

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: cannot reach the broker at amqp://alice:**@127.0.0.1:1//;"
        "amqp://bob:**@127.0.0.1:2//: [Errno 111] Connection refused"
    ]
