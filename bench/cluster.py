"""verger run on a local Ballista cluster with 1 and then 2 executors (one task slot each), same images.

usage: .venv/bin/python bench/cluster.py [--input DIR] [--limit N]

Starts `verger scheduler` and the executors on 127.0.0.1, runs `verger run --cluster` (featurization and
output written on the executors, PCA fitting and commits on the client), prints wall time and images/s for
each and the speed-up. On this 2-core machine two executors can at best double one; the client's own work
(listing, reading the staged features for PCA, commits) and the per-job overhead come on top. Uses --limit images (default 2,000) of the Training sample.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from bench import target_dir  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared")
PORT = 26000


def wait_port(port):
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def executors_listed():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/api/executors", timeout=5) as r:
            return len(json.load(r))
    except Exception:
        return 0


def run_with(verger, executors, images, work):
    processes = [subprocess.Popen([verger, "scheduler", "--port", str(PORT)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)]
    try:
        wait_port(PORT)
        for i in range(executors):
            port = PORT + 2 + 2 * i
            processes.append(subprocess.Popen(
                [verger, "executor", "--scheduler", f"127.0.0.1:{PORT}", "--port", str(port), "--slots", "1",
                 "--work-dir", os.path.join(work, f"executor-{executors}-{i}")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port)
        while executors_listed() < executors:
            time.sleep(0.2)
        output = os.path.join(work, f"out-{executors}")
        started = time.perf_counter()
        run = subprocess.run([verger, "run", "--input", images, "--output", output, "--cluster",
                              f"df://127.0.0.1:{PORT}", "--partition-rows", "64", "--threads", str(executors)],
                             capture_output=True, text=True)
        wall = time.perf_counter() - started
        if run.returncode not in (0, 3):
            sys.exit(f"verger run --cluster failed:\n{run.stderr[-3000:]}")
        report = json.load(open(os.path.join(output, "report.json")))
        return wall, report["counts"]["featurized"]
    finally:
        for p in processes:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default=os.path.join(SHARED, "datasets/fruits360/Training"))
    ap.add_argument("--limit", type=int, default=2000)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--workspace", "--all-targets"], cwd=ROOT, check=True)
    verger = os.path.join(target_dir(), "release", "verger")
    work = tempfile.mkdtemp(prefix="verger-cluster-bench-")
    try:
        images = os.path.join(work, "images")
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(args.input) for f in names if f.endswith(".jpg"))
        for f in files[:: max(1, len(files) // args.limit)][: args.limit]:
            target = os.path.join(images, os.path.basename(os.path.dirname(f)))
            os.makedirs(target, exist_ok=True)
            shutil.copy(f, target)
        results = {n: run_with(verger, n, images, work) for n in (1, 2)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'executors':>9} {'wall s':>8} {'images/s':>9}")
    for n, (wall, count) in results.items():
        print(f"{n:>9} {wall:8.1f} {count / wall:9.1f}")
    print(f"speed-up with 2 executors: {results[1][0] / results[2][0]:.2f}x ({os.cpu_count()} cores bound it)")


if __name__ == "__main__":
    main()
