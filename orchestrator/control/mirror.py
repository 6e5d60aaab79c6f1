"""The control plane's mirror of origin: a bare repository holding every branch of origin, fetched
with the credentials only the control plane holds, and read by the manager (and the workers)
through a volume mounted read-only: their clones borrow its objects and need no credential.

It is fetched when the control plane starts and again when something changed origin (a merge
pushed, work handed back); ``orch`` commands that need the latest refresh it themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from .. import git
from ..errors import UserError

MIRROR_NAME = "repo.git"
# origin's branches as its own, and nothing else (no remote-tracking refs, no tags to confuse).
REFSPEC = "+refs/heads/*:refs/heads/*"


class Mirror:
    """The bare mirror at ``root/repo.git`` of the repository at ``url``."""

    def __init__(self, root: Path, url: str, *, env: Mapping[str, str], scrub: Callable[[str], str]):
        self.root = root
        self.url = url
        self.env = dict(env)  # what git needs to reach origin (the git token, for the credential helper)
        self.scrub = scrub

    @property
    def path(self) -> Path:
        return self.root / MIRROR_NAME

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One fetch at a time (the control plane's threads and the commands it runs)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".mirror.lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield

    def refresh(self) -> None:
        """Make the mirror as origin is now (made on first use); an unreachable origin is an error
        that names it."""
        with self._locked():
            if not (self.path / "HEAD").exists():
                # Readable by all (the control plane's umask keeps its files from others): a
                # worker's agent borrows its objects through its clone's alternates. It holds
                # origin's branches, what any clone of origin holds.
                git.git("init", "--quiet", "--bare", "--shared=0644", str(self.path), scrub=self.scrub)
                git.git("config", "remote.origin.url", self.url, cwd=self.path)
                git.git("config", "remote.origin.fetch", REFSPEC, cwd=self.path)
                # Readers clone from it with the pack protocol; bitmaps make that cheap.
                git.git("config", "repack.writeBitmaps", "true", cwd=self.path)
                git.git("config", "uploadpack.allowFilter", "true", cwd=self.path)
                # Clones borrow its objects (alternates): none may ever be pruned from under them.
                git.git("config", "gc.pruneExpire", "never", cwd=self.path)
            self._check_of_url()
            self._readable_by_all()
            try:
                git.git("fetch", "--quiet", "--prune", "--no-tags", "origin", cwd=self.path, timeout=git.CLONE_TIMEOUT,
                        scrub=self.scrub, env=self.env)  # fmt: skip
            except git.GitError as exc:
                raise UserError(f"the control plane cannot fetch {self.scrub(self.url)}: {exc}") from None

    def take(self, repo: Path, commit: str, branch: str) -> None:
        """A branch just pushed to origin, added from ``repo`` (which borrows the mirror's objects)
        without waiting for the next fetch: the tasks that depend on it clone it from here."""
        with self._locked():
            git.git("push", "--quiet", "--no-verify", "--", str(self.path), f"{commit}:refs/heads/{branch}", cwd=repo,
                    timeout=git.PUSH_TIMEOUT, scrub=self.scrub)  # fmt: skip

    def _readable_by_all(self) -> None:
        """A mirror made before it was shared (0660 files) is made readable by all, once."""
        if git.try_git("config", "--get", "core.sharedRepository", cwd=self.path):
            return
        for folder, _, files in os.walk(self.path):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
        git.git("config", "core.sharedRepository", "0644", cwd=self.path)

    def _check_of_url(self) -> None:
        """The mirror kept on its volume must be of the repository given: an orchestration of
        another repository under the same name would otherwise work, silently, on the first one."""
        try:
            kept = git.git("config", "--get", "remote.origin.url", cwd=self.path).strip()
        except git.GitError:
            kept = ""
        if kept != self.url:
            raise UserError(
                f"the mirror kept for this orchestration is of {self.scrub(kept) or 'no repository'}, not of "
                f"{self.scrub(self.url)}: give this orchestration another name (run.py --name), or remove its "
                "volumes (`docker volume ls --filter name=NAME-`)"
            )
