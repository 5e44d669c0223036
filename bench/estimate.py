"""`verger estimate` against the run it predicts, measured in one go on the shared Training split.

usage: .venv/bin/python bench/estimate.py [--input DIR] [--sample N] [--threads N]

Runs `verger estimate --json` (a random sample of --sample images featurized here), then the full `verger run`
with the same workers, and prints the predicted and the actual wall time, CPU time and cost, and their ratios
(prediction / actual). Run it on a quiet machine.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from machine import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
VERGER = os.path.join(ROOT, "scripts/verger")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", default=os.path.join(SHARED, "datasets/fruits360/Training"))
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; input {args.input}; sample {args.sample}; "
          f"threads {args.threads}")

    started = time.perf_counter()
    estimate = json.loads(subprocess.run(
        [VERGER, "estimate", "--input", args.input, "--sample", str(args.sample), "--threads", str(args.threads),
         "--json"], check=True, capture_output=True, text=True).stdout)
    estimate_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        subprocess.run([VERGER, "run", "--input", args.input, "--output", out, "--threads", str(args.threads)],
                       check=True, capture_output=True)
        report = json.load(open(os.path.join(out, "report.json")))

    here = estimate["here"]
    rows = [
        ("wall s", here["wall_s"], report["wall_s"]),
        ("CPU s", here["cpu_hours"] * 3600, report["cpu_s"]),
        ("cost USD", here["usd"], report["cost"]["usd"]),
    ]
    print(f"estimate: {estimate['images']} images, {estimate['sampled']} sampled in {estimate_s:.1f} s "
          f"(sample {estimate['images_per_s']:.1f} images/s, {estimate['cpu_ms_per_image']:.2f} ms CPU/image)")
    print(f"{'':10} {'predicted':>12} {'actual':>12} {'ratio':>8}")
    for name, predicted, actual in rows:
        print(f"{name:10} {predicted:12.4f} {actual:12.4f} {predicted / actual:8.3f}")
    print(f"the estimate took {estimate_s / report['wall_s'] * 100:.1f} % of the run's wall time")
    for c in estimate["clusters"]:
        print(f"predicted: {c['setup']}: {c['wall_s']:.1f} s, ${c['usd']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
