"""Running an agent CLI headless, whichever it is, and the protocol each CLI follows.

``AgentCLI`` is what the worker asks of an agent CLI (its command line, its environment given
the relay, the reading of its stream); agent_claude.py is Claude Code's, and agents.py the table
of them. ``AgentProcess`` supervises one run as the agent's user: the prompt on standard input,
its output read in bounded lines into the transcript and the log, a timeout that holds, and
every process of the agent's user ended when its process ends.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

from . import sandbox
from .errors import UserError
from .sandbox import AgentUser
from .tasks import State

TERMINATE_GRACE_SECONDS = 10.0
# What of the agent's output is kept (transcript) and shown (log), each, and the longest line
# read: bounds that do not depend on what the agent prints.
OUTPUT_LIMIT = 100 * 1024 * 1024
LINE_LIMIT = 16 * 1024 * 1024
WAIT_STEP_SECONDS = 1.0  # how often the wait for the agent looks at its deadline
# Why a run was stopped when its agent made itself harder to kill than the runtime.
LOWERED_OOM_SCORE = "lowered-oom-score"


@dataclass(frozen=True)
class AgentReport:
    """What an agent CLI's stream said of its run, in its own words (its reader's reading)."""

    finished: bool  # a final report came
    success: bool  # it says it succeeded
    output: str  # its final answer, or its last words when it gave none
    error: str | None = None  # why it did not succeed, as it says
    error_kind: str | None = None  # a short name for the kind of failure, when the CLI gives one
    cost_usd: float | None = None  # its own claim (the relay's reading of the API is the figure to trust)
    turns: int | None = None
    session_id: str | None = None


class StreamReader(Protocol):
    """Reads one run's output, a line at a time."""

    def feed(self, line: str) -> list[str]:
        """One line the agent printed: the lines to show for it in the worker's log."""

    def report(self) -> AgentReport: ...


class AgentCLI(Protocol):
    """An agent CLI the worker can run headless (STYLE.md: a Protocol and a table, agents.py)."""

    name: str
    command: str  # the program, looked up on the agent's PATH

    def argv(self, model: str | None, max_turns: int | None) -> list[str]:
        """Its headless command line; the prompt goes on its standard input."""

    def environment(self, api_url: str, ticket: str, *, api_key: bool) -> dict[str, str]:
        """What it needs in its environment to use the relay at ``api_url`` with ``ticket`` in
        place of a credential (an API key's kind or an OAuth token's, as the real one is)."""

    def reader(self) -> StreamReader: ...


@dataclass(frozen=True)
class AgentRun:
    """What one run of the agent left behind."""

    exit_code: int | None
    report: AgentReport
    stderr_tail: str
    stopped: str | None = None  # "timeout" or "cancelled" when the run was cut short


def judge(run: AgentRun, timeout: float | None) -> tuple[State, str | None]:
    """The task's final state and, unless it succeeded, why."""
    if run.stopped == "timeout":
        return State.TIMEOUT, f"the agent did not finish within {timeout:g} s and was stopped"
    if run.stopped == "cancelled":
        return State.CANCELLED, "the worker was stopped before the agent finished"
    if run.stopped == LOWERED_OOM_SCORE:
        return State.FAILED, (
            "the agent lowered the OOM score of its processes (so that the OOM killer would end the worker's "
            "runtime first) and was stopped"
        )
    if run.stopped == "interrupted":
        return State.INTERRUPTED, (
            "the worker was stopped from outside (an engine shutdown, docker stop) before the agent finished"
        )
    report = run.report
    if not report.finished:
        detail = f": {run.stderr_tail}" if run.stderr_tail else ""
        return State.FAILED, f"the agent ended without a result (exit code {run.exit_code}){detail}"
    if not report.success:
        kind = f" ({report.error_kind})" if report.error_kind else ""
        return State.FAILED, f"the agent reported an error{kind}: {report.error or 'no message'}"
    if run.exit_code != 0:
        return State.FAILED, f"the agent exited with code {run.exit_code}"
    return State.SUCCESS, None


class AgentProcess:
    """One headless run, as the agent's user: streams events to ``on_line`` and the raw
    transcript, under a timeout that holds.

    The run is over when the agent's process has exited (or was stopped), not when its output
    ends: a child it left behind may keep the pipe open for ever. Then every process of the
    agent's user is killed, which also closes the pipes.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        prompt: str,
        user: AgentUser,
        cwd: str,
        env: Mapping[str, str],
        timeout: float | None,
        on_line: Callable[[str], None],
        transcript: IO[str],
        scrub: Callable[[str], str],
        reader: StreamReader,
    ):
        self.argv = list(argv)
        self.prompt = prompt
        self.user = user
        self.cwd = cwd
        self.env = dict(env)
        self.timeout = timeout
        self.on_line = on_line
        self.transcript = transcript
        self.scrub = scrub
        self._proc: subprocess.Popen[str] | None = None
        self._stopped: str | None = None
        self._stopped_at: float | None = None
        self._kept = 0  # bytes written to the transcript
        self._shown = 0  # bytes shown in the log
        self._lock = threading.Lock()
        self.reader = reader
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)

    def stop(self, reason: str) -> None:
        """End the run (its whole process group): TERM, then KILL after a grace period.

        Safe to call from a signal handler or another thread, more than once. It starts
        nothing: the loop in ``run`` kills what is left after the grace period.
        """
        with self._lock:
            if self._stopped or (self._proc is not None and self._proc.poll() is not None):
                return
            self._stopped = reason
            self._stopped_at = time.monotonic()
            proc = self._proc
        if proc is None:
            return  # not started yet: run() will not start it
        self._signal_group(proc, signal.SIGTERM)

    @staticmethod
    def _signal_group(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def _read_stdout(self, stream: IO[str]) -> None:
        for raw in _bounded_lines(stream):
            line = self.scrub(raw.rstrip("\n"))
            if not line.strip():
                continue
            self._keep(line)
            for shown in self.reader.feed(line):
                self._show(shown)

    def _read_stderr(self, stream: IO[str]) -> None:
        for raw in _bounded_lines(stream):
            line = self.scrub(raw.rstrip("\n"))
            if line.strip():
                self._stderr_tail.append(line[:2000])
                self._show(f"stderr: {line}")

    def _keep(self, line: str) -> None:
        """Into the transcript on the shared volume, up to OUTPUT_LIMIT: an agent that prints
        without end must not fill the volume every task writes to."""
        if self._kept > OUTPUT_LIMIT:
            return
        self._kept += len(line) + 1
        if self._kept > OUTPUT_LIMIT:
            line = json.dumps({"type": "orchestrator", "note": f"transcript cut at {OUTPUT_LIMIT} bytes"})
        self.transcript.write(line + "\n")
        self.transcript.flush()

    def _show(self, line: str) -> None:
        """To the worker's log (docker logs), up to OUTPUT_LIMIT, for the same reason."""
        with self._lock:
            if self._shown > OUTPUT_LIMIT:
                return
            self._shown += len(line) + 1
            if self._shown > OUTPUT_LIMIT:
                line = f"(the agent's output is cut here, at {OUTPUT_LIMIT} bytes; the result comes all the same)"
        self.on_line(line)

    def _write_prompt(self, stream: IO[str]) -> None:
        # In a thread: a prompt bigger than the pipe's buffer waits for the CLI to read it.
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            stream.write(self.prompt)
            stream.close()

    def _wait(self, proc: subprocess.Popen[str]) -> int:
        """Wait for the agent's process, enforcing the timeout and the grace period of a stop
        from this thread: an agent that uses up the container's processes (so that no thread
        can start) still ends on time."""
        deadline = time.monotonic() + self.timeout if self.timeout else None
        while True:
            try:
                return proc.wait(WAIT_STEP_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self.stop("timeout")
            elif self._stopped is None and sandbox.lowered_oom_score(self.user.uid):
                self.stop(LOWERED_OOM_SCORE)
            stopped_at = self._stopped_at
            if stopped_at is not None and now - stopped_at >= TERMINATE_GRACE_SECONDS:
                with contextlib.suppress(UserError):
                    sandbox.kill_all(self.user.uid)

    def run(self) -> AgentRun:
        with self._lock:
            if self._stopped:
                return AgentRun(exit_code=None, report=self.reader.report(), stderr_tail="", stopped=self._stopped)
            # Its own session, so that a stop reaches the tools it started too.
            self._proc = subprocess.Popen(
                sandbox.agent_argv(self.user, self.argv, self.cwd),
                cwd="/",
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                start_new_session=True,
            )
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        threads = [
            threading.Thread(target=self._write_prompt, args=(proc.stdin,), daemon=True),
            threading.Thread(target=self._read_stdout, args=(proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(proc.stderr,), daemon=True),
        ]
        for thread in threads:
            thread.start()
        exit_code = self._wait(proc)
        # What it left behind goes before anything else is read or handed back.
        leftovers = sandbox.kill_all(self.user.uid)
        if leftovers:
            self.on_line(f"ended {leftovers} process(es) the agent left running")
        for thread in threads[1:]:
            thread.join(timeout=10)
        return AgentRun(
            exit_code=exit_code,
            report=self.reader.report(),
            stderr_tail=" | ".join(self._stderr_tail),
            stopped=self._stopped,
        )


def _bounded_lines(stream: IO[str]) -> Iterator[str]:
    """The stream's lines, none longer than LINE_LIMIT: the rest of a longer one is dropped
    (read and thrown away), so that the runtime's memory does not depend on the agent."""
    while True:
        line = stream.readline(LINE_LIMIT)
        if not line:
            return
        if len(line) >= LINE_LIMIT and not line.endswith("\n"):
            while True:
                rest = stream.readline(LINE_LIMIT)
                if not rest or rest.endswith("\n"):
                    break
        yield line
