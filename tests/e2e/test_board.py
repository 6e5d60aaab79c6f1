"""The board of a real batch, in a real browser: run.py on a Docker network of the tests' own (as a
person's orchestration runs on Docker's default network), its control plane serving the board on
a port published on the host's loopback, and headless Chromium (tests/support/browser.py) logged
in through the link run.py printed. The tasks show, a line the worker prints shows on its task's
page, a task's diff comes from the mirror, a running task is cancelled from its page; requests
without the secret, and the manager's asking for it, are refused; the control plane restarted,
the same link logs in again."""

from __future__ import annotations

import http.client
import json
import re
import uuid
from pathlib import Path

from tests.support.browser import Browser, Page, open_page
from tests.support.commands import sh
from tests.support.end_to_end import WORKER_IMAGE, Bridge, Run, busy_for, start_manager
from tests.support.git_servers import GitServer
from tests.support.scripted_api import bash, text, write
from tests.support.waiting import wait_until

CLONE = "/workspace/repo"
# A worker's try at the board from beside the control plane: a login with the secret.
NEIGHBOUR = """
import http.client, sys
ip, port, secret = sys.argv[1:]
try:
    c = http.client.HTTPConnection(ip, int(port), timeout=20)
    c.request("POST", "/login", body=secret.encode(), headers={"Host": f"127.0.0.1:{port}",
                                                                "Origin": f"http://127.0.0.1:{port}"})
    print(c.getresponse().status)
except (OSError, http.client.HTTPException):
    print("refused")
"""
LINK = re.compile(r"run\.py: the board: (http://127\.0\.0\.1:(\d+)/login#([A-Za-z0-9_-]+))")


def card_in(state: str, task_id: str) -> str:
    return f"document.querySelector('.column[data-state={state}] .card[data-id=\"{task_id}\"]') !== null"


def open_task(page: Page, origin: str, task_id: str) -> None:
    page.navigate(f"{origin}/tasks/{task_id}")
    page.wait_for("document.body.dataset.ready === 'true'", timeout=30)


def answer(port: int, method: str, path: str, body: bytes = b"", **headers: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers={"Host": f"127.0.0.1:{port}", **headers})
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_real_batch_on_the_board(bridge_run: Run, bridge: Bridge, bridge_git: GitServer, token_file: Path) -> None:
    run = bridge_run
    marker = f"board-{uuid.uuid4().hex[:8]}"
    repo = bridge_git.repo(f"board-{run.id}")
    manager = start_manager(run, repo, token_file, network=bridge.name)
    control = f"{run.manager}-control"
    try:
        found = LINK.search(manager.said())
        assert found, manager.said()
        link, port, secret = found[1], int(found[2]), found[3]
        origin = f"http://127.0.0.1:{port}"
        # The control plane says where the board is, never its secret; nor does its configuration.
        said = sh("docker", "logs", control)
        assert f"serving the board at {origin}/" in said.stdout + said.stderr
        assert secret not in said.stdout + said.stderr + sh("docker", "inspect", control).stdout
        published = json.loads(sh("docker", "inspect", "--format", "{{json .HostConfig.PortBindings}}", control).stdout)
        assert published == {f"{port}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}

        # The manager gets the address, not the link; the host gets the link again.
        address = manager.orch("dashboard")
        assert address.stdout.strip() == f"{origin}/" and secret not in address.stdout + address.stderr
        refused = manager.orch("dashboard", "--login", check=False)
        assert refused.returncode != 0 and secret not in refused.stdout + refused.stderr
        assert "the board's login link is the person's" in refused.stderr
        assert sh("docker", "exec", control, "orch", "dashboard", "--login").stdout.strip() == link

        # Without the secret: nothing but the login page.
        assert answer(port, "GET", "/api/board") == 401
        assert answer(port, "POST", "/login", b"not-the-secret", Origin=origin) == 403
        assert answer(port, "GET", "/api/board", Host=f"evil.example:{port}") == 403
        # A container on the control plane's network (where the workers are) is refused the board,
        # even with the host's Host and the secret: only the host reaches it.
        networks = sh("docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}", control).stdout
        control_ip = json.loads(networks)[bridge.name]["IPAddress"]
        beside = sh("docker", "run", "--rm", "--network", bridge.name, "--entrypoint", "python3", WORKER_IMAGE, "-c",
                    NEIGHBOUR, control_ip, str(port), secret, check=False)  # fmt: skip
        assert beside.stdout.strip() == "refused", beside.stdout + beside.stderr
        logged = sh("docker", "logs", control)
        assert "the board refused a connection from " in logged.stdout + logged.stderr  # it did reach it

        manager.orch("batch", "new", "Board")
        quick = manager.submit(run.prompt("quick", write(f"{CLONE}/notes/quick.txt", "quick\n"), text("wrote it")))
        long = manager.submit(run.prompt("long", bash(f"echo {marker} && {busy_for(600)}"), text("never")))
        manager.orch("start", "--all")

        with Browser() as browser, open_page(browser) as page:
            with open_page(browser) as stranger:
                stranger.navigate(f"{origin}/")
                stranger.wait_for("location.pathname === '/login'")
                assert stranger.evaluate("fetch('/api/board').then(r => r.status)") == 401
            page.navigate(link)
            page.wait_for("location.pathname === '/' && document.body.dataset.ready === 'true'", timeout=30)
            assert page.evaluate("location.hash") == ""
            page.wait_for(f"{card_in('success', quick)} && {card_in('running', long)}", timeout=240)
            totals = page.evaluate("document.getElementById('totals').textContent")
            assert "1 of 4" in totals, totals  # the worker running, against the dispatcher's limit

            # The quick task's diff, from the mirror.
            open_task(page, origin, quick)
            page.wait_for("document.getElementById('diff').textContent.includes('+quick')", timeout=60)
            assert "notes/quick.txt" in page.evaluate("document.getElementById('diff-files').textContent")

            # The long one's log, as its worker prints it; then it is cancelled from its page.
            open_task(page, origin, long)
            page.wait_for(f"document.getElementById('log').textContent.includes('-> Bash echo {marker}')", timeout=120)
            page.click("#cancel")
            page.wait_for("document.getElementById('task-state').textContent === 'Cancelled'", timeout=240)
            problems = [line for line in page.console() if "error" in line.lower() or "exception" in line.lower()]
            assert problems == []
        wait_until(lambda: manager.status()[long]["state"] == "cancelled", "orch status to say cancelled", 60)
        assert manager.result(long)["status"] == "cancelled"

        # The engine restarts the control plane (a reboot, docker restart): the same link logs in
        # again, on the same port; the wrong secret still does not.
        sh("docker", "restart", control)

        def logs_in() -> bool:
            try:
                return answer(port, "POST", "/login", secret.encode(), Origin=origin) == 204
            except (OSError, http.client.HTTPException):
                return False  # not serving yet

        wait_until(logs_in, lambda: "the board to serve again: " + sh("docker", "logs", "--tail", "20", control).stderr,
                   120)  # fmt: skip
        assert answer(port, "POST", "/login", b"not-the-secret", Origin=origin) == 403
    finally:
        manager.remove()
