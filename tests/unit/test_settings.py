"""Settings: BATCHAPP_* variables become Celery 5 settings, and bad values fail by name.

tests/integration/test_settings.py starts worker and beat with bad settings, and drops a
worker's broker connection under running chunks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchapp.settings import SettingsError, celery_config, load


def test_defaults_are_json_only_seoul_and_sqlite_results_in_the_data_dir(tmp_path: Path) -> None:
    settings = load({"BATCHAPP_DATA_DIR": str(tmp_path)})
    config = celery_config(settings)

    assert config["broker_url"] == "amqp://guest:guest@localhost:5672//"
    assert config["result_backend"] == f"db+sqlite:///{tmp_path / 'results.sqlite'}"
    assert settings.database_url == f"sqlite:///{tmp_path / 'batchapp.sqlite'}"
    assert config["accept_content"] == ["json"]
    assert config["result_accept_content"] == ["json"]
    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["timezone"] == "Asia/Seoul"
    assert config["enable_utc"] is True
    assert config["beat_scheduler"] == "batchapp.beat.scheduler:LeaderScheduler"


def test_every_celery_setting_is_a_lowercase_name(tmp_path: Path) -> None:
    config = celery_config(load({"BATCHAPP_DATA_DIR": str(tmp_path)}))

    assert all(name == name.lower() for name in config)


def test_default_data_dir_does_not_depend_on_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = load({"HOME": "/home/someone"}).data_dir
    monkeypatch.chdir("/")
    assert (
        load({"HOME": "/home/someone"}).data_dir
        == first
        == Path("/home/someone/.local/share/batchapp")
    )


def test_dotenv_fills_in_but_does_not_override_the_real_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("BATCHAPP_TIMEZONE=Europe/Paris\nBATCHAPP_BEAT_INTERVAL=5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BATCHAPP_TIMEZONE", "Asia/Tokyo")
    monkeypatch.delenv("BATCHAPP_BEAT_INTERVAL", raising=False)
    try:
        settings = load()
    finally:
        os.environ.pop("BATCHAPP_BEAT_INTERVAL", None)

    assert settings.timezone == "Asia/Tokyo"
    assert settings.beat_interval == 5.0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "BATCHAPP_BROKER_URL",
            "localhost:5672",
            "BATCHAPP_BROKER_URL: 'localhost:5672' is not a URL",
        ),
        ("BATCHAPP_BROKER_URL", "kafka://x", "unsupported broker scheme 'kafka'"),
        ("BATCHAPP_BROKER_URL", "amqp://u:pw@host:notaport//", "BATCHAPP_BROKER_URL"),
        ("BATCHAPP_RESULT_BACKEND", "db+nosuch://x", "unsupported database"),
        ("BATCHAPP_RESULT_BACKEND", "mongo://x", "unsupported result backend"),
        ("BATCHAPP_DATABASE_URL", "not a url", "BATCHAPP_DATABASE_URL"),
        ("BATCHAPP_TIMEZONE", "Mars/Olympus", "unknown timezone 'Mars/Olympus'"),
        ("BATCHAPP_BEAT_INTERVAL", "-1", "expected a positive float, got '-1'"),
        ("BATCHAPP_PREFETCH_MULTIPLIER", "two", "expected a positive int, got 'two'"),
        ("BATCHAPP_BEAT_INTERVAL", "1e-9", "'1e-9' is too small (at least 0.5 seconds)"),
        ("BATCHAPP_BEAT_INTERVAL", "nan", "expected a positive float, got 'nan'"),
        ("BATCHAPP_BEAT_INTERVAL", "inf", "'inf' is too large"),
        ("BATCHAPP_TASK_SOFT_TIME_LIMIT", "inf", "'inf' is too large"),
        ("BATCHAPP_TASK_SOFT_TIME_LIMIT", "1e300", "'1e300' is too large"),
        ("BATCHAPP_TASK_TIME_LIMIT", "-inf", "expected a positive float, got '-inf'"),
        ("BATCHAPP_RESULT_EXPIRES", "10" + "0" * 20, "is too large"),
        ("BATCHAPP_LEDGER_RETENTION_DAYS", "99999999999", "is too large"),
        ("BATCHAPP_TASK_EVENTS", "maybe", "expected true or false, got 'maybe'"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_problem(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        load({name: value})

    assert message in str(raised.value)
    assert str(raised.value).startswith(name)


def test_passwords_never_appear_in_setting_errors() -> None:
    with pytest.raises(SettingsError) as raised:
        load({"BATCHAPP_BROKER_URL": "amqp://user:s3cret@host:bad//"})

    assert "s3cret" not in str(raised.value)


def test_hard_time_limit_must_exceed_soft_limit() -> None:
    with pytest.raises(SettingsError, match="must be greater than"):
        load({"BATCHAPP_TASK_SOFT_TIME_LIMIT": "60", "BATCHAPP_TASK_TIME_LIMIT": "30"})


def test_filesystem_broker_keeps_its_folders_in_the_data_dir(tmp_path: Path) -> None:
    settings = load({"BATCHAPP_DATA_DIR": str(tmp_path), "BATCHAPP_BROKER_URL": "filesystem://"})
    options = celery_config(settings)["broker_transport_options"]

    assert options["data_folder_in"] == str(tmp_path / "broker" / "queue")
    assert options["data_folder_out"] == options["data_folder_in"]


def test_beat_interval_setting_shortens_the_every_minute_entries(tmp_path: Path) -> None:
    schedule = celery_config(
        load({"BATCHAPP_DATA_DIR": str(tmp_path), "BATCHAPP_BEAT_INTERVAL": "2"})
    )["beat_schedule"]

    assert schedule["calculate-sum"]["schedule"].total_seconds() == 2
    assert schedule["calculate-sum"]["args"] == (100,)
    assert all("expires" in entry["options"] for entry in schedule.values())


def test_beat_interval_accepts_its_minimum() -> None:
    assert load({"BATCHAPP_BEAT_INTERVAL": "0.5"}).beat_interval == 0.5


@pytest.mark.parametrize(("value", "on"), [("true", True), ("1", True), ("off", False)])
def test_task_events_setting_turns_worker_and_sent_events_on_together(
    value: str, on: bool, tmp_path: Path
) -> None:
    config = celery_config(
        load({"BATCHAPP_DATA_DIR": str(tmp_path), "BATCHAPP_TASK_EVENTS": value})
    )

    assert config["worker_send_task_events"] is config["task_send_sent_event"] is on


def test_postgresql_without_psycopg_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *_: None)
    with pytest.raises(SettingsError) as raised:
        load({"BATCHAPP_DATABASE_URL": "postgresql://batchapp@db/batchapp"})

    assert str(raised.value) == (
        "BATCHAPP_DATABASE_URL: postgresql needs psycopg 3, which is not installed: "
        "pip install 'batchapp[postgres]'"
    )
