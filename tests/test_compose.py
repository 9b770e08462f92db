"""docker-compose.yml, Dockerfile and .env.example, checked by reading them (no Docker here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from batchapp.settings import load

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
ENV_EXAMPLE = (ROOT / ".env.example").read_text()


def duration_s(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text))


def test_services_are_rabbitmq_worker_one_beat_and_flower() -> None:
    assert set(SERVICES) == {"rabbitmq", "worker", "beat", "flower"}
    assert SERVICES["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_worker_and_beat_share_one_image_built_by_the_dockerfile() -> None:
    worker, beat = SERVICES["worker"], SERVICES["beat"]

    assert worker["build"] == beat["build"] == "."
    assert worker["image"] == beat["image"]


def test_commands_are_the_ones_the_tests_run() -> None:
    script = (ROOT / "docker" / "beat-start.sh").read_text()

    assert SERVICES["worker"]["command"][:4] == ["celery", "-A", "batchapp", "worker"]
    assert SERVICES["beat"]["command"] == ["/app/docker/beat-start.sh"]
    assert "exec celery -A batchapp beat" in script
    assert "rm -f /data/celerybeat.pid" in script


def test_data_volume_is_shared_at_the_absolute_data_dir() -> None:
    for name in ("worker", "beat"):
        service = SERVICES[name]
        mounts = [v.split(":", 1)[1] for v in service["volumes"]]
        assert service["environment"]["BATCHAPP_DATA_DIR"] in mounts
        assert service["environment"]["BATCHAPP_DATA_DIR"].startswith("/")


def test_worker_grace_period_outlasts_the_task_time_limit() -> None:
    assert duration_s(SERVICES["worker"]["stop_grace_period"]) > load({}).task_time_limit


def test_every_compose_variable_is_in_env_example() -> None:
    used = set(re.findall(r"\$\{(\w+)(?::?-[^}]*)?\}", (ROOT / "docker-compose.yml").read_text()))
    defined = set(re.findall(r"^#?\s*(\w+)=", ENV_EXAMPLE, re.MULTILINE))

    assert used
    assert used <= defined, used - defined


def test_every_batchapp_setting_is_in_env_example() -> None:
    source = (ROOT / "batchapp" / "settings.py").read_text()
    read = {f"BATCHAPP_{name}" for name in re.findall(r'env\.get\(\s*"(\w+)"', source)}
    documented = set(re.findall(r"^#?\s*(BATCHAPP_\w+)=", ENV_EXAMPLE, re.MULTILINE))

    assert len(read) >= 11
    assert read == documented


def test_env_example_parses_and_its_credentials_are_not_guest() -> None:
    values = dotenv_values(ROOT / ".env.example")

    assert values["RABBITMQ_USER"] not in {"guest", ""}
    assert values["RABBITMQ_PASSWORD"] not in {"guest", ""}
    assert ":" in (values["FLOWER_BASIC_AUTH"] or "")


def test_rabbitmq_is_pinned_and_has_a_healthcheck() -> None:
    rabbitmq = SERVICES["rabbitmq"]

    assert re.fullmatch(r"rabbitmq:\d+\.\d+(\.\d+)?-management", rabbitmq["image"])
    assert "rabbitmq-diagnostics" in rabbitmq["healthcheck"]["test"]
    assert rabbitmq["environment"]["RABBITMQ_DEFAULT_USER"] == "${RABBITMQ_USER}"


@pytest.mark.parametrize("name", ["rabbitmq", "flower"])
def test_web_uis_are_published_on_loopback_only(name: str) -> None:
    assert all(str(port).startswith("127.0.0.1:") for port in SERVICES[name].get("ports", []))


def test_flower_requires_basic_auth() -> None:
    assert SERVICES["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH}"


def test_containers_run_as_a_non_root_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)

    assert users and users[-1] not in {"root", "0"}
    for name in ("worker", "beat"):
        assert str(SERVICES[name].get("user", "10001")).split(":")[0] not in {"root", "0"}
