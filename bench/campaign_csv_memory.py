"""Peak memory of the web process while it takes a 1,000,000-row campaign CSV upload.

Run: ``.venv/bin/python -m bench.campaign_csv_memory [ROWS]`` (default 1,000,000).
It starts its own redis-server on a free port (never touches one already running)
and serves the app from a fresh subprocess per upload, so each process's peak RSS
(``VmHWM`` in ``/proc/<pid>/status``) belongs to that upload alone. The baseline,
measured in the same run, is the same upload with 10,000 rows: flat memory means a
ratio near 1, whereas reading the file whole would grow with the row count.
The campaigns are scheduled far ahead, so nothing is sent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.servers import redis_server
from cli.campaign import PostroomAPI
from web.testing import free_port

TOKEN = "bench-token"
BASELINE_ROWS = 10_000


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("email,name,city\r\n")
        for i in range(rows):
            handle.write(f"member{i:07d}@example.com,Member {i},City {i % 97}\r\n")


def serve(port: int) -> None:
    """The child process: the app on *port*, configured from the environment."""
    from werkzeug.serving import make_server

    from web import create_app

    make_server("127.0.0.1", port, create_app(), threaded=False).serve_forever()


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc status")


def upload(redis_url: str, csv_path: Path) -> tuple[int, int, float, int]:
    """Serve the app in a fresh process, upload *csv_path*; (idle KiB, peak KiB, s, total)."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "SECRET_KEY": "bench", "API_TOKENS": TOKEN,
           "POSTROOM_ENV": "development"}
    child = subprocess.Popen([sys.executable, "-m", "bench.campaign_csv_memory", "--serve",
                              str(port)], env=env)
    try:
        api = PostroomAPI(f"http://127.0.0.1:{port}", TOKEN, timeout=3600)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        api.request("GET", "/api/campaigns")  # warm: imports, first request, connections
        idle = peak_rss_kib(child.pid)
        started = time.perf_counter()
        accepted = api.create_from_csv(csv_path, {"subject": "Hello {{ name }}",
                                                  "body": "Hi {{ name }} in {{ city }}",
                                                  "send_at": "2099-01-01T00:00:00Z"})
        elapsed = time.perf_counter() - started
        return idle, peak_rss_kib(child.pid), elapsed, int(accepted["total"])
    finally:
        child.terminate()
        child.wait(timeout=10)


def main(rows: int) -> None:
    with redis_server() as redis_url, tempfile.TemporaryDirectory() as workdir:
        client = redis.Redis.from_url(redis_url)
        results = {}
        for count in (BASELINE_ROWS, rows):
            path = Path(workdir) / f"rows-{count}.csv"
            write_csv(path, count)
            size_mib = path.stat().st_size / 2**20
            idle, peak, elapsed, total = upload(redis_url, path)
            assert total == count, (total, count)
            results[count] = peak
            print(f"{count:>9,} rows ({size_mib:6.1f} MiB CSV): web peak RSS "
                  f"{peak / 1024:7.1f} MiB (idle {idle / 1024:.1f} MiB, "
                  f"+{(peak - idle) / 1024:.1f} MiB) in {elapsed:6.1f} s "
                  f"({count / elapsed:,.0f} rows/s)")
            client.flushdb()
            path.unlink()
        ratio = results[rows] / results[BASELINE_ROWS]
        print(f"peak RSS ratio {rows:,} rows / {BASELINE_ROWS:,} rows: {ratio:.2f} "
              f"(the file is {rows / BASELINE_ROWS:.0f}x larger)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
