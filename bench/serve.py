"""`verger serve` latency and throughput against one photo's inference time, measured in one run.

usage: .venv/bin/python bench/serve.py [--classifier DIR] [--workers N] [--requests N]

Without --classifier, one is made first (verger run on the shared Training split with PCA k = 50, then verger
train). The peer is ONNX Runtime itself: the featurizer on one preprocessed photo, batch 1, one intra-op
thread (a serve worker's settings), timed warm in this process. Then `verger serve` answers POST /identify
with Test photos (keep-alive connections, one client thread per concurrent request) at concurrency 1, 4 and
16: p50 and p99 latency and requests/s, and p50 at concurrency 1 over the inference time (goal <= 2).
Run it on a quiet machine.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

from machine import build, cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
MODEL = os.path.join(SHARED, "models/mobilenet_v2/mobilenet_v2_imagenet.onnx")
FRUITS = os.path.join(SHARED, "datasets/fruits360")


def target_dir():
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return json.loads(meta.stdout)["target_directory"]


def photos(n):
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(FRUITS, "Test")) for f in fs)
    step = max(1, len(files) // n)
    return [open(p, "rb").read() for p in files[::step][:n]], files[::step][:n]


def inference_ms(paths, runs=200):
    """Median ms of the featurizer on one photo, warm, batch 1, one thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])
    inputs = [np.asarray(Image.open(p).resize((224, 224)).convert("RGB"), dtype=np.float32)[None] / 127.5 - 1
              for p in paths[:20]]
    for x in inputs:
        session.run(None, {"input": x.astype(np.float32)})
    times = []
    for i in range(runs):
        x = inputs[i % len(inputs)].astype(np.float32)
        t = time.perf_counter()
        session.run(None, {"input": x})
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def load(port, bodies, concurrency, total):
    latencies, errors = [], []
    lock = threading.Lock()
    per_thread = total // concurrency

    def client(t):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for i in range(per_thread):
            body = bodies[(t * per_thread + i) % len(bodies)]
            start = time.perf_counter()
            conn.request("POST", "/identify", body=body, headers={"Content-Type": "image/jpeg"})
            response = response_body = None
            try:
                response = conn.getresponse()
                response_body = response.read()
            except Exception as e:  # noqa: BLE001 - any failure counts against the service
                errors.append(repr(e))
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            mine.append((time.perf_counter() - start) * 1e3)
            if response.status != 200:
                errors.append(f"{response.status} {response_body[:200]!r}")
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "requests_per_s": len(latencies) / wall,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--classifier")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--requests", type=int, default=1600)
    args = ap.parse_args()
    build(ROOT)
    verger = os.path.join(target_dir(), "release", "verger")
    print(f"{os.cpu_count()} cores, {cpu_model()}; {args.workers} serve workers")

    with tempfile.TemporaryDirectory() as tmp:
        classifier = args.classifier
        if classifier is None:
            run, classifier = os.path.join(tmp, "run"), os.path.join(tmp, "classifier")
            subprocess.run([verger, "run", "--input", os.path.join(FRUITS, "Training"), "--output", run],
                           check=True, stdout=subprocess.DEVNULL)
            subprocess.run([verger, "train", run, "--out", classifier], check=True, stdout=subprocess.DEVNULL)
        bodies, paths = photos(200)
        floor = inference_ms(paths)
        print(f"inference alone (ONNX Runtime, batch 1, 1 thread, warm): {floor:.2f} ms median")

        server = subprocess.Popen([verger, "serve", "--model", classifier, "--port", "0",
                                   "--workers", str(args.workers)], stdout=subprocess.PIPE, text=True)
        try:
            line = server.stdout.readline().strip()
            port = int(line.rsplit(":", 1)[1])
            load(port, bodies, 1, 50)  # warm-up
            results = {}
            for concurrency in (1, 4, 16):
                total = args.requests if concurrency > 1 else args.requests // 4
                results[concurrency] = r = load(port, bodies, concurrency, total)
                print(f"concurrency {concurrency:>2}: {r['requests']} requests, {r['errors']} errors, "
                      f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, {r['requests_per_s']:.1f} requests/s")
            ratio = results[1]["p50_ms"] / floor
            print(f"single-photo latency / inference: {ratio:.2f} (goal <= 2)")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
