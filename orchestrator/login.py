"""Checking the Claude credential before a batch starts, so that a wrong login stops it in
seconds instead of every worker spending its time limit on Claude Code's retries.

It asks the API for its list of models: free, and refused with 401 or 403 when the credential
is not accepted. Any other answer (a gateway without that endpoint, say) lets the batch go on:
the endpoint is there, and the credential was not refused.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

from .errors import UserError
from .relay import DEFAULT_UPSTREAM
from .secrets import ClaudeCredential

CHECK_TIMEOUT = 15.0
RESET_PAUSES = (1.0, 2.0)  # seconds before asking again when a connection was dropped
# What Claude Code sends with an OAuth token, without which the API refuses one.
OAUTH_BETA = "oauth-2025-04-20"


class LoginRefused(UserError):
    pass


def check_login(credential: ClaudeCredential, api_url: str | None, *, timeout: float = CHECK_TIMEOUT) -> None:
    """Return when the API accepts the credential (or cannot say); else one clear error."""
    base = (api_url or DEFAULT_UPSTREAM).rstrip("/")
    headers = {**credential.headers(), "anthropic-version": "2023-06-01"}
    if not credential.is_api_key:
        headers["anthropic-beta"] = OAUTH_BETA
    request = urllib.request.Request(f"{base}/v1/models?limit=1", headers=headers, method="GET")
    for pause in (*RESET_PAUSES, None):
        try:
            _ask(request, timeout, "API key" if credential.is_api_key else "Claude token")
            return
        except _Dropped:
            if pause is None:
                raise
            time.sleep(pause)  # a connection dropped on its way (a busy gateway): asked again


class _Dropped(UserError):
    pass


def _ask(request: urllib.request.Request, timeout: float, what: str) -> None:
    base = request.full_url.rsplit("/v1/", 1)[0]
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            detail = _error_message(exc.read())
            raise LoginRefused(
                f"the {what} was refused ({exc.code}){': ' + detail if detail else ''}; check the token file "
                "(or skip this check with --no-login-check)"
            ) from None
        return
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        dropped = isinstance(reason, ConnectionResetError | ConnectionAbortedError | http.client.RemoteDisconnected)
        raise (_Dropped if dropped else UserError)(
            f"cannot reach the API at {base}: {reason} (check --api-url and the network, or skip this check with "
            "--no-login-check)"
        ) from None


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else ""
