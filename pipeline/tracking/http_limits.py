"""MLflow's process-wide settings, scoped to one call of ours.

Bounded HTTP: a dead tracking server must cost seconds, not MLflow's default minutes.

MLflow reads its retry and timeout settings from environment variables at each request
(MLFLOW_HTTP_REQUEST_MAX_RETRIES, _BACKOFF_FACTOR, _BACKOFF_JITTER, _TIMEOUT; by default 7 retries with
exponential backoff and a 120 s timeout) and offers no per-client setting. `bounded_http` sets them only for
the duration of one of our calls, leaves any the user set alone, and restores them afterwards. While it is
held, other threads' MLflow calls see the same bounds; training makes no other MLflow calls.

Also what an MLflow error says about the store: it refused (is_rejection), it could not be reached
(is_unreachable), and how much of the message to show (short_error, full_error).
"""
from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

# The environment is process-wide, so the lock that keeps overlapping calls from restoring each other's
# values is too.
_ENVIRONMENT_LOCK = threading.RLock()


@dataclass(frozen=True)
class HttpLimits:
    max_retries: int = 1                # MLflow's own retries of one request (our sender retries on top)
    backoff_factor: int = 1             # seconds; urllib3 waits 0, then factor * 2**(n-1)
    timeout: int = 10                   # seconds to connect and to read one response

    def environment(self) -> dict[str, str]:
        return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.max_retries),
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(self.backoff_factor),
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.timeout)}


@contextmanager
def bounded_http(limits: HttpLimits) -> Iterator[None]:
    """MLflow HTTP requests inside this block use `limits`, except for settings the user exported."""
    with _ENVIRONMENT_LOCK:
        ours = {k: v for k, v in limits.environment().items() if k not in os.environ}
        os.environ.update(ours)
        try:
            yield
        finally:
            for key in ours:
                os.environ.pop(key, None)


def is_rejection(error: BaseException) -> bool:
    """True when the store answered and refused the request (a bad value, a deleted run): retrying cannot
    help. Connection failures, timeouts, 5xx and 429 are transient."""
    if not isinstance(error, MlflowException):
        return False
    status = error.get_http_status_code()
    return 400 <= status < 500 and status != 429


@contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's model logging reads the process-wide tracking URI: point it at `uri` for one call, then
    restore it, and MLFLOW_TRACKING_URI, which MLflow's own restore unsets when no URI was set in code."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _ENVIRONMENT_LOCK:
        exported = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            with _use_tracking_uri(uri):
                yield
        finally:
            if exported is not None:
                os.environ["MLFLOW_TRACKING_URI"] = exported


def is_unreachable(error: BaseException) -> bool:
    """True when the store could not be reached or did not answer in time: a connection refused or reset, a
    host name that does not resolve, a timeout, a server that kept failing (5xx, 429) through MLflow's
    retries, a database server that refused the connection or a sqlite file another process holds locked.
    Going on locally and sending later can help. False for everything else: the store answered and refused,
    or its URI or settings are wrong, which going on locally would only hide."""
    import requests
    import sqlalchemy.exc

    for cause in _causes(error):
        if isinstance(cause, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                              ConnectionError, TimeoutError)):
            return True
        if isinstance(cause, sqlalchemy.exc.OperationalError):
            # A database server's OperationalError is a lost or refused connection; a sqlite file's is one only
            # when another process holds its lock (otherwise the path cannot be opened at all).
            return "locked" in str(cause.orig) if isinstance(cause.orig, sqlite3.Error) else True
    return False


def came_over_http(error: BaseException) -> bool:
    """True for a failed HTTP request to the store, whose message can hold the server's (or a proxy's) whole
    HTML error page."""
    import requests
    from mlflow.exceptions import RestException

    for cause in _causes(error):
        if isinstance(cause, (requests.RequestException, RestException)):
            return True
        # MLflow's wording for a request that failed or got an answer that is not MLflow's JSON.
        if isinstance(cause, MlflowException) and str(cause.message).startswith("API request to"):
            return True
    return False


def _causes(error: BaseException | None) -> Iterator[BaseException]:
    """The error and those it was raised from or while handling (MLflow re-raises requests' errors in both ways)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def short_error(error: BaseException) -> str:
    """The first line of an error, for a one-line warning (MLflow's messages can run to pages: a failed HTTP
    request's message holds the server's whole HTML error page)."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def full_error(error: BaseException) -> str:
    """The whole message, where its details are the reason (torch.export's account of what it could not
    trace); a failed HTTP request's is cut to its first line (short_error)."""
    if came_over_http(error):
        return short_error(error)
    return str(error).strip() or type(error).__name__
