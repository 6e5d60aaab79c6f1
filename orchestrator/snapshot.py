"""The agent's side of a hand-back: a snapshot of its work, made as the agent's user.

The worker runtime runs this (``python3 -E -s -P -``, the source on standard input) as the
agent's user once every process of the agent has ended, with an environment in which git
reads no configuration of the system or of any user (sandbox.isolated_git_env). It makes a
new bare repository of its own, borrows the objects of the agent's clone and of the runtime's
clone (alternates: nothing is copied), and commits there the agent's working tree on top of
the agent's HEAD: ``refs/heads/snapshot``. The runtime then fetches that one ref through a
checked ``upload-pack``, also run as the agent's user, and takes nothing else.

Why as the agent's user, and why a repository of its own: the runtime is root, and the tree is
the agent's. Read by root, a symbolic link swapped in at the right moment leads git into
/root or /orchestration; read through the agent's own repository, its configuration (hooks,
fsmonitor, filters) runs commands. Here the reader has the agent's rights and no more, and the
only configuration git reads is the one this script's ``git init`` wrote.

Standard library only and no import of the package: the script reaches the agent's user as
text, whatever folder the package lives in.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence

OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
REF_NAME = re.compile(r"refs/[A-Za-z0-9._/-]{1,200}")
READ_LIMIT = 1 << 20  # HEAD and a ref file are a few bytes; packed-refs may be large


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(READ_LIMIT)
    except OSError:
        return None


def agent_head(git_dir: str) -> str | None:
    """The commit the agent's HEAD names, read from its files (no git reads its repository)."""
    head = (_read(os.path.join(git_dir, "HEAD")) or "").strip()
    if OBJECT_ID.fullmatch(head):
        return head
    if not head.startswith("ref: "):
        return None
    ref = head[5:].strip()
    if not REF_NAME.fullmatch(ref) or ".." in ref:
        return None
    loose = (_read(os.path.join(git_dir, *ref.split("/"))) or "").strip()
    if OBJECT_ID.fullmatch(loose):
        return loose
    for line in (_read(os.path.join(git_dir, "packed-refs")) or "").splitlines():
        parts = line.split(" ", 1)
        if len(parts) == 2 and parts[1] == ref and OBJECT_ID.fullmatch(parts[0]):
            return parts[0]
    return None


def git(*args: str, cwd: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode:
        raise RuntimeError(f"git {args[0]} failed: {proc.stderr.strip()[-2000:]}")
    return proc


def snapshot(work_tree: str, into: str, fallback: str, objects: str) -> dict[str, object]:
    env = {**os.environ, "GIT_DIR": into, "GIT_INDEX_FILE": os.path.join(into, "snapshot-index")}
    problems: list[str] = []
    os.makedirs(into, mode=0o700)
    git("init", "--quiet", "--bare", into, cwd=into, env={k: v for k, v in env.items() if k != "GIT_DIR"})
    git_dir = os.path.join(work_tree, ".git")
    head = agent_head(git_dir) if os.path.isdir(git_dir) else None
    borrowed = [os.path.join(git_dir, "objects"), objects] if head else [objects]
    with open(os.path.join(into, "objects", "info", "alternates"), "w", encoding="utf-8") as handle:
        handle.write("".join(f"{path}\n" for path in borrowed))
    base = head
    if head is None or git("cat-file", "-e", f"{head}^{{commit}}", cwd=into, env=env, check=False).returncode:
        if head is not None:
            problems.append(f"the agent's HEAD ({head[:12]}) is not a commit its clone holds")
        else:
            problems.append("the agent's clone names no commit as its HEAD")
        base = fallback
    assert base is not None
    git("read-tree", base, cwd=into, env=env)
    added = git("--work-tree", work_tree, "add", "--all", cwd=work_tree, env=env, check=False)
    if added.returncode:
        # A path git cannot take (an unreadable file, a nested repository without commits)
        # must not cost the rest: everything else is taken, and the failure said.
        problems.append(f"some of the agent's files could not be taken: {added.stderr.strip()[-1000:]}")
        git("--work-tree", work_tree, "add", "--all", "--ignore-errors", cwd=work_tree, env=env, check=False)
    tree = git("write-tree", cwd=into, env=env).stdout.strip()
    commit = git("commit-tree", tree, "-p", base, "-m", "snapshot of the agent's work", cwd=into, env=env)
    git("update-ref", "refs/heads/snapshot", commit.stdout.strip(), cwd=into, env=env)
    return {"head": head, "base": base, "problems": problems}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snapshot", description="Snapshot the agent's work (see the module).")
    parser.add_argument("--work-tree", required=True, help="the agent's clone")
    parser.add_argument("--into", required=True, help="the new bare repository to make")
    parser.add_argument("--fallback", required=True, help="the commit to start from when HEAD cannot be read")
    parser.add_argument("--objects", required=True, help="the runtime's clone's objects folder")
    args = parser.parse_args(argv)
    try:
        found = snapshot(args.work_tree, args.into, args.fallback, args.objects)
    except (OSError, RuntimeError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
