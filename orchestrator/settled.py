"""The settled cache: the batch's views for a process that looks again and again (orch wait, the
dispatcher, orch status --watch), with the tasks that have a result taken from the settled index
(store.py keeps its files) instead of their files."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

from .errors import UserError
from .settled_index import SettledIndex, SettledTask
from .store import OrchestrationDir
from .views import TaskView, load_view

log = logging.getLogger("orchestrator.settled")

_Signature = tuple[tuple[int, int, int] | None, ...]


class ViewCache:
    """The batch's views for a process that looks again and again (orch wait, the dispatcher,
    orch status --watch), or once over a long history (orch status). A task that has a result is
    read from its files once, then taken from the settled index (settled_index.SettledIndex), which this
    cache keeps up to date on the volume; the files of the other tasks are read again only when
    they changed. Call ``views`` holding the state lock: the index is written under it, and
    ``orch retry`` takes tasks out of it under it."""

    # A file changed this recently may change again without its timestamp moving (timestamps
    # advance by clock ticks): it is read again next time whatever its signature says.
    RACY_SECONDS = 2.0

    def __init__(self, orch: OrchestrationDir):
        self.orch = orch
        self.key: tuple[int, int] | None = None  # of the index the settled views come from
        self.whole = False  # its base and additions were read well
        self.base: dict[str, SettledTask] = {}
        self.added: dict[str, SettledTask] = {}
        self.settled: dict[str, TaskView] = {}
        self.unsettled: dict[str, tuple[_Signature | None, TaskView]] = {}
        self.listing: tuple[tuple[int, int, int] | None, list[str]] = (None, [])
        self.changes = 0  # how often a view was made anew: unchanged, ``views`` gives what it gave
        # The last views of every task: the listing, the index key, the views, where the open ones are.
        self.last: tuple[list[str], tuple[int, int] | None, list[TaskView], list[int]] | None = None

    def views(self, ids: Iterable[str] | None = None) -> list[TaskView]:
        """The views of ``ids`` (check them first: ``check_known``), else of every task. For a few
        tasks the index is not worth reading: their files are, unless this cache holds it already."""
        if ids is None or self.key is not None:
            self._refresh()  # another process may have written a newer one (orch retry: fewer tasks)
        chosen = self.task_ids() if ids is None else list(ids)
        if ids is None and self.last is not None and self.last[0] is chosen and self.last[1] == self.key:
            return self._again(*self.last)
        views: list[TaskView] = []
        found: dict[str, SettledTask] = {}
        still: list[int] = []  # where the tasks read from their files are
        for task_id in chosen:
            view = self.settled.get(task_id)
            if view is None:
                view = self._load(task_id)
                entry = view.settled_entry()
                if entry is not None:
                    found[task_id] = entry
                still.append(len(views))
            views.append(view)
        known = set(chosen) if ids is None else None
        if known is not None and (found or not known.issuperset(self.settled)):
            self._add(found, known)
        elif found and self.key is not None:
            self._add(found, None)
        if ids is None:
            self.last = (chosen, self.key, views, [p for p in still if chosen[p] not in self.settled])
        return views

    def _again(self, chosen: list[str], key: object, views: list[TaskView], still: list[int]) -> list[TaskView]:
        """Every task again, with no task added or removed and the same index: only those not
        settled can have changed (over a long history, most rounds of orch wait --all)."""
        views = list(views)
        found: dict[str, SettledTask] = {}
        for position in still:
            view = views[position] = self._load(chosen[position])
            entry = view.settled_entry()
            if entry is not None:
                found[view.id] = entry
        if found:
            self._add(found, None)
        # Those the index could not take stay here: their files are the only word on them.
        self.last = (chosen, self.key, views, [p for p in still if chosen[p] not in self.settled])
        return views

    def task_ids(self) -> list[str]:
        """Every task on the volume, listed again only when the tasks folder changed."""
        signature = _signature(self.orch.root / "tasks")
        if signature is None or signature != self.listing[0]:
            self.listing = (signature, self.orch.task_ids())
            self.changes += 1
        return self.listing[1]

    def _refresh(self) -> None:
        """The settled views of the latest index, when another process wrote a newer one: its
        additions alone while the base is the one held."""
        key = self.orch.settled_key()
        if key == self.key:
            return
        if key is not None and self.key is not None and self.whole and key[0] == self.key[0] and key[1]:
            additions = self.orch.read_settled(key)
            if additions is not None:
                self.key, before = key, self.added
                self.added = dict(additions.tasks)
                self._settle({k: v for k, v in self.added.items() if before.get(k) != v})
                return
        # A part damaged: none of it is taken (orch retry may have written around it), and the
        # next tasks found settled make a new base.
        key, base, added = self.orch.load_settled_index()
        self.key, self.whole = key, base is not None and added is not None
        self.base, self.added = (dict(base or {}), dict(added or {})) if self.whole else ({}, {})
        self.settled = {}
        self._settle({**self.base, **self.added})

    def _settle(self, entries: Mapping[str, SettledTask]) -> None:
        self.changes += 1
        for task_id, entry in entries.items():
            self.settled[task_id] = TaskView.from_settled(entry)
            self.unsettled.pop(task_id, None)

    def _load(self, task_id: str) -> TaskView:
        paths = (self.orch.task_path(task_id), self.orch.status_path(task_id), self.orch.result_path(task_id))
        signature: _Signature | None = tuple(_signature(path) for path in paths)
        cached = self.unsettled.get(task_id)
        if cached is not None and cached[0] == signature:
            return cached[1]
        view = load_view(self.orch, task_id)
        self.unsettled[task_id] = (signature, view)
        self.changes += 1
        return view

    def _add(self, found: Mapping[str, SettledTask], known: Collection[str] | None) -> None:
        """Write the tasks just found settled into the index: in its additions file, or in a new
        base once there are many, or to leave out tasks whose file is gone (``known`` lists every
        task). Until it is written, they are read from their files."""
        entries = {**self.base, **self.added, **found}
        if known is not None:
            entries = {task_id: entry for task_id, entry in entries.items() if task_id in known}
        added = {**self.added, **found}
        try:
            many = len(added) > SettledIndex.ADDITIONS_LIMIT
            if self.key is None or not self.whole or many or len(entries) < len(self.base) + len(added):
                self.key = self.orch.write_settled_index(entries, self.key)
                self.base, self.added, self.whole = entries, {}, True
                self.settled = {task_id: view for task_id, view in self.settled.items() if task_id in entries}
            else:
                self.key = self.orch.write_settled_additions(added, self.key)
                self.added = added
        except (OSError, UserError) as exc:
            # A volume this user may not write, or full: orch still works, only slower.
            log.debug("the settled index could not be written: %s", exc)
            return
        self._settle(found)


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or written: its inode, size and time of change; None
    when it does not exist, or changed too recently to be told apart from a change to come."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    if time.time() - info.st_mtime < ViewCache.RACY_SECONDS:
        return (-1, -1, time.monotonic_ns())  # never equal to another: read again
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def forget_settled(orch: OrchestrationDir, ids: Collection[str]) -> None:
    """Take tasks out of the settled index, before their result is moved away (orch retry); hold
    the state lock. Fails when the index cannot be written: a task left in it would show its old
    result for ever."""
    key, base, added = orch.load_settled_index()
    if base is None or added is None:
        return  # taken for none by its readers; the next one written is a new base, from the files
    tasks = {**base, **added}
    if any(task_id in tasks for task_id in ids):
        orch.write_settled_index({k: v for k, v in tasks.items() if k not in ids}, key)
