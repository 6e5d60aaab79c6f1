"""What the manager may ask of the Docker Engine API, decided from the request alone.

The manager's agent is untrusted, so this is an allowlist: a handful of read and stop
operations on its own workers (``WorkerPolicy``), the listing of containers (filtered to its
workers), the engine's version and ping, and the event stream forced to its workers. Every
other request is refused with the rule that refuses it; a path is accepted only in its one
plain spelling (no dot segments, no percent-encoding), so that what is checked is what the
engine reads.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..config import LABEL_ROLE, LABEL_VOLUME
from ..errors import InvalidInput

WORKER_ROLE = "worker"  # the value of LABEL_ROLE that spawn gives a worker's container
REFUSED_BY = "(refused by the control plane's Docker API filter)"
_ALLOWED_ON_WORKERS = "on its own workers it may inspect, read logs, top, stats, wait, stop and kill"

_VERSION = re.compile(r"v[0-9]{1,2}\.[0-9]{1,3}")
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,256}")
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


class Refusal(Exception):
    """A request the filter does not pass on; ``message`` names the rule."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status
        self.message = f"{message} {REFUSED_BY}"


@dataclass(frozen=True)
class WorkerPolicy:
    """The containers that are this orchestration's: workers (``orchestrator.role=worker``) of
    its shared volume (``orchestrator.volume=<volume>``). Labels are fixed when a container is
    created, and only the control plane creates containers, so they cannot be forged."""

    volume: str

    def __post_init__(self) -> None:
        if not _VOLUME_NAME.fullmatch(self.volume):
            raise InvalidInput(f"volume name {self.volume!r} is not valid")

    def owns(self, labels: object) -> bool:
        return (
            isinstance(labels, Mapping)
            and labels.get(LABEL_ROLE) == WORKER_ROLE
            and labels.get(LABEL_VOLUME) == self.volume
        )

    def owns_inspected(self, document: object) -> bool:
        """For a ``GET /containers/{id}/json`` document."""
        config = document.get("Config") if isinstance(document, Mapping) else None
        return isinstance(config, Mapping) and self.owns(config.get("Labels"))

    def owns_listed(self, entry: object) -> bool:
        """For an entry of ``GET /containers/json``."""
        return isinstance(entry, Mapping) and self.owns(entry.get("Labels"))

    def owns_event(self, event: object) -> bool:
        """For an event of ``GET /events``: a container's, with the labels among its attributes."""
        if not isinstance(event, Mapping) or event.get("Type") != "container":
            return False
        actor = event.get("Actor")
        return isinstance(actor, Mapping) and self.owns(actor.get("Attributes"))

    def event_filters(self, given: str | None) -> str:
        """The ``filters`` of ``GET /events`` with type=container and this policy's labels forced.
        The engine ANDs label filters, so the client's own can only narrow the stream."""
        filters: dict[str, dict[str, bool]] = {}
        try:
            parsed: Any = json.loads(given) if given else {}
        except ValueError:
            raise Refusal("the events filter is not JSON", 400) from None
        if not isinstance(parsed, dict):
            raise Refusal("the events filter is not a JSON object", 400)
        for key, values in parsed.items():
            # The engine takes both forms: {"key": {"value": true}} and the older {"key": ["value"]}.
            items = list(values) if isinstance(values, dict | list) else None
            if items is None or not all(isinstance(v, str) for v in items):
                raise Refusal(f"the events filter {key!r} is malformed", 400)
            filters[str(key)] = dict.fromkeys(items, True)
        filters["type"] = {"container": True}
        filters.setdefault("label", {}).update(
            {f"{LABEL_ROLE}={WORKER_ROLE}": True, f"{LABEL_VOLUME}={self.volume}": True}
        )
        return json.dumps(filters, sort_keys=True)


@dataclass(frozen=True)
class Target:
    """A request target in its one accepted spelling: an optional API version, plain segments,
    and the query as decoded pairs (re-encoded when passed on)."""

    version: str  # "v1.41", or "" when the client named none
    parts: tuple[str, ...]
    query: tuple[tuple[str, str], ...]

    def param(self, name: str) -> str | None:
        return next((value for key, value in self.query if key == name), None)

    def with_param(self, name: str, value: str) -> Target:
        return replace(self, query=(*((k, v) for k, v in self.query if k != name), (name, value)))

    def with_container(self, container_id: str) -> Target:
        return replace(self, parts=(self.parts[0], container_id, *self.parts[2:]))

    def encode(self) -> str:
        path = "/" + "/".join((self.version, *self.parts) if self.version else self.parts)
        return path + ("?" + urllib.parse.urlencode(self.query) if self.query else "")


def parse_target(raw: str) -> Target:
    path, _, query = raw.partition("?")
    if not path.startswith("/"):
        raise Refusal("the target is not a path (absolute and authority forms are not accepted)", 400)
    segments = path[1:].split("/")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise Refusal(
                "the path is not plain: dot segments, empty segments and encoded or unusual characters "
                "are refused, so that the path checked is the path the engine reads"
            )
    version = segments[0] if _VERSION.fullmatch(segments[0]) else ""
    parts = tuple(segments[1:] if version else segments)
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False, max_num_fields=64)
    except ValueError:
        raise Refusal("the query has too many fields", 400) from None
    if any(c in value for _, value in pairs for c in "\0") or any(not key for key, _ in pairs):
        raise Refusal("the query is malformed", 400)
    return Target(version, parts, tuple(pairs))


# What a route does with a request that passes.
PASS = "pass"  # forwarded, the answer streamed back as it is
LIST = "list"  # GET /containers/json: the answer filtered to the workers
EVENTS = "events"  # GET /events: filters forced, and each event checked again
CONTAINER = "container"  # an operation on one container: resolved and checked first

ALLOWED_CONTAINER_OPERATIONS = frozenset({
    ("GET", "json"), ("GET", "logs"), ("GET", "top"), ("GET", "stats"),
    ("POST", "wait"), ("POST", "stop"), ("POST", "kill"),
})  # fmt: skip


@dataclass(frozen=True)
class Route:
    kind: str
    container: str | None = None  # the name, id or id prefix the client gave


# The refusals by the first segment of the path: the rule, and what to do instead.
_SECTION_RULES: dict[str, str] = {
    "build": "the manager may not build images",
    "session": "the manager may not open BuildKit sessions",
    "grpc": "the manager may not open BuildKit sessions",
    "images": "the manager may not use images: worker images are built and chosen by the control plane",
    "commit": "the manager may not commit containers to images",
    "distribution": "the manager may not use images: worker images are built and chosen by the control plane",
    "auth": "the manager may not log in to registries",
    "exec": "the manager may not exec in containers",
    "volumes": "the manager may not use volumes",
    "networks": "the manager may not use networks",
    "swarm": "the manager may not use swarm",
    "nodes": "the manager may not use swarm nodes",
    "services": "the manager may not use swarm services",
    "tasks": "the manager may not use swarm tasks",
    "secrets": "the manager may not use secrets",
    "configs": "the manager may not use swarm configs",
    "plugins": "the manager may not use plugins",
    "info": "the manager may not read the engine's system information",
    "system": "the manager may not read or prune the engine's system (df, prune)",
}
_CREATE_RULE = "the manager may not create containers: workers are started with spawn-worker or orch"
_PRUNE_RULE = "the manager may not prune containers"
_HIJACK_RULE = "the manager may not attach to containers or upgrade connections (hijack)"


def hijack_refusal() -> Refusal:
    return Refusal(_HIJACK_RULE)


def route(method: str, target: Target) -> Route:
    """The route of an allowed request; a ``Refusal`` naming the rule for any other."""
    parts = target.parts
    if parts == ("_ping",) and method in ("GET", "HEAD"):
        return Route(PASS)
    if parts == ("version",) and method == "GET":
        return Route(PASS)
    if parts == ("events",) and method == "GET":
        return Route(EVENTS)
    if parts[:1] == ("containers",):
        return _container_route(method, parts)
    rule = _SECTION_RULES.get(parts[0]) if parts else None
    if rule:
        raise Refusal(rule)
    raise Refusal(f"{method} {'/' + '/'.join(parts)} is not an operation the manager may use")


def _container_route(method: str, parts: tuple[str, ...]) -> Route:
    if parts == ("containers", "json") and method == "GET":
        return Route(LIST)
    if parts[1:2] == ("create",):
        raise Refusal(_CREATE_RULE)
    if parts[1:] == ("prune",):
        raise Refusal(_PRUNE_RULE)
    if len(parts) == 3 and (method, parts[2]) in ALLOWED_CONTAINER_OPERATIONS:
        return Route(CONTAINER, container=parts[1])
    if len(parts) >= 3 and parts[2] == "exec":
        raise Refusal(_SECTION_RULES["exec"])
    if len(parts) >= 3 and parts[2] == "attach":
        raise Refusal(_HIJACK_RULE)
    if len(parts) == 2 and method == "DELETE":
        raise Refusal(
            "the manager may not remove containers: `orch cleanup` removes finished workers (and keeps one whose work "
            f"was neither pushed nor bundled); {_ALLOWED_ON_WORKERS}"
        )
    action = parts[2] if len(parts) >= 3 else "(none)"
    raise Refusal(f"the manager may not {method} {action} on containers: {_ALLOWED_ON_WORKERS}")


def not_ours_refusal(ref: str) -> Refusal:
    """A container that exists and is not a worker of this orchestration. Its existence is told
    (a 403, not a 404): see the docker_api module's docstring for why."""
    return Refusal(f"container {ref!r} is not a worker of this orchestration: {_ALLOWED_ON_WORKERS}")


def container_id(document: object) -> str | None:
    """The full id of an inspected container, if it has the form the engine gives."""
    value = document.get("Id") if isinstance(document, Mapping) else None
    return value if isinstance(value, str) and _CONTAINER_ID.fullmatch(value) else None
