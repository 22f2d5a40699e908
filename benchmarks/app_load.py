"""Load test of the web app: N concurrent `/reenact` clients against a local server (localhost only).

Starts `app.py` on a free port with the embedded weights, sends N simultaneous reenactment requests
(the astronaut driven by `examples/driving_webcam.mp4`, 4 s) through `gradio_client`, and prints
successes, wall time, per-request latency and the server's peak RSS (sampled every 0.2 s, the app
process and its children). Usage: ``python benchmarks/app_load.py [--clients 8]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int) -> float:
    """RSS of a process and its children (MiB), from /proc."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):  # no children file: count the process alone
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError):  # a child that ended between the two reads counts as 0
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    from gradio_client import Client, handle_file

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_PORT": str(port)}
    import tempfile

    log = open(Path(tempfile.gettempdir()) / "metaportrait_app_load_server.log", "w")  # not a result to keep
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(1)
        idle = _rss_mib(proc.pid)
        peak = [idle]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_mib(proc.pid))
                time.sleep(0.2)

        threading.Thread(target=sample, daemon=True).start()

        def one(i: int) -> tuple[bool, float, str]:
            t0 = time.perf_counter()
            try:
                Client(url, verbose=False).predict(
                    handle_file(str(REPO / "examples" / "astronaut.jpg")),
                    handle_file(str(REPO / "examples" / "driving_webcam.mp4")),
                    "relative", False, api_name="/reenact")
                return True, time.perf_counter() - t0, ""
            except Exception as exc:  # reported, not raised: the table counts failures
                return False, time.perf_counter() - t0, str(exc)[:200]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, range(args.clients)))
        wall = time.perf_counter() - t0
        time.sleep(2)
        after = _rss_mib(proc.pid)
        stop.set()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ok = [r for r in results if r[0]]
    lat = [r[1] for r in ok]
    print(f"| clients | successes | wall s | median latency s | max latency s | RSS idle MiB | peak RSS MiB | RSS after MiB |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.clients} | {len(ok)}/{args.clients} | {wall:.1f} | {statistics.median(lat) if lat else float('nan'):.1f} "
          f"| {max(lat) if lat else float('nan'):.1f} | {idle:.0f} | {peak[0]:.0f} | {after:.0f} |")
    for r in results:
        if not r[0]:
            print("failure:", r[2])
    print(f"\npeak RSS {peak[0] / 1024:.2f} GiB (target < 3 GiB for 8 concurrent users)")


if __name__ == "__main__":
    main()
