"""The Smart Manager, end to end, as a person uses it: run.py on a terminal starts the real
Claude Code in the manager container; a request is typed into it; the scripted API answers
the manager with the commands its prompt teaches (orch submit, start, wait, merge) and each
worker's Claude Code with its part of the work; the manager's summary reaches the screen, and
the work reaches the repository as merged branches."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
from pathlib import Path

from tests.support.commands import sh
from tests.support.end_to_end import PREFIX, Run
from tests.support.git_servers import GitServer
from tests.support.paths import ROOT
from tests.support.scripted_api import bash, reply, text, write
from tests.support.waiting import wait_until

ANSI = re.compile(rb"\x1b\[[0-9;?<>=]*[a-zA-Z~]|\x1b[()][0-9A-B]|\x1b\][^\x07]*\x07|\x1b[=>78]")
REQUEST = "Add dark mode support to the app"


def screen_text(raw: bytes) -> str:
    """What the terminal showed, without escapes and white space (the TUI positions words with them)."""
    return re.sub(r"\s+", "", ANSI.sub(b"", raw).decode("utf-8", "replace"))


class Terminal:
    """run.py on a pseudo-terminal, as a person starts it."""

    def __init__(self, argv: list[str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.execvp(argv[0], argv)
        self.seen = b""

    def wait_for(self, words: str, timeout: float) -> None:
        """Read the screen until ``words`` (compared without white space) show; fails after
        ``timeout`` seconds, or at once when run.py ends first, showing the end of the screen."""
        wanted = re.sub(r"\s+", "", words)

        def shown() -> bool:
            still_open = self.read(within=1.0)
            if wanted in screen_text(self.seen):
                return True
            if not still_open:
                raise AssertionError(f"run.py ended before {words!r} showed:\n{screen_text(self.seen)[-2000:]}")
            return False

        wait_until(shown, lambda: f"{words!r} on the screen, which shows:\n{screen_text(self.seen)[-3000:]}", timeout)

    def read(self, within: float) -> bool:
        """All the terminal has shown, once something comes (or ``within`` seconds have passed);
        False once it is closed."""
        wait = within
        while select.select([self.fd], [], [], wait)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return False  # the terminal closed: run.py ended
            if not chunk:
                return False
            self.seen += chunk
            wait = 0  # the rest of what is there, without waiting for more
        return True

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def close(self) -> None:
        os.close(self.fd)
        os.waitpid(self.pid, 0)


def run_py_argv(run: Run, *options: str) -> list[str]:
    return ["python3", str(ROOT / "bin" / "run.py"), "--image-prefix", PREFIX, "--network", "host",
            "--api-url", run.api.url, "--volume", run.volume, "--name", run.manager, *options]  # fmt: skip


def test_no_dialog_blocks_a_fresh_manager(run: Run, token_file):
    terminal = Terminal(run_py_argv(run, "--no-repo", "--token", str(token_file)))
    try:
        terminal.wait_for("bypass permissions on", timeout=180)
    finally:
        sh("docker", "rm", "--force", run.manager, check=False)
        terminal.close()
    shown = screen_text(terminal.seen)
    assert "ClaudeCodev" in shown
    for dialog in ("WelcometoClaudeCode", "Choosethetextstyle", "Doyoutrustthefiles", "BypassPermissionsmode",
                   "missingorbroken"):  # fmt: skip
        assert dialog not in shown


def test_the_smart_manager_splits_a_request_runs_workers_merges_and_summarizes(
    run: Run, git_server: GitServer, token_file, token, tmp_path: Path
):
    name = f"dark-{run.id}"
    repo = git_server.repo(name)
    parts = {
        "theme": ("lib/theme.dart", "final darkTheme = ThemeData.dark();\n", "Create the theme configuration"),
        "widgets": ("lib/widgets.dart", "// widgets use Theme.of(context)\n", "Update the UI components"),
        "toggle": ("lib/settings.dart", "// a switch for the dark theme\n", "Add the theme toggle in settings"),
    }
    # What each worker's Claude Code does: write its file, say what it did.
    prompts = {
        part: run.prompt(
            part,
            reply(text(f"Writing {path}."), write(f"/workspace/repo/{path}", content)),
            text(f"{path} is written."),
            words=f"{title} ({path}).",
        )
        for part, (path, content, title) in parts.items()
    }
    submit = " && ".join(
        f"orch submit --id {run.task_id(part)} --prompt '{prompt}'" for part, prompt in prompts.items()
    )
    summary = (
        "All workers completed. Here's a summary: ThemeConfig created in lib/theme.dart; "
        "widgets updated in lib/widgets.dart; toggle added in lib/settings.dart; "
        "merged into orchestrator/integration."
    )
    # What the manager's Claude Code does, as its prompt teaches.
    run.api.script(
        REQUEST,
        reply(
            text("I'll break this into three independent tasks and start a worker for each."),
            bash(f"orch batch new 'Dark mode' && {submit} && orch start --all --max-workers 3"),
        ),
        reply(text("Workers are running. I'll wait for them."), bash("orch wait --all")),
        bash("orch merge --all --push"),
        text(summary),
    )
    terminal = Terminal(run_py_argv(run, "--repo", repo, "--token", str(token_file)))
    try:
        terminal.wait_for("bypass permissions on", timeout=180)
        terminal.type(REQUEST)
        # The TUI takes a typed burst as a paste: Enter goes on its own, once the request shows.
        terminal.wait_for(REQUEST, timeout=60)
        terminal.type("\r")
        terminal.wait_for("All workers completed", timeout=600)
    finally:
        sh("docker", "rm", "--force", run.manager, check=False)
        terminal.close()
    shown = screen_text(terminal.seen)
    assert re.sub(r"\s+", "", "merged into orchestrator/integration.") in shown

    # The manager ran the commands and saw what they printed.
    submitted, waited, merged = run.api.tool_results(REQUEST)[:3]
    assert submitted.splitlines()[1:4] == [run.task_id(part) for part in parts]  # after the batch's id
    assert "3 tasks: 3 success" in waited
    assert "pushed orchestrator/integration to origin" in merged
    # The workers' agents did their parts, and the work is merged on the repository.
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", "--branch", "orchestrator/integration", repo, str(checkout)], check=True)
    for part, (path, content, _) in parts.items():
        assert (checkout / path).read_text() == content
        assert run.result(run.task_id(part))["branch"] == f"orchestrator/{run.task_id(part)}"
    # Each agent of the batch used the token; none of them had it.
    assert run.api.authorizations().count(f"Bearer {token}") >= 2 * len(parts) + 4
