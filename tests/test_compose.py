"""docker-compose.yml, Dockerfile and .env.example, checked by reading them (no Docker here)."""

from __future__ import annotations

import logging
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from batchapp import queues
from batchapp.settings import Settings, load

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
SERVICES: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
BEAT_SCRIPT = (ROOT / "docker" / "beat-start.sh").read_text()
ENV_EXAMPLE = ROOT / ".env.example"
REQUIRED_SECRETS = ("RABBITMQ_USER", "RABBITMQ_PASSWORD", "FLOWER_BASIC_AUTH")
WORKERS = ("worker", "chunk-worker")


def duration_s(text: str) -> float:
    """Seconds in a compose duration such as '400s', '7m' or '1m30s'."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text))


def test_services_are_rabbitmq_worker_beat_and_flower() -> None:
    assert set(SERVICES) == {"rabbitmq", *WORKERS, "beat", "flower"}


def test_exactly_one_beat_runs() -> None:
    assert SERVICES["beat"].get("deploy", {}).get("replicas", 1) == 1
    for name in WORKERS:
        worker_command = SERVICES[name]["command"]
        assert "-B" not in worker_command and "--beat" not in worker_command


def test_worker_and_beat_share_one_image_built_by_the_dockerfile() -> None:
    beat = SERVICES["beat"]

    for name in WORKERS:
        assert SERVICES[name]["build"] == beat["build"] == "."
        assert SERVICES[name]["image"] == beat["image"]


@pytest.mark.parametrize("name", WORKERS)
def test_workers_run_the_celery_worker_command_the_tests_run(name: str) -> None:
    assert SERVICES[name]["command"][:4] == ["celery", "-A", "batchapp", "worker"]


def consumed(name: str) -> list[str]:
    command = SERVICES[name]["command"]
    return str(command[command.index("-Q") + 1]).split(",")


def test_calls_and_ticks_have_a_worker_and_chunks_a_scalable_one_of_their_own() -> None:
    assert consumed("worker") == [queues.CALLS, queues.PERIODIC]
    assert consumed("chunk-worker") == [queues.CHUNKS]
    assert "deploy" not in SERVICES["chunk-worker"]


def test_beat_start_script_removes_the_stale_pid_file_then_runs_beat() -> None:
    pidfile = re.search(r"--pidfile=(\S+)", BEAT_SCRIPT)

    assert SERVICES["beat"]["command"] == ["/app/docker/beat-start.sh"]
    assert "COPY docker ./docker" in DOCKERFILE
    assert "exec celery -A batchapp beat" in BEAT_SCRIPT
    assert pidfile and f"rm -f {pidfile[1]}" in BEAT_SCRIPT


def test_data_volume_is_shared_at_the_absolute_data_dir() -> None:
    for name in (*WORKERS, "beat"):
        service = SERVICES[name]
        data_dir = service["environment"]["BATCHAPP_DATA_DIR"]
        mounts = [volume.split(":")[1] for volume in service["volumes"]]

        assert data_dir.startswith("/")
        assert data_dir in mounts


@pytest.mark.parametrize("name", WORKERS)
def test_worker_grace_period_outlasts_the_task_time_limit(name: str) -> None:
    assert duration_s(SERVICES[name]["stop_grace_period"]) > load({}).task_time_limit


def test_every_compose_variable_has_a_value_in_env_example() -> None:
    used = set(re.findall(r"(?<!\$)\$\{?([A-Za-z_]\w*)", COMPOSE_TEXT))
    defined = set(dotenv_values(ENV_EXAMPLE))

    assert used
    assert used <= defined, used - defined


def test_every_batchapp_setting_is_documented_in_env_example() -> None:
    source = (ROOT / "batchapp" / "settings.py").read_text()
    read = {f"BATCHAPP_{name}" for name in re.findall(r'env\.get\(\s*"(\w+)"', source)}
    documented = set(re.findall(r"^# (BATCHAPP_\w+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))

    assert {f"BATCHAPP_{field.name.upper()}" for field in fields(Settings)} <= read
    assert read == documented


def test_env_example_parses_without_warnings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dotenv"):
        values = dotenv_values(ENV_EXAMPLE)

    assert set(REQUIRED_SECRETS) <= set(values)
    assert caplog.records == []


def test_env_example_credentials_are_placeholders_not_guest() -> None:
    values = dotenv_values(ENV_EXAMPLE)

    for name in REQUIRED_SECRETS:
        value = values[name] or ""
        assert value and "guest" not in value, name
    assert ":" in (values["FLOWER_BASIC_AUTH"] or "")


@pytest.mark.parametrize("name", REQUIRED_SECRETS)
def test_compose_refuses_to_start_without_a_secret(name: str) -> None:
    assert f"${{{name}:?" in COMPOSE_TEXT


def test_rabbitmq_is_pinned_and_has_a_healthcheck() -> None:
    rabbitmq = SERVICES["rabbitmq"]

    assert re.fullmatch(r"rabbitmq:\d+\.\d+(\.\d+)?-management", rabbitmq["image"])
    assert "rabbitmq-diagnostics" in rabbitmq["healthcheck"]["test"]
    assert rabbitmq["environment"]["RABBITMQ_DEFAULT_USER"].startswith("${RABBITMQ_USER")


def test_services_wait_for_a_healthy_rabbitmq() -> None:
    for name in (*WORKERS, "beat", "flower"):
        assert SERVICES[name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def test_flower_image_is_pinned_and_requires_basic_auth() -> None:
    flower = SERVICES["flower"]

    assert re.fullmatch(r"mher/flower:\d+\.\d+(\.\d+)?", flower["image"])
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


@pytest.mark.parametrize("name", ["rabbitmq", "flower"])
def test_web_uis_are_published_on_loopback_only(name: str) -> None:
    assert all(str(port).startswith("127.0.0.1:") for port in SERVICES[name].get("ports", []))


def test_containers_run_as_the_non_root_user_that_owns_the_data_dir() -> None:
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.MULTILINE)
    uid = re.search(r"useradd --uid (\d+)", DOCKERFILE)

    assert users and users[-1] not in {"root", "0"}
    assert uid and uid[1] != "0"
    assert "chown batchapp:batchapp /data" in DOCKERFILE
    for name in (*WORKERS, "beat"):
        assert str(SERVICES[name].get("user", uid[1])).split(":")[0] == uid[1]
