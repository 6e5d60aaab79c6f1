"""The board in a real browser (Debian's Chromium, headless), against a fake batch that changes
as the test goes: the columns, the live log, the actions, the refusals, hostile content, and the
layout at 400 and 1400 px, of which the run takes screenshots: in a folder of its own, checked and
left there; in docs/screenshots/, the README's, with ORCH_TEST_SCREENSHOTS=1 (Chromium's rendering
changes a few bytes from one run to the next: a test that rewrote the committed images each time
would leave every checkout changed).

Every wait polls the page for a condition with a deadline (Page.wait_for); none sleeps."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestrator.control.board import BOARD_STATES, FileChange, MergeOutcome, MergeSummary, TaskDiff, first_line
from orchestrator.control.dashboard import Dashboard
from tests.support.browser import Browser, Page, open_page
from tests.support.fake_board import MERGE_WITH_A_CONFLICT, FakeBoard
from tests.support.paths import ROOT

SCREENSHOTS = ROOT / "docs" / "screenshots"
UPDATE_SCREENSHOTS = os.environ.get("ORCH_TEST_SCREENSHOTS") == "1"  # read now: the tests clear the project's
REBIND_HOST = "rebind.test"  # resolves to 127.0.0.1 in this browser: a DNS rebinding, simulated
CARD_COLUMNS = (
    "Object.fromEntries([...document.querySelectorAll('.card')]"
    ".map(card => [card.dataset.id, card.closest('.column').dataset.state]))"
)
# What the page's own code must never create from content: elements that run or load something.
LIVE_ELEMENTS = (
    "document.querySelectorAll('main script, main img, main svg, main iframe, main object, main embed,"
    ' [onerror], [onload], [onclick], a[href^="javascript:" i]\').length'
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser(extra_flags=[f"--host-resolver-rules=MAP {REBIND_HOST} 127.0.0.1"]) as running:
        yield running


@contextmanager
def logged_in(browser: Browser, board: Dashboard, width: int = 1400) -> Iterator[Page]:
    """A page of a browser context of its own, logged in through the printed login URL, on the board."""
    with open_page(browser, width) as page:
        page.navigate(board.login_url)
        page.wait_for("location.pathname === '/' && document.body.dataset.ready === 'true'")
        yield page


def open_task(page: Page, board: Dashboard, task_id: str) -> None:
    page.navigate(f"{board.url}tasks/{task_id}")
    page.wait_for("document.body.dataset.ready === 'true'")


def text_of(page: Page, selector: str) -> str:
    return str(page.evaluate(f"document.querySelector({json.dumps(selector)}).textContent"))


def problems(page: Page) -> list[str]:
    """Errors the page met: exceptions, console errors, Content-Security-Policy violations."""
    return [line for line in page.console() if "error" in line.lower() or "exception" in line.lower()]


def test_each_task_is_in_its_states_column_and_moves_there_live(
    browser: Browser, board: Dashboard, backend: FakeBoard
) -> None:
    with logged_in(browser, board) as page:
        assert page.evaluate("location.hash") == ""  # the secret left the address bar
        page.wait_for("document.querySelectorAll('.card').length === 11")
        assert page.evaluate(CARD_COLUMNS) == {card.id: card.state for card in backend.cards.values()}
        shown = page.evaluate("[...document.querySelectorAll('.column:not([hidden])')].map(c => c.dataset.state)")
        assert shown == list(BOARD_STATES)
        totals = text_of(page, "#totals")
        assert "$5.27 of $10.00" in totals and "2 of 4" in totals and "ok" in totals
        # The focus goes through the buttons, then the cards column by column.
        order = []
        for _ in range(5):
            page.press("Tab")
            order.append(page.evaluate("document.activeElement.id || document.activeElement.textContent"))
        assert order == ["merge", "logout", "task-006", "task-003", "task-001"]

        page.evaluate("window.sameDocument = true")
        backend.change("task-005", state="running", seconds=2.0, turns=1)
        backend.add("task-012", "queued", "Add a changelog entry", depends_on=("task-005",))
        backend.rate_limit = "backing off for 6 s"
        page.wait_for(
            "document.querySelector('.column[data-state=running] .card[data-id=\"task-005\"]') !== null"
            " && document.querySelector('.column[data-state=queued] .card[data-id=\"task-012\"]') !== null"
            " && document.getElementById('totals').textContent.includes('backing off for 6 s')"
        )
        assert page.evaluate("window.sameDocument") is True  # no reload
        assert "task-005 is now Running." in text_of(page, "#announce")
        backend.change("task-006", state="cancelled")
        page.wait_for("document.querySelector('.column[data-state=submitted]').hidden")  # an empty column collapses
        assert problems(page) == []


def test_a_log_line_appears_on_the_task_page_as_it_is_written(
    browser: Browser, board: Dashboard, backend: FakeBoard
) -> None:
    with logged_in(browser, board) as page:
        open_task(page, board, "task-002")
        page.wait_for("document.getElementById('log').textContent.includes('flutter analyze: no issues found')")
        page.evaluate("window.sameDocument = true")
        backend.add_log("task-002", "agent: running flutter test\n")
        page.wait_for("document.getElementById('log').textContent.includes('agent: running flutter test\\n')")
        backend.add_log("task-002", "agent: 42 tests passed\n")
        backend.change("task-002", state="success", seconds=190.0, turns=14, branch="orchestrator/task-002")
        page.wait_for(
            "document.getElementById('log').textContent.endsWith('agent: 42 tests passed\\n')"
            " && document.getElementById('task-state').textContent === 'Success'"
            " && document.getElementById('log-state').textContent.includes('whole log')"
        )
        assert page.evaluate("window.sameDocument") is True
        log = text_of(page, "#log")
        assert log == backend.logs["task-002"].decode()  # each line once, in order
        assert "orchestrator/task-002" in text_of(page, "#result-fields")
        assert problems(page) == []


def test_cancel_and_retry_from_the_task_page_call_the_backend(
    browser: Browser, board: Dashboard, backend: FakeBoard
) -> None:
    with logged_in(browser, board) as page:
        open_task(page, board, "task-002")
        assert page.evaluate("document.getElementById('retry').hidden") is True
        page.click("#cancel")
        page.wait_for("document.getElementById('action-status').textContent === 'task-002: cancelled'")
        assert backend.actions("cancel") == ["task-002"]
        page.wait_for("document.getElementById('task-state').textContent === 'Cancelled'")
        assert page.evaluate("document.getElementById('cancel').hidden") is True
        page.click("#retry")
        page.wait_for("document.getElementById('action-status').textContent.startsWith('task-002: queued again')")
        assert backend.actions("retry") == ["task-002"]
        page.wait_for("document.getElementById('task-state').textContent === 'Queued'")
        assert problems(page) == []


def test_log_out_from_the_page_ends_the_session(browser: Browser, board: Dashboard, backend: FakeBoard) -> None:
    with logged_in(browser, board) as page:
        # about:blank, then the board: the entry of the login URL, with its secret, was replaced.
        assert page.evaluate("history.length") == 2
        page.click("#logout")
        page.wait_for("location.pathname === '/login'")
        assert page.evaluate("fetch('/api/board').then(r => r.status)") == 401
        page.navigate(board.url + "tasks/task-001")
        assert page.evaluate("location.pathname") == "/login"


def test_merge_from_the_board_shows_the_conflicts(browser: Browser, board: Dashboard, backend: FakeBoard) -> None:
    backend.merge_summary = MERGE_WITH_A_CONFLICT
    with logged_in(browser, board) as page:
        page.click("#merge")
        page.wait_for("!document.getElementById('merge-report').hidden")
        assert backend.actions("merge") == [""]
        outcomes = page.evaluate("[...document.querySelectorAll('#merge-outcomes > li')].map(li => li.textContent)")
        assert outcomes == [
            "task-001 merged",
            "task-002 conflictlib/theme.dartlib/main.dart",
            "task-004 not merged — it ended failed",
        ]
        assert "Into orchestrator/integration: 1 merged, 1 conflict, 1 not merged." in text_of(page, "#merge-summary")
        assert page.evaluate("document.activeElement.id") == "merge-title"
        assert problems(page) == []


def test_many_task_tabs_leave_the_board_its_connection(browser: Browser, board: Dashboard, backend: FakeBoard) -> None:
    # A browser opens at most six connections to a host; a task page that held one open (an event
    # stream) would leave the seventh tab, and the board, waiting. The board's tab, hidden behind
    # the others, lets go of its stream, and takes the board whole when it is shown again.
    with logged_in(browser, board) as page:
        tabs = [browser.new_page(beside=page) for _ in range(8)]
        try:
            for tab, task in zip(tabs, ("task-001", "task-002", "task-004", "task-005", "task-008", "task-009",
                                        "task-010", "task-011"), strict=True):  # fmt: skip
                open_task(tab, board, task)
            assert page.evaluate("document.visibilityState") == "hidden"
            backend.add_log("task-002", "agent: still here\n")
            backend.change("task-006", state="queued")
            backend.change("task-011", state="queued")
            tabs[-1].wait_for("document.getElementById('task-state').textContent === 'Queued'")
            tabs[1].wait_for("document.getElementById('log').textContent.includes('agent: still here')")
            page.bring_to_front()
            page.wait_for("document.querySelector('.column[data-state=queued] .card[data-id=\"task-006\"]') !== null")
        finally:
            for tab in tabs:
                tab.close()


class AttackPage(BaseHTTPRequestHandler):
    """A page of another origin on the same machine (the same *site* as the board: 127.0.0.1)
    that tries to cancel a task with the browser's session."""

    target = ""

    def do_GET(self) -> None:
        cancel = json.dumps(f"{self.target}/api/tasks/task-002/cancel")
        body = f"""<!doctype html><title>cats</title>
<form id="f" method="POST" action={cancel}></form>
<script>
const tries = [
  fetch({cancel}, {{method: "POST", mode: "no-cors", credentials: "include", headers: {{"X-CSRF-Token": "guess"}}}}),
  fetch({cancel}, {{method: "POST", mode: "cors", credentials: "include", headers: {{"X-CSRF-Token": "guess"}}}}),
  fetch({json.dumps(self.target + "/api/board")}, {{credentials: "include"}}).then(r => r.text()),
];
Promise.allSettled(tries).then(results => {{
  window.results = results.map(r => r.status + ":" + (r.reason || (typeof r.value === "string" ? r.value : "")));
  document.title = "tried";
}});
</script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_requests_without_the_session_or_the_token_are_refused(
    browser: Browser, board: Dashboard, backend: FakeBoard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="orchestrator.control.dashboard")
    with open_page(browser) as stranger:
        stranger.navigate(board.url)
        stranger.wait_for("location.pathname === '/login'")
        assert stranger.evaluate("fetch('/api/board').then(r => r.status)") == 401
        assert stranger.evaluate("fetch('/static/app.js').then(r => r.status)") == 401
        stranger.type("#secret", "not-the-secret")
        stranger.click("button[type=submit]")
        stranger.wait_for("document.getElementById('login-status').textContent === \"that is not the board's secret\"")
        stranger.navigate(f"http://{REBIND_HOST}:{board.origin.rsplit(':', 1)[1]}/login")
        assert "this board answers only at" in text_of(stranger, "body")

    cancel = "'/api/tasks/task-002/cancel'"
    with logged_in(browser, board) as page:
        assert page.evaluate(f"fetch({cancel}, {{method: 'POST'}}).then(r => r.status)") == 403
        wrong = f"fetch({cancel}, {{method: 'POST', headers: {{'X-CSRF-Token': 'wrong'}}}}).then(r => r.status)"
        assert page.evaluate(wrong) == 403
        assert backend.actions("cancel") == []

        attacker = ThreadingHTTPServer(("127.0.0.1", 0), type("Attack", (AttackPage,), {"target": board.origin}))
        threading.Thread(target=attacker.serve_forever, daemon=True).start()
        try:
            page.navigate(f"http://127.0.0.1:{attacker.server_address[1]}/")
            page.wait_for("document.title === 'tried'")
            # Not one answer can the page read (no CORS, and Cross-Origin-Resource-Policy for no-cors).
            results = page.evaluate("window.results")
            assert [result.split(":")[:2] for result in results] == [["rejected", "TypeError"]] * 3
            page.evaluate("document.getElementById('f').submit()")
            page.wait_for(f"location.origin === {json.dumps(board.origin)}")
            assert json.loads(text_of(page, "body")) == {"error": "a request from another origin"}
        finally:
            attacker.shutdown()
            attacker.server_close()
        assert backend.actions("cancel") == []
        # They did reach the board, which refused them: the no-cors fetch and the form (403), the preflight (501).
        answered = [record.getMessage() for record in caplog.records if record.name == "orchestrator.control.dashboard"]
        assert answered.count("POST /api/tasks/task-002/cancel 403") == 2 + 2  # the two above, and these two
        assert "OPTIONS /api/tasks/task-002/cancel 501" in answered

        # The same request, with the session's token, from the board's own page: accepted.
        page.navigate(board.url)
        page.wait_for("document.body.dataset.ready === 'true'")
        token = page.evaluate("fetch('/api/session').then(r => r.json()).then(s => s.csrf)")
        right = f"{{method: 'POST', headers: {{'X-CSRF-Token': {json.dumps(token)}}}}}"
        assert page.evaluate(f"fetch({cancel}, {right}).then(r => r.status)") == 200
        assert backend.actions("cancel") == ["task-002"]


PAYLOAD = (
    '<script>window.pwned = "script"</script>'
    "<img src=x onerror=\"window.pwned = 'img'\">"
    "<a href=\"javascript:window.pwned = 'link'\">click me</a>"
    "<svg onload=\"window.pwned = 'svg'\"></svg>"
    '<iframe srcdoc="<script>parent.pwned = 1</script>"></iframe>'
)


def hostile_task(backend: FakeBoard) -> None:
    backend.add(
        "task-666", "failed", f"Fix {PAYLOAD}\nand {PAYLOAD}\u202e evil",
        output=f"Done. {PAYLOAD}", started_at="2025-06-01T09:00:00Z", seconds=5.0, turns=1, cost_usd=0.01,
        branch=f"orchestrator/{PAYLOAD}", note=f"error: {PAYLOAD}",
    )  # fmt: skip
    backend.add_log("task-666", f"agent: {PAYLOAD}\n\x1b[31mred\x1b[0m {PAYLOAD}\n")
    backend.diffs["task-666"] = TaskDiff(
        files=(FileChange(f"lib/{PAYLOAD}.dart", 1, 1),),
        diff=f"--- a/lib/x.dart\n+++ b/lib/x.dart\n@@ -1 +1 @@\n-old {PAYLOAD}\n+new {PAYLOAD}\n",
    )
    backend.egress_records["task-666"] = [{"host": PAYLOAD, PAYLOAD: "value"}]
    backend.merge_summary = MergeSummary(
        into=f"orchestrator/{PAYLOAD}",
        outcomes=(MergeOutcome("task-666", "conflict", files=(PAYLOAD,), message=PAYLOAD),),
        message=PAYLOAD,
    )


def test_hostile_content_is_shown_as_text_and_runs_nothing(
    browser: Browser, board: Dashboard, backend: FakeBoard
) -> None:
    hostile_task(backend)
    with logged_in(browser, board) as page:
        page.wait_for("document.querySelector('.card[data-id=\"task-666\"]') !== null")
        card = '.card[data-id="task-666"]'
        assert text_of(page, f"{card} .title") == first_line(f"Fix {PAYLOAD}")  # cut to 200 characters
        assert text_of(page, f"{card} .branch") == f"orchestrator/{PAYLOAD}"
        assert text_of(page, f"{card} .note") == f"error: {PAYLOAD}"
        page.click("#merge")
        page.wait_for("!document.getElementById('merge-report').hidden")
        assert text_of(page, "#merge-report").count(PAYLOAD) == 4  # into, message, file, outcome's message
        assert page.evaluate(LIVE_ELEMENTS) == 0
        assert page.evaluate("typeof window.pwned") == "undefined"

        open_task(page, board, "task-666")
        page.wait_for("document.getElementById('log').textContent.includes('red ')")
        assert text_of(page, "#prompt") == f"Fix {PAYLOAD}\nand {PAYLOAD}⟨U+202E⟩ evil"
        assert text_of(page, "#output") == f"Done. {PAYLOAD}"
        assert text_of(page, "#log") == f"agent: {PAYLOAD}\nred {PAYLOAD}\n"  # the colours stripped
        assert text_of(page, "#error") == f"error: {PAYLOAD}"
        assert f"orchestrator/{PAYLOAD}" in text_of(page, "#result-fields")
        assert page.evaluate("[...document.querySelectorAll('#diff .line')].map(l => l.className)") == [
            "line meta", "line meta", "line hunk", "line del", "line add",
        ]  # fmt: skip
        assert f"+new {PAYLOAD}\n" in text_of(page, "#diff")
        assert f"lib/{PAYLOAD}.dart" in text_of(page, "#diff-files")
        assert text_of(page, "#egress").count(PAYLOAD) == 2
        # A person clicks where the link would be: nothing but text is there.
        page.click("#output")
        assert page.evaluate(LIVE_ELEMENTS) == 0
        assert page.evaluate("typeof window.pwned") == "undefined"
        assert problems(page) == []  # not even a script the CSP had to stop


@pytest.mark.parametrize("width", [400, 1400])
def test_the_pages_fit_the_window_and_screenshots_are_written(
    browser: Browser, board: Dashboard, backend: FakeBoard, width: int, tmp_path: Path
) -> None:
    fits = "document.documentElement.scrollWidth <= window.innerWidth"
    folder = SCREENSHOTS if UPDATE_SCREENSHOTS else tmp_path
    written: list[Path] = []
    for scheme in ("light", "dark") if width == 1400 else ("light",):
        suffix = "" if scheme == "light" else "-dark"
        with open_page(browser, width) as page:
            page.color_scheme(scheme)
            page.navigate(board.login_url)
            page.wait_for("document.querySelectorAll('.card').length === 11")
            assert page.evaluate(fits), f"the board is wider than {width} px"
            written.append(folder / f"board-{width}{suffix}.png")
            page.screenshot(written[-1])
            open_task(page, board, "task-001")
            page.wait_for("document.getElementById('log-state').textContent.includes('whole log')")
            page.wait_for("!document.getElementById('egress-section').hidden")
            assert page.evaluate(fits), f"the task page is wider than {width} px"
            written.append(folder / f"task-{width}{suffix}.png")
            page.screenshot(written[-1])
            assert problems(page) == []
    for path in written:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert int.from_bytes(data[16:20], "big") == width  # the PNG's width, from its IHDR chunk
        print(f"{path}: {int.from_bytes(data[16:20], 'big')}x{int.from_bytes(data[20:24], 'big')}")
        # The README shows the committed one of each: it is there, and of the same width.
        committed = (SCREENSHOTS / path.name).read_bytes()
        assert committed.startswith(b"\x89PNG\r\n\x1a\n") and committed[16:20] == data[16:20]
