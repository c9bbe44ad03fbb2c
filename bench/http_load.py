"""HTTP throughput of the gunicorn server: order-sign (typical patient) vs the bare endpoint, same server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import requests

from .harness import MAX_BODY_BYTES, RULES
from .serve_bench import BARE_PATH

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``python -m bench.serve_bench`` with --workers 2 semantics (gunicorn), on a free loopback port."""

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = TemporaryDirectory(prefix="kbladder-bench-http-")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = {**os.environ, "KBLADDER_PORT": str(self.port), "KBLADDER_WORKERS": str(self.workers),
               "KBLADDER_RULES_DIR": str(RULES), "KBLADDER_RELOAD_INTERVAL_S": "0",
               "KBLADDER_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
               "KBLADDER_DATABASE_URL": f"sqlite:///{Path(self._tmp.name) / 'bench.sqlite3'}"}
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.serve_bench"], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench server exited with {self.proc.returncode}")
            time.sleep(0.2)
        raise RuntimeError("bench server did not become healthy")

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._tmp.cleanup()


def throughput(url: str, body: bytes, *, threads: int, per_thread: int) -> float:
    """Requests per second: ``threads`` clients, each with its own Session, ``per_thread`` POSTs each."""
    errors: list[str] = []

    def client() -> None:
        session = requests.Session()
        headers = {"Content-Type": "application/json"}
        for _ in range(per_thread):
            response = session.post(url, data=body, headers=headers, timeout=60)
            if response.status_code != 200:
                errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                return

    for _ in range(2):  # warm each worker
        requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    workers = [threading.Thread(target=client) for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{url}: {errors[0]}")
    return threads * per_thread / elapsed


def compare(body: bytes, service_path: str, *, threads: int, per_thread: int) -> tuple[float, float]:
    """(hook req/s, bare req/s) against the same gunicorn server, measured alternately."""
    with Server() as server:
        hook = throughput(server.url + service_path, body, threads=threads, per_thread=per_thread)
        bare = throughput(server.url + BARE_PATH, body, threads=threads, per_thread=per_thread)
    return hook, bare
