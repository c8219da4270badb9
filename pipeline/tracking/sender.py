"""Send metrics from a background thread, so a training step never waits on the network.

`put` only queues. The thread sends batches of up to 1000 values (MLflow's log_batch limit); while the
store is unreachable it keeps the batch and retries with backoff, in order, dropping nothing: one
WARNING when sending starts failing, one INFO when it recovers. `close` gives it a bounded time to send
the rest and reports what is still unsent (the run's local copy has it; replay sends it).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlflow.entities import Metric

from pipeline.tracking.http_limits import is_rejection, short_error

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # MLflow's cap on metrics per log_batch call
COALESCE_SECONDS = 1.0


@dataclass(frozen=True)
class Backoff:
    first: float = 0.5                  # seconds before the first retry
    longest: float = 5.0                # the wait doubles up to this


@dataclass
class SendReport:
    sent: int                           # values the store accepted
    unsent: int                         # still queued when close() gave up
    rejected: int                       # values the store refused (bad value, deleted run): never retried


class MetricSender:
    def __init__(self, send: Callable[[list[Metric]], None], target: str, backoff: Backoff = Backoff()) -> None:
        """`send` delivers one batch or raises; `target` names the store in log messages."""
        self._send, self._target, self._backoff = send, target, backoff
        self._queue: queue.SimpleQueue[Metric] = queue.SimpleQueue()
        self._batch: list[Metric] = []        # taken from the queue, not yet accepted
        self._closing = threading.Event()
        self._wake = threading.Event()        # cuts a backoff wait short (close wants a last try now)
        self._deadline = float("inf")
        self._sent = self._rejected = 0
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="mlflow-metric-sender", daemon=True)
        self._thread.start()

    def put(self, metrics: list[Metric]) -> None:
        for metric in metrics:
            self._queue.put(metric)

    def close(self, timeout: float) -> SendReport:
        """Stop after sending what is queued, waiting at most `timeout` seconds for an unreachable store."""
        self._deadline = time.monotonic() + timeout
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout)
        # A batch still in flight counts as unsent; should it land later, replay skips it (and the store
        # drops exact duplicates anyway).
        return SendReport(self._sent, len(self._batch) + self._queue.qsize(), self._rejected)

    def _run(self) -> None:
        delay = self._backoff.first
        while True:
            if not self._batch:
                self._batch = self._take()
                if not self._batch:
                    if self._closing.is_set():
                        return
                    continue
            try:
                self._send(self._batch)
            except Exception as error:  # MLflow raises several types for an unreachable store
                if is_rejection(error):
                    self._reject(error)
                    continue
                if self._closing.is_set() and time.monotonic() >= self._deadline:
                    return
                self._note_failure(error)
                self._wake.wait(min(delay, max(self._deadline - time.monotonic(), 0.0)))
                self._wake.clear()
                delay = min(delay * 2, self._backoff.longest)
                continue
            if self._failing:
                self._failing = False
                log.info("MLflow store %s is reachable again; sending the %d queued metric values", self._target,
                         self._queue.qsize())
            self._sent += len(self._batch)
            self._batch = []
            delay = self._backoff.first

    def _take(self) -> list[Metric]:
        """Up to MAX_BATCH queued values, gathered for up to COALESCE_SECONDS after the first: a log_batch call
        costs milliseconds of CPU whatever its size (bench/overhead.py), so fewer, larger calls take less from
        training. Waits briefly for the first value so an idle thread does not spin."""
        try:
            batch = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + (0.0 if self._closing.is_set() else COALESCE_SECONDS)
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _note_failure(self, error: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning("cannot send metrics to MLflow store %s (%s); training goes on, metrics are kept and "
                        "retried", self._target, short_error(error))

    def _reject(self, error: Exception) -> None:
        log.warning("MLflow store %s refused %d metric values (%s); they stay in the run's local copy",
                    self._target, len(self._batch), short_error(error))
        self._rejected += len(self._batch)
        self._batch = []
