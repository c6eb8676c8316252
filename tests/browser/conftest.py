"""Browser-test fixtures: the playground serving the real model (one server per test session), Debian
chromium through Playwright, and a fresh 1280x800 page that records requests leaving the server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser.waits import UI_TIMEOUT_MS

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT_S = 240  # fetching/converting on first use plus loading takes a while


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The playground serving the real model on a free port; killed (with its children) at teardown."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium to run browser tests")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("app") / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(port), "--model", "qwen2.5-coder-0.5b"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches every child
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with code {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not serve {url} in {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


@pytest.fixture(scope="session")
def browser(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the app; records every request that leaves the server (there must be none)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
    context.set_default_timeout(UI_TIMEOUT_MS)  # every click and fill: a busy page on a slow machine
    pg = context.new_page()
    origin = server.rstrip("/")
    pg.outside_requests = []
    pg.on(
        "request",
        lambda r: None if r.url.startswith((origin, "data:", "blob:")) else pg.outside_requests.append(r.url),
    )
    pg.goto(server)
    pg.wait_for_selector("#chat-input textarea")
    yield pg
    context.close()
