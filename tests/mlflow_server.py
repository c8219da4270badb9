"""A real `mlflow server` for tests (importable as `mlflow_server`: tests/ is on pytest's pythonpath).

sqlite backend and a local artifact folder under `root`, on a free loopback port. `stop` and `start`
again keep the port and the database, so a test can take the server away mid-run and bring it back;
`pause` and `resume` make it hang instead.
Starting costs seconds (MLflow imports its web app): share one server per test module.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MLFLOW = Path(sys.executable).parent / "mlflow"
START_TIMEOUT = 90.0                    # seconds; a first start also creates the database tables
STOP_TIMEOUT = 5.0
# No background job runner (a second process the tests never use, competing for the CPU at start).
SERVER_ENVIRONMENT = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = self.root / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        command = [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                   "--artifacts-destination", str(self.root / "artifacts"),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with self.log_path.open("ab") as log:
            # Its own session, so stop() can end the server and the workers it spawns, and nothing else.
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, **SERVER_ENVIRONMENT})
        self._wait_healthy()

    def stop(self) -> None:
        """SIGTERM to the server's process group (the server and the workers it spawned), SIGKILL if the
        server has not exited and released its port within STOP_TIMEOUT."""
        if self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)  # start_new_session: the group id is the server's pid
            except ProcessLookupError:
                pass
            if self._gone(STOP_TIMEOUT):
                break
        self.process = None

    def _gone(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None and not _listening(self.port):
                return True
            time.sleep(0.05)
        return False

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers, as with a hung server."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=1.0) as response:
                return response.status == 200
        except OSError:
            return False

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"mlflow server on {self.uri} did not become healthy; its log ends:\n{tail}")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
