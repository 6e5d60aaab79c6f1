"""The Smart Manager prompt's shell blocks, which the tests read and run as written."""

from __future__ import annotations

import re

from .paths import ROOT

PROMPT = ROOT / "orchestrator" / "system-prompt.md"


def shell_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", PROMPT.read_text(), re.DOTALL)
