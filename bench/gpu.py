"""`--device cuda` against the CPU in one run: fidelity of the GPU's features, throughput end to end and of
inference alone, the CPU cores the GPU run used (decoding and resizing stay on the CPU), GPU utilisation.

usage: python bench/gpu.py [--verger BIN] [--floor BIN] [--train DIR] [--test DIR] [--device cuda:0]
                           [--threads N] [--batch-size N] [--images N]

Needs an NVIDIA GPU, its driver, and ONNX Runtime's GPU build (scripts/setup-gpu, or VERGER_ORT_GPU_LIB).
BIN defaults to this checkout's release build (`verger` and the `inference_floor` example).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import MODEL, SHARED, measure, target_dir  # noqa: E402
from machine import cpu_model  # noqa: E402


def features(output):
    """path -> features of a run's result."""
    table = pq.read_table(os.path.join(output, "result"), columns=["path", "features"])
    return dict(zip(table.column("path").to_pylist(), table.column("features").to_numpy(zero_copy_only=False)))


def fidelity(cpu, gpu):
    a, b = features(cpu), features(gpu)
    assert a.keys() == b.keys(), "the runs featurized different images"
    x = np.stack([np.asarray(a[k], dtype=np.float64) for k in sorted(a)])
    y = np.stack([np.asarray(b[k], dtype=np.float64) for k in sorted(a)])
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return {"images": len(a), "max_abs_diff": float(np.abs(x - y).max()), "mean_cosine": float(cos.mean()),
            "min_cosine": float(cos.min())}


def sample_gpu(samples, stop):
    """GPU utilisation (%) every 200 ms while the GPU run goes on."""
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
        except FileNotFoundError:
            return  # no nvidia-smi: no utilisation figure

        if out.returncode == 0 and out.stdout.strip():
            samples.append(float(out.stdout.split()[0]))
        time.sleep(0.2)


def run(verger, data, output, device, threads, batch):
    cmd = [verger, "run", "--input", data, "--output", output, "--model", MODEL, "--device", device,
           "--threads", str(threads)]
    if batch and device != "cpu":
        cmd += ["--batch-size", str(batch)]
    m = measure(cmd)
    report = json.load(open(os.path.join(output, "report.json")))
    featurize = next(s for s in report["stages"] if s["stage"] == "featurize")
    return {"wall_s": m["wall_s"], "cpu_s": m["cpu_s"], "images_per_s": report["images_per_s"],
            "cpu_cores_used": m["cpu_s"] / m["wall_s"], "featurize_wall_s": featurize["wall_s"],
            "featurize_cpu_s": featurize["cpu_s"], "device": report["versions"].get("device")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verger")
    ap.add_argument("--floor")
    ap.add_argument("--train", default=os.path.join(SHARED, "datasets/fruits360/Training"))
    ap.add_argument("--test", default=os.path.join(SHARED, "datasets/fruits360/Test"))
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--images", type=int, default=4096, help="images for the inference-only measure")
    args = ap.parse_args()
    release = None if args.verger and args.floor else os.path.join(target_dir(), "release")
    verger = args.verger or os.path.join(release, "verger")
    floor = args.floor or os.path.join(release, "examples", "inference_floor")
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; device {args.device}")

    with tempfile.TemporaryDirectory() as tmp:
        out = lambda name: os.path.join(tmp, name)  # noqa: E731
        run(verger, args.test, out("test-cpu"), "cpu", args.threads, 0)
        run(verger, args.test, out("test-gpu"), args.device, args.threads, args.batch_size)
        print("fidelity on the Test split (GPU vs CPU features):", json.dumps(fidelity(out("test-cpu"),
                                                                                          out("test-gpu"))))
        cpu = run(verger, args.train, out("train-cpu"), "cpu", args.threads, 0)
        samples, stop = [], threading.Event()
        sampler = threading.Thread(target=sample_gpu, args=(samples, stop))
        sampler.start()
        gpu = run(verger, args.train, out("train-gpu"), args.device, args.threads, args.batch_size)
        stop.set()
        sampler.join()
        gpu["gpu_utilisation_mean_pct"] = sum(samples) / len(samples) if samples else None
        print("end to end, CPU:", json.dumps(cpu))
        print("end to end, GPU:", json.dumps(gpu))
        print(f"GPU / CPU end to end: {gpu['images_per_s'] / cpu['images_per_s']:.2f}x")
        for device, batch in (("cpu", 1), (args.device, args.batch_size)):
            line = subprocess.run([floor, MODEL, args.test, str(args.images), str(args.threads), str(batch), device],
                                  capture_output=True, text=True, check=True).stdout
            print(f"inference only, {device}, batch {batch}:", line.strip())


if __name__ == "__main__":
    main()
