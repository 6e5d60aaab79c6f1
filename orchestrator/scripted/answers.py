"""What a turn comes to: attempts, delays and dynamic turns resolved to a final one, and the message
objects the API sends (whole for an unstreamed answer, empty in a stream's message_start)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from .requests import Request
from .turns import Attempts, Dynamic, Error, Hang, Reply, Slow, TextBlock, Turn, Usage

DEFAULT_USAGE = Usage()


@dataclass(frozen=True)
class Answer:
    """What resolving a turn came to: a final turn and the delays on the way."""

    turn: Reply | Error | Hang
    delay: float = 0.0
    notes: tuple[str, ...] = ()


def resolve(turn: Turn, request: Request, attempt: int) -> Answer:
    delay = 0.0
    notes: list[str] = []
    for _ in range(100):  # a dynamic turn that keeps returning dynamic turns is a bug in the test
        if isinstance(turn, Attempts):
            turn = turn.turns[min(attempt, len(turn.turns) - 1)]
        elif isinstance(turn, Slow):
            delay += turn.seconds
            notes.append(f"after {turn.seconds:g}s")
            turn = turn.turn
        elif isinstance(turn, Dynamic):
            try:
                turn = turn.make(request)
            except Exception as exc:  # noqa: BLE001  (a failing test function is told to the agent and the log)
                return Answer(Error(400, f"scripted_api: dynamic turn failed: {exc!r}"), delay, tuple(notes))
        else:
            return Answer(turn, delay, tuple(notes))
    return Answer(Error(400, "scripted_api: dynamic turns nested 100 deep"), delay, tuple(notes))


def describe(answer: Answer) -> str:
    """The answer in a few words, for the request's record (`Request.answer`)."""
    turn = answer.turn
    if isinstance(turn, Error):
        what = f"{turn.status} {turn.error_type}"
    elif isinstance(turn, Hang):
        what = "hang"
    else:
        what = f"{turn.stop_reason}: " + ", ".join(
            repr(block.text[:40]) if isinstance(block, TextBlock) else block.name for block in turn.blocks
        )
    return " ".join([*answer.notes, what])


def message_object(model: str, turn: Reply | None, usage: Usage = DEFAULT_USAGE) -> dict:
    """A message object: empty for message_start (output tokens so far: 1), whole for a non-streamed answer."""
    content = []
    if turn is not None:
        content = [
            {"type": "text", "text": block.text}
            if isinstance(block, TextBlock)
            else {"type": "tool_use", "id": tool_use_id(), "name": block.name, "input": dict(block.input)}
            for block in turn.blocks
        ]
    return {
        "id": f"msg_scripted_{uuid.uuid4().hex[:20]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": turn.stop_reason if turn is not None else None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.input,
            "output_tokens": usage.output if turn is not None else 1,
            "cache_creation_input_tokens": usage.cache_creation,
            "cache_read_input_tokens": usage.cache_read,
        },
    }


def tool_use_id() -> str:
    return f"toolu_scripted_{uuid.uuid4().hex[:20]}"
