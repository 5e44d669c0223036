"""verger end to end vs the inference floor and a Python peer, measured in one run on the same images.

usage: .venv/bin/python bench/bench.py [--input DIR] [--threads N] [--batch-size N] [--rounds N] [--precision bf16]

With `--precision bf16`, the floor and `verger run` are measured in bf16 too (OpenVINO, on CPUs with AVX512-BF16
or AMX), in the same rounds, against their fp32 selves (goal: bf16 floor >= 1.8x the fp32 floor).

Each contender runs as its own child process; CPU seconds and peak RSS come from that child's rusage, wall
time from the clock. The contenders take turns for `--rounds` rounds (default 3), so that a slow spell of the
machine hits them alike; each round's ratios are printed, then the medians. Run it on a quiet machine.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from machine import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
MODEL = os.path.join(SHARED, "models/mobilenet_v2/mobilenet_v2_imagenet.onnx")
# The original Spark + TensorFlow pipeline cannot run here (no Spark, no TensorFlow); these are the figures
# the project brief records for it on this machine type, for the last column only.
ORIGINAL = {"cpu_ms_per_image": 33.5, "images_per_s": 52.0, "peak_rss_mib": 5000.0}


def measure(cmd):
    """Runs cmd in a fresh child and returns wall, CPU and peak RSS of that child alone."""
    probe = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)\n"
        "w = time.perf_counter() - t\n"
        "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'rc': p.returncode, 'wall_s': w, 'cpu_s': r.ru_utime + r.ru_stime,"
        " 'peak_rss_mib': r.ru_maxrss / 1024, 'stdout': p.stdout, 'stderr': p.stderr[-2000:]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout)
    if m["rc"] not in (0, 3):
        sys.exit(f"{cmd[0]} failed ({m['rc']}):\n{m['stderr']}")
    return m


def target_dir():
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return json.loads(meta.stdout)["target_directory"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default=os.path.join(SHARED, "datasets/fruits360/Training"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: also measure the floor and verger run in bf16, against fp32")
    args = ap.parse_args()

    build(ROOT)
    release = os.path.join(target_dir(), "release")
    n = sum(1 for _, _, files in os.walk(args.input) for f in files if f.endswith(".jpg"))
    contenders = {
        "inference floor": lambda tmp: [os.path.join(release, "examples/inference_floor"), MODEL, args.input, str(n),
                                        str(args.threads), str(args.batch_size)],
        "verger run": lambda tmp: [os.path.join(release, "verger"), "run", "--input", args.input, "--output",
                                   os.path.join(tmp, "verger"), "--threads", str(args.threads),
                                   "--batch-size", str(args.batch_size)],
        "python peer": lambda tmp: [sys.executable, os.path.join(ROOT, "bench/python_peer.py"), "--input",
                                    args.input, "--output", os.path.join(tmp, "peer.parquet"),
                                    "--threads", str(args.threads)],
    }
    if args.precision == "bf16":
        contenders["bf16 floor"] = lambda tmp: contenders["inference floor"](tmp) + ["cpu", "bf16"]
        contenders["verger run bf16"] = lambda tmp: contenders["verger run"](tmp) + ["--precision", "bf16"]
    print(f"{n} images from {args.input}, {args.threads} threads, batch {args.batch_size}, {os.cpu_count()} cores")
    rounds = []
    for r in range(args.rounds):
        rows = {}
        for name, cmd in contenders.items():
            with tempfile.TemporaryDirectory() as tmp:
                m = measure(cmd(tmp))
            m["images_per_s"] = n / m["wall_s"]
            m["cpu_ms_per_image"] = m["cpu_s"] * 1000 / n
            rows[name] = m
        rounds.append(rows)
        print(f"\nround {r + 1}")
        print_table(rows)
        print_ratios(ratios(rows))

    median = {name: {key: statistics.median(rows[name][key] for rows in rounds)
                     for key in ("wall_s", "images_per_s", "cpu_ms_per_image", "peak_rss_mib")}
              for name in contenders}
    each = [ratios(rows) for rows in rounds]
    print(f"\nmedians of {len(rounds)} rounds")
    print_table(median)
    print_ratios({key: statistics.median(r[key] for r in each) for key in each[0]})
    print("* original Spark + TensorFlow figures as recorded in the project brief, not measured in this run")


def ratios(rows):
    v, f, p = rows["verger run"], rows["inference floor"], rows["python peer"]
    return {
        "cpu_vs_floor": v["cpu_ms_per_image"] / f["cpu_ms_per_image"],
        "throughput_vs_floor": v["images_per_s"] / f["images_per_s"],
        "throughput_vs_peer": v["images_per_s"] / p["images_per_s"],
        "peer_cpu_vs_verger": p["cpu_ms_per_image"] / v["cpu_ms_per_image"],
        "throughput_vs_original": v["images_per_s"] / ORIGINAL["images_per_s"],
        "original_cpu_vs_verger": ORIGINAL["cpu_ms_per_image"] / v["cpu_ms_per_image"],
        **({
            "bf16_floor_vs_fp32_floor": rows["bf16 floor"]["images_per_s"] / f["images_per_s"],
            "bf16_run_vs_fp32_run": rows["verger run bf16"]["images_per_s"] / v["images_per_s"],
            "bf16_run_cpu_vs_fp32_run": rows["verger run bf16"]["cpu_ms_per_image"] / v["cpu_ms_per_image"],
        } if "bf16 floor" in rows else {}),
    }


def print_table(rows):
    print(f"{'':18} {'wall s':>8} {'images/s':>9} {'CPU ms/img':>11} {'peak MiB':>9}")
    for name, m in rows.items():
        print(f"{name:18} {m['wall_s']:8.1f} {m['images_per_s']:9.1f} {m['cpu_ms_per_image']:11.2f} {m['peak_rss_mib']:9.0f}")


def print_ratios(r):
    print(f"verger CPU per image / floor:        {r['cpu_vs_floor']:.3f}  (goal <= 1.10)")
    print(f"verger throughput / floor:           {r['throughput_vs_floor']:.3f}  (goal >= 0.90)")
    print(f"verger throughput / python peer:     {r['throughput_vs_peer']:.2f}x (goal >= 1.2)")
    print(f"python peer CPU per image / verger:  {r['peer_cpu_vs_verger']:.2f}x")
    print(f"verger throughput / original*:       {r['throughput_vs_original']:.2f}x (goal >= 4)")
    print(f"original* CPU per image / verger:    {r['original_cpu_vs_verger']:.2f}x")
    if "bf16_floor_vs_fp32_floor" in r:
        print(f"bf16 floor / fp32 floor:             {r['bf16_floor_vs_fp32_floor']:.2f}x (goal >= 1.8)")
        print(f"verger run bf16 / fp32, throughput:  {r['bf16_run_vs_fp32_run']:.2f}x")
        print(f"verger run bf16 / fp32, CPU per img: {r['bf16_run_cpu_vs_fp32_run']:.3f}")


if __name__ == "__main__":
    main()
