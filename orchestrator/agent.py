"""Running Claude Code headless and making sense of what it says.

``claude -p --output-format stream-json --verbose`` prints one JSON event a line: a
``system``/``init`` event, ``assistant`` and ``user`` messages (text, tool calls, tool
results) and, last, a ``result`` event with ``subtype``, ``is_error``, ``result``,
``session_id``, ``total_cost_usd``, ``num_turns`` and ``duration_ms``.

The agent's exit code alone does not tell success: an API error or a missing login ends
with ``"subtype": "success"`` and ``"is_error": true``. ``judge`` looks at all of it.
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
from typing import IO, Any

from . import sandbox
from .docker import flag
from .errors import UserError
from .sandbox import AgentUser
from .tasks import State

CLAUDE = "claude"
TERMINATE_GRACE_SECONDS = 10.0
# What of the agent's output is kept (transcript) and shown (log), each, and the longest line
# read: bounds that do not depend on what the agent prints.
OUTPUT_LIMIT = 100 * 1024 * 1024
LINE_LIMIT = 16 * 1024 * 1024
WAIT_STEP_SECONDS = 1.0  # how often the wait for the agent looks at its deadline
_SUMMARY_LIMIT = 160
# Why a run was stopped when its agent made itself harder to kill than the runtime.
LOWERED_OOM_SCORE = "lowered-oom-score"


def headless_argv(model: str | None, max_turns: int | None = None) -> list[str]:
    """The command line of a headless run; the prompt goes on standard input, which has no
    size limit (Linux refuses a single argument over 128 KiB). Every flag here is in
    ``claude --help``, but ``--max-turns``: the CLI accepts it without listing it
    (tests/test_images.py checks the real binary takes it)."""
    return [
        CLAUDE,
        "--print",
        "--output-format",
        "stream-json",
        # The CLI refuses stream-json in print mode without it.
        "--verbose",
        # Nobody is there to answer a permission prompt; the container is the sandbox.
        "--dangerously-skip-permissions",
        *flag("--model", model),
        *flag("--max-turns", max_turns),
    ]


def _shorten(text: str, limit: int = _SUMMARY_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tool_summary(name: str, tool_input: Any) -> str:
    if not isinstance(tool_input, Mapping):
        return name
    for key in ("command", "file_path", "notebook_path", "path", "pattern", "url", "description", "query"):
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            return f"{name} {_shorten(value)}"
    return f"{name} {_shorten(json.dumps(tool_input, ensure_ascii=False))}"


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return ""


def render_event(event: Mapping[str, Any]) -> list[str]:
    """Readable lines for one stream-json event (what ``docker logs`` shows)."""
    kind = event.get("type")
    subtype = event.get("subtype")
    if kind == "system":
        if subtype == "init":
            return [f"session {event.get('session_id')} started (model {event.get('model')}, cwd {event.get('cwd')})"]
        if subtype == "api_retry":
            return [f"API retry {event.get('attempt')}/{event.get('max_retries')} ({event.get('error')})"]
        # Bookkeeping of the CLI's own (task_started, task_notification around every Bash call,
        # ...): the transcript keeps it; the log would only repeat the tool lines.
        return []
    if kind in ("assistant", "user"):
        message = event.get("message")
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        lines: list[str] = []
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, Mapping):
                continue
            btype = block.get("type")
            if btype == "text" and kind == "assistant" and block.get("text", "").strip():
                lines.extend(f"  {line}" for line in block["text"].strip().splitlines())
            elif btype == "tool_use":
                lines.append(f"-> {_tool_summary(str(block.get('name')), block.get('input'))}")
            elif btype == "tool_result":
                mark = "<- error:" if block.get("is_error") else "<-"
                lines.append(f"{mark} {_shorten(_result_text(block.get('content'))) or '(no output)'}")
            elif btype == "thinking":
                lines.append("(thinking)")
        return lines
    if kind == "result":
        cost = event.get("total_cost_usd")
        cost_text = f"${cost:.4f}" if isinstance(cost, (int, float)) else "cost unknown"
        seconds = event.get("duration_ms")
        time_text = f"{seconds / 1000:.1f} s" if isinstance(seconds, (int, float)) else "time unknown"
        error = " with an error" if event.get("is_error") else ""
        return [f"finished{error}: {subtype}, {event.get('num_turns')} turns, {cost_text}, {time_text}"]
    return []


@dataclass(frozen=True)
class AgentRun:
    """What one run of the agent left behind."""

    exit_code: int | None
    final: Mapping[str, Any] | None  # the ``result`` event, if one came
    last_text: str  # the last assistant text, the output when no result came
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
    final = run.final
    if final is None:
        detail = f": {run.stderr_tail}" if run.stderr_tail else ""
        return State.FAILED, f"the agent ended without a result (exit code {run.exit_code}){detail}"
    if final.get("is_error") is not False or final.get("subtype") != "success":
        message = final.get("result") if isinstance(final.get("result"), str) else ""
        errors = final.get("errors")
        if not message and isinstance(errors, list):
            message = "; ".join(str(e) for e in errors)
        return State.FAILED, f"the agent reported an error ({final.get('subtype')}): {message or 'no message'}"
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
        self._final: Mapping[str, Any] | None = None
        self._last_text = ""
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
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self._show(line)
                continue
            if not isinstance(event, Mapping):
                continue
            for rendered in render_event(event):
                self._show(rendered)
            if event.get("type") == "result":
                self._final = event
            elif event.get("type") == "assistant":
                text = _assistant_text(event)
                if text:
                    self._last_text = text

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
                return AgentRun(exit_code=None, final=None, last_text="", stderr_tail="", stopped=self._stopped)
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
            final=self._final,
            last_text=self._last_text,
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


def _assistant_text(event: Mapping[str, Any]) -> str:
    message = event.get("message")
    content = message.get("content") if isinstance(message, Mapping) else None
    if isinstance(content, str):
        return content.strip()
    if not isinstance(content, list):
        return ""
    parts = [b.get("text", "") for b in content if isinstance(b, Mapping) and b.get("type") == "text"]
    return "\n".join(p for p in parts if p).strip()
