"""docker-compose.yml, Dockerfile and .env.example, checked by reading them (no Docker here)."""

from __future__ import annotations

import logging
import re
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from dotenv import dotenv_values
from sqlalchemy.engine import make_url

from batchapp.broker import queues
from batchapp.settings import Settings, load

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
SERVICES: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
BEAT_SCRIPT = (ROOT / "docker" / "beat-start.sh").read_text()
ENV_EXAMPLE = ROOT / ".env.example"
REQUIRED_SECRETS = (
    "RABBITMQ_USER",
    "RABBITMQ_PASSWORD",
    "FLOWER_BASIC_AUTH",
    "WEB_USERS",
    "WEB_SECRET",
)
WORKERS = ("worker", "chunk-worker")


def duration_s(text: str) -> float:
    """Seconds in a compose duration such as '400s', '7m' or '1m30s'."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text))


def test_services_are_rabbitmq_worker_beat_web_and_flower() -> None:
    default = {name for name, service in SERVICES.items() if "profiles" not in service}
    assert default == {"rabbitmq", *WORKERS, "beat", "web", "flower"}


def test_two_beats_run_one_leading_by_lease() -> None:
    assert SERVICES["beat"]["deploy"]["replicas"] == 2
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


def test_beat_start_script_runs_beat_with_no_pid_file_to_block_a_second_replica() -> None:
    assert SERVICES["beat"]["command"] == ["/app/docker/beat-start.sh"]
    assert "COPY docker ./docker" in DOCKERFILE
    assert "exec celery -A batchapp beat" in BEAT_SCRIPT
    assert "--pidfile" not in BEAT_SCRIPT


def test_data_volume_is_shared_at_the_absolute_data_dir() -> None:
    for name in (*WORKERS, "beat", "web"):
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
    for name in (*WORKERS, "beat", "web", "flower"):
        assert SERVICES[name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def test_flower_image_is_pinned_and_requires_basic_auth() -> None:
    flower = SERVICES["flower"]

    assert re.fullmatch(r"mher/flower:\d+\.\d+(\.\d+)?", flower["image"])
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


@pytest.mark.parametrize("name", ["rabbitmq", "flower", "web"])
def test_web_uis_are_published_on_loopback_only(name: str) -> None:
    ports = SERVICES[name].get("ports", [])

    assert ports
    assert all(str(port).startswith("127.0.0.1:") for port in ports)


def test_containers_run_as_the_non_root_user_that_owns_the_data_dir() -> None:
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.MULTILINE)
    uid = re.search(r"useradd --uid (\d+)", DOCKERFILE)

    assert users and users[-1] not in {"root", "0"}
    assert uid and uid[1] != "0"
    assert "chown batchapp:batchapp /data" in DOCKERFILE
    for name in (*WORKERS, "beat", "web"):
        assert str(SERVICES[name].get("user", uid[1])).split(":")[0] == uid[1]


def test_worker_and_beat_send_task_events_from_the_start_for_flower() -> None:
    for name in ("worker", "beat"):
        value = SERVICES[name]["environment"]["BATCHAPP_TASK_EVENTS"]
        assert load({"BATCHAPP_TASK_EVENTS": value}).task_events, name


def test_web_runs_batchapp_web_from_the_shared_image_with_the_workers_settings() -> None:
    web, worker = SERVICES["web"], SERVICES["worker"]
    command = web["command"]

    assert command[:2] == ["batchapp", "web"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert (web["build"], web["image"]) == (worker["build"], worker["image"])
    assert worker["environment"].items() <= web["environment"].items()
    assert re.search(r'pip install "\.\[[^]]*\bweb\b[^]]*\]"', DOCKERFILE)


def test_web_login_comes_from_env_and_compose_refuses_to_start_without_it() -> None:
    environment = SERVICES["web"]["environment"]

    for name in ("WEB_USERS", "WEB_SECRET"):
        assert environment[f"BATCHAPP_{name}"].startswith(f"${{{name}:?"), name


def test_env_example_gives_no_batchapp_web_login_that_every_command_would_load() -> None:
    # python-dotenv loads .env into every batchapp command: a placeholder hash there would stop
    # them all; compose's own names carry the login to the web service alone.
    values = dotenv_values(ENV_EXAMPLE)

    assert "BATCHAPP_WEB_USERS" not in values
    assert "BATCHAPP_WEB_SECRET" not in values


def test_env_example_web_users_hold_a_hash_to_paste_never_a_password() -> None:
    text = ENV_EXAMPLE.read_text()
    users = dotenv_values(ENV_EXAMPLE)["WEB_USERS"] or ""

    assert users == "admin:<hash printed by batchapp web-password>"
    # Single-quoted, so the '$' of a real hash is not read as a variable by compose.
    assert re.search(r"^WEB_USERS='[^']*'$", text, re.MULTILINE)


def test_web_healthcheck_asks_the_server_with_python_on_the_port_it_serves() -> None:
    web = SERVICES["web"]
    port = web["command"][web["command"].index("--port") + 1]
    test = web["healthcheck"]["test"]
    [published] = web["ports"]

    assert test[:3] == ["CMD", "python", "-c"]
    assert f"urllib.request.urlopen('http://127.0.0.1:{port}/healthz'" in test[3]
    assert "timeout=" in test[3]
    assert str(published).rsplit(":", 1)[1] == port
    assert duration_s(web["healthcheck"]["timeout"]) > 5
    assert web["healthcheck"]["retries"] >= 1
    compile(test[3], "healthcheck", "exec")


CLUSTER_NODES = ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
CLUSTER_APPS = {
    "cluster-worker": "worker",
    "cluster-chunk-worker": "chunk-worker",
    "cluster-beat": "beat",
}


def with_env_example(value: str) -> str:
    """``value`` with its ${VAR} (and ${VAR:?message}) filled in from .env.example."""
    values = dotenv_values(ENV_EXAMPLE)
    return re.sub(r"\$\{(\w+)(?::?[?-][^}]*)?\}", lambda m: values[m[1]] or "", value)


def test_cluster_profile_runs_three_clustered_nodes_postgres_and_the_app_on_them() -> None:
    profiled = {name for name, service in SERVICES.items() if "profiles" in service}
    conf = (ROOT / "docker" / "rabbitmq-cluster.conf").read_text()
    peers = re.findall(
        r"^cluster_formation\.classic_config\.nodes\.\d+ = rabbit@(\S+)$", conf, re.M
    )
    node_volumes = [SERVICES[name]["volumes"] for name in CLUSTER_NODES]

    assert profiled == {*CLUSTER_NODES, "postgres", *CLUSTER_APPS}
    assert all(SERVICES[name]["profiles"] == ["cluster"] for name in profiled)
    assert "cluster_formation.peer_discovery_backend = classic_config" in conf
    assert peers == CLUSTER_NODES
    for name, volumes in zip(CLUSTER_NODES, node_volumes, strict=True):
        node = SERVICES[name]
        assert node["hostname"] == name
        assert node["image"] == SERVICES["rabbitmq"]["image"]
        assert (
            "./docker/rabbitmq-cluster.conf:/etc/rabbitmq/conf.d/90-batchapp-cluster.conf:ro"
            in volumes
        )
        assert '$$ERLANG_COOKIE" > /var/lib/rabbitmq/.erlang.cookie' in node["entrypoint"][-1]
        assert node["environment"]["ERLANG_COOKIE"].startswith("${RABBITMQ_ERLANG_COOKIE:?")
        assert "rabbitmq-diagnostics" in node["healthcheck"]["test"]
    # Each node keeps its own data; the second and third join the first once it is up.
    assert len({volumes[-1] for volumes in node_volumes}) == 3
    for name in CLUSTER_NODES[1:]:
        assert SERVICES[name]["depends_on"]["rabbitmq-1"]["condition"] == "service_healthy"


def test_cluster_profile_apps_get_every_node_quorum_queues_and_postgresql() -> None:
    for name, twin in CLUSTER_APPS.items():
        service = SERVICES[name]
        environment = {
            key: with_env_example(value) for key, value in service["environment"].items()
        }
        settings = load(environment)
        hosts = [urlsplit(url).hostname for url in settings.broker_url.split(";")]

        assert hosts == CLUSTER_NODES
        assert settings.queue_type == "quorum"
        assert make_url(settings.database_url).host == "postgres"
        assert settings.result_backend == f"db+{settings.database_url}"
        assert service["command"] == SERVICES[twin]["command"]
        assert set(service["depends_on"]) == {*CLUSTER_NODES, "postgres"}
        assert all(dep["condition"] == "service_healthy" for dep in service["depends_on"].values())
    assert SERVICES["cluster-beat"].get("deploy", {}).get("replicas", 1) == 1


def test_cluster_profile_secrets_are_required_and_placeholders() -> None:
    values = dotenv_values(ENV_EXAMPLE)

    for name in ("RABBITMQ_ERLANG_COOKIE", "POSTGRES_PASSWORD"):
        assert f"${{{name}:?" in COMPOSE_TEXT
        assert values[name] and "change-me" in values[name]
