"""The shared volume as a store (pre-commit's store.py owns its folder the same way): every path
on it, atomic writes, the locks, and the settled index's files. The formats are tasks.py and settled_index.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import config
from .errors import InvalidInput, UserError
from .settled_index import SettledIndex, SettledTask
from .tasks import (
    Batch,
    BatchSettings,
    State,
    Task,
    TaskResult,
    TaskStatus,
    natural_key,
    utc_now,
    validate_batch_id,
)

# Where the shared volume is mounted in every container (config.py names it once).
DEFAULT_ROOT = Path(config.CONTAINER_ORCHESTRATION_DIR)


def write_atomic(path: Path, content: str | bytes, mode: int = 0o660) -> None:
    """Write a file so that a reader sees the old content or the new, never half of it."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class AlreadyExists(UserError):
    """A file that is written once (a task, a result) is there already."""


def write_json_once(path: Path, data: Mapping[str, Any]) -> None:
    """Write a JSON document that must never replace another one (a task, a result).

    The complete file is linked into place, so a reader sees all of it or nothing, and of
    two writers racing for the same name exactly one wins.
    """
    link_into_place(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def link_into_place(path: Path, content: bytes) -> None:
    """``content`` as the file ``path``, which must not exist yet (AlreadyExists): complete or not at all."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o660)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise AlreadyExists(f"{path} exists already; it is never overwritten") from None
    finally:
        os.unlink(tmp)


# The largest file of the volume orch reads (a result holds the agent's final answer; the
# transcript, which may be larger, is never read whole).
READ_LIMIT = 64 * 1024 * 1024


def read_json(path: Path) -> Any:
    """A JSON document of the volume. Read as the plain file it must be: a link is not followed
    (a task file is the manager's to write, and a link there could lead the control plane or a
    worker's runtime to a file of its own), nor is anything but a regular file opened for long
    (a FIFO would hold the reader)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InvalidInput(f"{path} does not exist") from None
    except OSError as exc:
        reason = "it is a symbolic link, which is never followed" if exc.errno == errno.ELOOP else exc.strerror
        raise InvalidInput(f"cannot read {path}: {reason}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"cannot read {path}: it is not a regular file")
        data = handle.read(READ_LIMIT + 1)
    if len(data) > READ_LIMIT:
        raise InvalidInput(f"cannot read {path}: it is over {READ_LIMIT // (1024 * 1024)} MiB")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


@dataclass(frozen=True)
class OrchestrationDir:
    """The shared folder, as seen by whoever holds it mounted."""

    root: Path = DEFAULT_ROOT
    # A rehearsal's (run.py --rehearsal): every result written here says so, whoever writes it.
    rehearsal: bool = False

    SUBDIRS = ("tasks", "results", "status", "logs", "attempts", "bundles", "batches")
    # Group (the orchestrator's user) only, new files taking the group; a worker's agent is not in it.
    MODE = 0o2770
    # What every process that writes the volume sets, whoever started it (docker exec gives 022).
    UMASK = 0o007

    def ensure(self) -> None:
        """Make the folders; whoever owns them (the manager) also closes them to anyone outside
        the group, which a volume made by an older version left open."""
        for folder in (self.root, *(self.root / name for name in self.SUBDIRS)):
            folder.mkdir(parents=True, exist_ok=True)
            info = folder.stat()
            if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) != self.MODE:
                with contextlib.suppress(OSError):
                    os.chmod(folder, self.MODE)

    def task_path(self, task_id: str) -> Path:
        return self.root / "tasks" / f"{task_id}.json"

    def result_path(self, task_id: str) -> Path:
        return self.root / "results" / f"{task_id}.json"

    def status_path(self, task_id: str) -> Path:
        return self.root / "status" / f"{task_id}.json"

    def log_path(self, task_id: str) -> Path:
        """The agent's raw stream-json transcript."""
        return self.root / "logs" / f"{task_id}.jsonl"

    def worker_log_path(self, task_id: str) -> Path:
        """What the worker printed: the same lines as ``docker logs``, kept after the container."""
        return self.root / "logs" / f"{task_id}.log"

    def bundle_path(self, task_id: str, attempt: int | None) -> Path:
        """Where a worker saves its commits when its push fails."""
        return self.root / "bundles" / f"{task_id}-attempt-{attempt or 1}.bundle"

    def archive_path(self, task_id: str, attempt: int | None) -> Path:
        """Where a worker saves its agent's clone when the work cannot be committed."""
        return self.root / "bundles" / f"{task_id}-attempt-{attempt or 1}.tar.gz"

    @property
    def settings_path(self) -> Path:
        """The batch's settings (BatchSettings): the worker limit and default resource limits."""
        return self.root / "dispatcher.json"

    @property
    def dispatcher_lock_path(self) -> Path:
        """Held by the one dispatcher of the volume for as long as it runs."""
        return self.root / ".dispatcher.lock"

    @property
    def dispatcher_log_path(self) -> Path:
        return self.root / "logs" / "dispatcher.log"

    @property
    def state_lock_path(self) -> Path:
        return self.root / ".state.lock"

    def attempt_dir(self, task_id: str) -> Path:
        return self.root / "attempts" / task_id

    def attempt_path(self, task_id: str, attempt: int, suffix: str) -> Path:
        """An earlier attempt's result (json), transcript (jsonl) or log (log), kept by orch retry."""
        return self.attempt_dir(task_id) / f"{attempt}.{suffix}"

    @property
    def index_dir(self) -> Path:
        """The settled index (SettledIndex), made when first written."""
        return self.root / "index"

    def task_ids(self) -> list[str]:
        """Every task on the volume, in id order (task-2 before task-10)."""
        # os.listdir rather than glob: a long-lived volume holds tens of thousands.
        names = [name[:-5] for name in os.listdir(self.root / "tasks") if name.endswith(".json") and name[0] != "."]
        return sorted(names, key=natural_key)

    @staticmethod
    def open_lock(path: Path) -> IO[bytes]:
        """A lock file of the volume, open for flock: read-write for the group, whoever made it
        and whatever their umask (docker exec starts processes with 022)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o660)
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_uid == os.getuid():
                os.fchmod(fd, 0o660)
        return os.fdopen(fd, "r+b")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the volume's state lock: one reader-modifier-writer of the batch at a time.

        flock works across containers, because they share the kernel and the volume.
        The lock is released when the holder dies, whatever the cause.
        """
        with self.open_lock(self.state_lock_path) as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def load_settings(self) -> BatchSettings:
        """The batch's settings; a missing or damaged file counts as none set."""
        try:
            return BatchSettings.from_json(read_json(self.settings_path))
        except InvalidInput:
            return BatchSettings()

    def write_settings(self, settings: BatchSettings) -> None:
        write_json(self.settings_path, settings.to_json())

    def settled_key(self) -> tuple[int, int] | None:
        """(G, A) of the latest settled index (A 0: no additions), without reading it; None: none."""
        try:
            names = os.listdir(self.index_dir)
        except FileNotFoundError:
            return None
        found = [(int(m.group(1)), int(m.group(2) or 0)) for name in names if (m := SettledIndex.NAME.fullmatch(name))]
        return max(found, default=None)

    def _settled_path(self, key: tuple[int, int]) -> Path:
        base, added = key
        return self.index_dir / (f"settled-{base}-{added}.json" if added else f"settled-{base}.json")

    def read_settled(self, key: tuple[int, int]) -> SettledIndex | None:
        """The base (A 0) or the additions file of ``key``; None when it is gone or damaged."""
        try:
            index = SettledIndex.from_json(read_json(self._settled_path(key)))
        except InvalidInput:
            return None
        base, added = key
        right = (index.generation, index.base) == ((added, base) if added else (base, None))
        return index if right else None

    def load_settled_index(
        self,
    ) -> tuple[tuple[int, int] | None, Mapping[str, SettledTask] | None, Mapping[str, SettledTask] | None]:
        """The latest key, the tasks of its base, and those of its additions ({} when it has none);
        None for a part that is damaged."""
        for _ in range(5):
            key = self.settled_key()
            if key is None:
                return None, None, None
            base = self.read_settled((key[0], 0))
            added = self.read_settled(key) if key[1] else SettledIndex(0, {})
            if (base is None or added is None) and self.settled_key() != key:
                continue  # replaced as it was read: read the next one
            return key, base.tasks if base else None, added.tasks if added else None
        return None, None, None

    def write_settled_index(self, tasks: Mapping[str, SettledTask], after: tuple[int, int] | None) -> tuple[int, int]:
        """Write a new base after the latest key ``after`` and remove the older files; hold the state lock."""
        key = ((after[0] if after else 0) + 1, 0)
        self._write_settled(key, SettledIndex(key[0], tasks))
        return key

    def write_settled_additions(self, tasks: Mapping[str, SettledTask], after: tuple[int, int]) -> tuple[int, int]:
        """Write the tasks added to base ``after[0]`` since it was written, as the next additions file;
        hold the state lock."""
        key = (after[0], after[1] + 1)
        self._write_settled(key, SettledIndex(key[1], tasks, base=key[0]))
        return key

    def _write_settled(self, key: tuple[int, int], index: SettledIndex) -> None:
        self.index_dir.mkdir(exist_ok=True)
        content = json.dumps(index.to_json(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        link_into_place(self._settled_path(key), content)
        for name in os.listdir(self.index_dir):
            match = SettledIndex.NAME.fullmatch(name)
            if not match:
                continue
            other = (int(match.group(1)), int(match.group(2) or 0))
            # Older bases, and older additions; the base the new additions file adds to stays.
            if other < key and other != (key[0], 0):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.index_dir / name)

    # --- Batches (batches.py has their rules).

    def batch_path(self, batch_id: str) -> Path:
        return self.root / "batches" / f"{batch_id}.json"

    @property
    def current_batch_path(self) -> Path:
        """Which batch ``orch submit`` adds to and ``orch status`` shows: ``{"id": ...}``."""
        return self.root / "current-batch.json"

    def current_batch(self) -> str | None:
        """The current batch's id; None before the first (or when the file is damaged)."""
        try:
            data = read_json(self.current_batch_path)
            return validate_batch_id(data.get("id") if isinstance(data, dict) else None)
        except InvalidInput:
            return None

    def load_batch(self, batch_id: str) -> Batch | None:
        path = self.batch_path(batch_id)
        return Batch.from_json(read_json(path)) if path.exists() else None

    def batch_ids(self) -> list[str]:
        folder = self.root / "batches"
        names = os.listdir(folder) if folder.is_dir() else []
        return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith("."))

    def load_task(self, task_id: str) -> Task:
        path = self.task_path(task_id)
        task = Task.from_json(read_json(path))
        if task.id != task_id:
            raise InvalidInput(f"{path}: field 'id' is {task.id!r} but the file is named for {task_id!r}")
        return task

    def write_result(self, result: TaskResult) -> None:
        """Write a result; one that exists already is never replaced (AlreadyExists)."""
        if self.rehearsal:
            result = dataclasses.replace(result, rehearsal=True)
        write_json_once(self.result_path(result.task_id), result.to_json())

    def load_result(self, task_id: str) -> TaskResult | None:
        path = self.result_path(task_id)
        try:
            return TaskResult.from_json(read_json(path))
        except InvalidInput:
            if path.exists():
                raise
            return None

    def load_archived_result(self, task_id: str, attempt: int) -> TaskResult | None:
        """An earlier attempt's result, kept by orch retry (or a resume) under attempts/ID/."""
        path = self.attempt_path(task_id, attempt, "json")
        return TaskResult.from_json(read_json(path)) if path.exists() else None

    def load_status(self, task_id: str) -> TaskStatus | None:
        path = self.status_path(task_id)
        try:
            return TaskStatus.from_json(read_json(path))
        except InvalidInput:
            if path.exists():
                raise
            return None

    def update_status(
        self,
        task_id: str,
        state: State,
        *,
        message: str | None = None,
        worker_type: str | None = None,
        container: str | None = None,
        attempt: int | None = None,
        started_at: str | None = None,
        stop_reason: str | None = None,
        deadline: str | None = None,
        batch: str | None = None,
    ) -> TaskStatus:
        """Record a new state, keeping what the previous status knew of the worker.

        A new attempt starts afresh: its start time and stop reason are not carried over. The
        task's batch, once recorded, stays; a task first recorded without one (a task file written
        by hand) joins the current batch.
        """
        try:
            previous = self.load_status(task_id)
        except InvalidInput:
            previous = None  # a damaged status file is replaced, not fatal
        same_attempt = previous is not None and (attempt is None or attempt == previous.attempt)
        status = TaskStatus(
            task_id=task_id,
            state=state,
            updated_at=utc_now(),
            worker_type=worker_type or (previous.worker_type if previous else None),
            container=container or (previous.container if previous else None),
            message=message,
            attempt=attempt or (previous.attempt if previous else None),
            started_at=started_at or (previous.started_at if same_attempt and previous else None),
            stop_reason=stop_reason or (previous.stop_reason if same_attempt and previous else None),
            deadline=deadline or (previous.deadline if same_attempt and previous else None),
            batch=(previous.batch if previous else None) or batch or self.current_batch(),
        )
        write_json(self.status_path(task_id), status.to_json())
        return status
