"""The Smart Manager prompt shows the whole cycle of a batch in its commands (tests/e2e/
test_system_prompt.py runs them as written)."""

from __future__ import annotations

from tests.support.system_prompt import shell_blocks


def test_the_prompt_shows_the_whole_cycle():
    text = "\n".join(shell_blocks())
    for command in ("orch batch new", "orch submit", "--depends-on", "orch start --all --max-workers", "orch status",
                    "orch cancel", "orch retry", "orch wait --all", "orch result", "orch logs",
                    "orch merge --all --push",
                    "orch cleanup"):  # fmt: skip
        assert command in text
