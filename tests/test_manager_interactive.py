"""The interactive manager: the real Claude Code, started by run.py on a terminal, reaches its
prompt in bypass-permissions mode with no first-run dialog in the way. It cannot reach the
API here, which it only needs once the person types something."""

from __future__ import annotations

import os
import pty
import re
import select
import time

import pytest

from .engine import PREFIX, Run, sh
from .helpers import ROOT

pytestmark = pytest.mark.docker

ANSI = re.compile(rb"\x1b\[[0-9;?<>=]*[a-zA-Z~]|\x1b[()][0-9A-B]|\x1b\][^\x07]*\x07")


def screen_text(raw: bytes) -> str:
    """What the terminal showed, without escapes and white space (the TUI positions words with them)."""
    return re.sub(r"\s+", "", ANSI.sub(b"", raw).decode("utf-8", "replace"))


def test_no_dialog_blocks_a_fresh_manager(run: Run, token_file):
    argv = ["python3", str(ROOT / "bin" / "run.py"), "--image-prefix", PREFIX, "--token", str(token_file),
            "--volume", run.volume, "--name", run.manager]  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:  # the child: run.py on a terminal, as a person starts it
        os.execvp(argv[0], argv)
    seen = b""
    deadline = time.monotonic() + 180
    try:
        while "bypasspermissionson" not in screen_text(seen) and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break  # the terminal closed: run.py ended
                if not chunk:
                    break
                seen += chunk
    finally:
        sh("docker", "rm", "--force", run.manager, check=False)
        os.close(fd)
        os.waitpid(pid, 0)
    text = screen_text(seen)
    assert "bypasspermissionson" in text, text[-2000:]
    assert "ClaudeCodev" in text
    for dialog in ("WelcometoClaudeCode", "Choosethetextstyle", "Doyoutrustthefiles", "BypassPermissionsmode",
                   "missingorbroken"):  # fmt: skip
        assert dialog not in text
