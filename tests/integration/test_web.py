"""``batchapp web`` as a user meets it: a real server process, a real worker and ledger, and
headless Chromium (OS packages) driven by Selenium through the packaged chromedriver.

Set ``WEB_SCREENSHOTS_DIR=docs`` to write the README's screenshots there; otherwise they go to
the run's data folder (and are made all the same, so a broken page shows up here).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.integration.conftest import RUN_DATA_DIR, Stack
from tests.support import run_cli, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WEB_JOBS = {"BATCHAPP_JOBS": "tests.web_jobs"}
HOSTILE = "<script>alert(1)</script>"
# The machine is shared and loaded: waits are generous, and none of them is a fixed sleep.
TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WebServer:
    """One ``batchapp web`` process on a free loopback port, stopped by its fixture."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = RUN_DATA_DIR / "logs" / f"web-{uuid.uuid4().hex[:6]}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                [str(Path(sys.executable).parent / "batchapp"), "web", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._answers, f"batchapp web on {self.url} (log {self.log})", TIMEOUT)

    def _answers(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(f"batchapp web exited: {self.log.read_text()[-2000:]}")
        try:
            return self.get("/api/job-types") is not None
        except OSError:
            return False

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.load(response)

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture(scope="module")
def env(stack: Stack) -> dict[str, str]:
    return {**stack.env, **WEB_JOBS}


@pytest.fixture(scope="module")
def worker(stack: Stack) -> None:
    stack.worker(concurrency=2, **WEB_JOBS)


@pytest.fixture(scope="module")
def web(env: dict[str, str], worker: None) -> Iterator[WebServer]:
    server = WebServer(env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("needs apt-get install -y chromium chromium-driver (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def submit(env: dict[str, str], *params: str) -> str:
    done = run_cli("submit", "web.slow", *params, "--json", env=env)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["id"])


def text_of(browser: webdriver.Chrome, element_id: str, by: str = By.ID) -> str:
    """The element's text; '' while the page changes under it (a click, a run that ends)."""
    try:
        return str(browser.find_element(by, element_id).text)
    except (StaleElementReferenceException, NoSuchElementException):
        return ""


def chunks_done(browser: webdriver.Chrome) -> int:
    return int(text_of(browser, "chunks-done") or 0)


def click(browser: webdriver.Chrome, element_id: str) -> None:
    browser.find_element(By.ID, element_id).click()


def test_a_job_submitted_in_the_form_shows_its_progress_moving(
    web: WebServer, browser: webdriver.Chrome
) -> None:
    browser.get(f"{web.url}/submit")
    Select(browser.find_element(By.ID, "job")).select_by_value("web.slow")
    browser.find_element(By.ID, "params").send_keys("n=30\nms=400")
    click(browser, "submit")
    wait_until(
        lambda: text_of(browser, "h1", By.TAG_NAME) == "Submit web.slow?",
        "the confirmation",
        TIMEOUT,
    )
    click(browser, "confirm")
    wait_until(lambda: "/jobs/" in browser.current_url, "the job's page", TIMEOUT)
    browser.execute_script("window.notReloaded = true")
    job_id = browser.current_url.split("/jobs/")[1].split("?")[0]
    assert web.get(f"/api/jobs/{job_id}")["params"] == {"n": 30, "ms": 400, "fail": 0, "note": "-"}

    first = wait_until(lambda: chunks_done(browser) or None, "a first chunk on screen", TIMEOUT)
    wait_until(lambda: chunks_done(browser) > first, "more chunks on screen", TIMEOUT)

    assert browser.execute_script("return window.notReloaded") is True  # moved by the poll
    assert text_of(browser, "status") == "running"
    assert "items/s" in text_of(browser, "rate")
    wait_until(lambda: text_of(browser, "status") == "succeeded", "the job to finish", TIMEOUT)


def test_a_hostile_parameter_and_error_show_as_text(
    env: dict[str, str], web: WebServer, browser: webdriver.Chrome
) -> None:
    job_id = submit(env, "n=2", "fail=2", f"note={HOSTILE}")
    wait_until(lambda: web.get(f"/api/jobs/{job_id}")["status"] == "failed", "a failure", TIMEOUT)

    browser.get(f"{web.url}/jobs/{job_id}")

    note = browser.find_element(By.XPATH, "//table[@id='params']//tr[th='note']/td")
    assert note.text == HOSTILE
    assert "<b>number 2 fails on purpose</b>" in text_of(browser, "errors")
    assert not browser.find_elements(By.CSS_SELECTOR, "#params script, #errors b")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 (reading it is the check)


def test_cancel_and_retry_work_through_the_buttons(
    env: dict[str, str], web: WebServer, browser: webdriver.Chrome
) -> None:
    job_id = submit(env, "n=40", "ms=500")
    browser.get(f"{web.url}/jobs/{job_id}")
    wait_until(lambda: chunks_done(browser) > 0, "the job to start", TIMEOUT)

    click(browser, "cancel")
    click(browser, "confirm")
    wait_until(lambda: text_of(browser, "status") == "cancelled", "the cancel", TIMEOUT)
    assert web.get(f"/api/jobs/{job_id}")["chunks"]["cancelled"] > 0

    click(browser, "retry")
    click(browser, "confirm")
    wait_until(lambda: text_of(browser, "status") == "succeeded", "the retried job", TIMEOUT)

    runs = browser.find_elements(By.CSS_SELECTOR, "#executions tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in runs] == ["submit", "retry"]
    assert web.get(f"/api/jobs/{job_id}")["result"] == sum(range(1, 41))


def test_the_api_gives_the_cli_json_of_a_real_job_and_the_worker(
    env: dict[str, str], web: WebServer
) -> None:
    job_id = submit(env, "n=3", "--wait")

    status = run_cli("status", job_id, "--json", env=env)

    assert web.get(f"/api/jobs/{job_id}") == json.loads(status.stdout)
    workers = web.get("/api/workers")
    assert any(w["name"].startswith("w1@") for w in workers["workers"])
    assert {q["name"] for q in workers["queues"]} >= {"batchapp.chunks"}


def test_the_workers_and_dead_letters_pages_show_what_the_broker_tells(
    web: WebServer, browser: webdriver.Chrome
) -> None:
    browser.get(f"{web.url}/workers")
    workers = text_of(browser, "workers")
    queues = text_of(browser, "queues")
    browser.get(f"{web.url}/dead-letters")

    assert "w1@" in workers and "batchapp.chunks" in workers
    assert "batchapp.chunks" in queues
    assert "dead letter(s) in batchapp.dead" in text_of(browser, "count")


def test_screenshots_of_the_job_list_and_a_job_page(
    env: dict[str, str], web: WebServer, browser: webdriver.Chrome
) -> None:
    folder = Path(os.environ.get("WEB_SCREENSHOTS_DIR") or RUN_DATA_DIR / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    job_id = submit(env, "n=60", "ms=300", "fail=7", "note=nightly rerun")
    browser.get(f"{web.url}/jobs/{job_id}")
    wait_until(lambda: chunks_done(browser) >= 20, "a job part done", TIMEOUT)
    shot = folder / "web-job.png"
    assert browser.save_screenshot(str(shot)), shot

    browser.get(f"{web.url}/jobs")
    assert browser.save_screenshot(str(folder / "web-jobs.png"))
    assert (folder / "web-jobs.png").stat().st_size > 10_000
    run_cli("cancel", job_id, env=env)
