"""Batches: the tasks of one request, together (``orch batch new "Add dark mode"``).

A volume keeps every task it ever ran; a person asks for one thing at a time. The current batch
(``current-batch.json``) is what ``orch submit`` adds to and what ``orch status``, ``orch wait``,
``orch merge`` and every ``--all`` mean, unless told ``--batch ID`` or ``--history`` (the volume's
whole history). ``orch submit`` with no current batch starts one, named after the prompt.

Which batch a task is in: its task file's ``batch`` (orch submit writes it), else the one its status
recorded when it was first started (a task file written by hand joins the batch current then); a
hand-written task nobody has started yet shows in the current batch. Tasks from before batches
existed show with ``--history`` (and everywhere while no batch was ever made).

Ids orch makes up carry their batch's (``add-dark-mode-3f9a1c-01``), and a batch's id carries
random hex: two volumes on one engine do not make the same worker name.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable

from .errors import InvalidInput, UserError
from .store import AlreadyExists, OrchestrationDir, write_json, write_json_once
from .tasks import Batch, utc_now, validate_batch_id
from .views import TaskView

TITLE_LIMIT = 200
_SLUG_LIMIT = 20
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def slug(title: str) -> str:
    """The readable part of a batch's id: the title's first words, lower case, joined by '-'."""
    words = _NOT_SLUG.sub("-", title.lower()).strip("-")
    return words[:_SLUG_LIMIT].rstrip("-") or "batch"


def new_batch(orch: OrchestrationDir, title: str) -> Batch:
    """Start a batch and make it the current one."""
    title = " ".join(title.split())[:TITLE_LIMIT]
    if not title:
        raise InvalidInput("a batch needs a title: what the request is, in a few words")
    for _ in range(5):
        batch = Batch(f"{slug(title)}-{secrets.token_hex(3)}", title, utc_now())
        try:
            write_json_once(orch.batch_path(batch.id), batch.to_json())
        except AlreadyExists:
            continue
        use_batch(orch, batch.id)
        return batch
    raise UserError("could not find a free batch id")


def use_batch(orch: OrchestrationDir, batch_id: str) -> Batch:
    """Make ``batch_id`` the current batch."""
    batch = orch.load_batch(validate_batch_id(batch_id, "--batch"))
    if batch is None:
        raise UserError(f"no batch {batch_id} (see `orch batch list`)")
    write_json(orch.current_batch_path, {"id": batch.id})
    return batch


def current_or_new(orch: OrchestrationDir, prompt: str) -> tuple[Batch, bool]:
    """The current batch, or a new one named after the prompt's first line; whether it is new."""
    current = orch.current_batch()
    batch = orch.load_batch(current) if current else None
    if batch is not None:
        return batch, False
    first = next((line.strip() for line in prompt.splitlines() if line.strip()), "a batch")
    return new_batch(orch, first), True


def scope(orch: OrchestrationDir, *, batch: str | None, history: bool) -> str | None:
    """The batch a command looks at: the one named, none with ``history`` (every task), else the
    current one (none while no batch was ever made)."""
    if batch is not None and history:
        raise InvalidInput("give --batch ID or --history, not both")
    if history:
        return None
    if batch is not None:
        if orch.load_batch(validate_batch_id(batch, "--batch")) is None:
            raise UserError(f"no batch {batch} (see `orch batch list`)")
        return batch
    return orch.current_batch()


def belongs(view: TaskView, batch_id: str | None) -> bool:
    """Whether the task is in the batch (every task is, for None)."""
    if batch_id is None or view.batch == batch_id:
        return True
    # A task file written by hand that nobody started yet: the current batch's to start.
    return view.batch is None and view.status is None and view.settled is None and view.result is None


def in_batch(views: Iterable[TaskView], batch_id: str | None) -> list[TaskView]:
    return [view for view in views if belongs(view, batch_id)]


def next_task_id(orch: OrchestrationDir, batch: Batch) -> str:
    """The next id of the batch: its id, then a number."""
    prefix = f"{batch.id}-"
    numbers = [
        int(rest) for name in orch.task_ids() if name.startswith(prefix) and (rest := name[len(prefix) :]).isdigit()
    ]
    return f"{prefix}{max(numbers, default=0) + 1:02d}"
