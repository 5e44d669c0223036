"""The feature cache on a daily run: a full run over the Training split fills a fresh cache, then 1 % new
images are added and 0.5 % changed, and the second run featurizes only those.

usage: .venv/bin/python bench/incremental.py [--input DIR] [--dir DIR] [--threads N]

Copies the split into DIR/images (so it can be changed), then, each as its own process measured with wait4
(wall, CPU, peak RSS): `verger run --cache DIR/cache` over it (the full run: every image a miss), then adds
1 % new images (Test images, under their labels) and changes 0.5 % (each replaced by another Test image's bytes),
and runs again with the same cache. Prints both runs, the second's share of the first (goal: ≤ 5 % plus
listing), and the report's hit and miss counts. Run it on a quiet machine.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from machine import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERGER = os.path.join(ROOT, "scripts/verger")
SPLITS = os.path.join(ROOT, "../shared/datasets/fruits360")


def measure(args):
    """Runs `args`; returns (exit code, wall s, CPU s, peak RSS MiB)."""
    started = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wait4 gives this child's own rusage.
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{args} failed ({code}): {process.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def images(folder):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".jpg"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", default=os.path.join(SPLITS, "Training"))
    parser.add_argument("--dir", default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="verger-incremental-")
    tree, cache = os.path.join(work, "images"), os.path.join(work, "cache")
    for path in (tree, cache, os.path.join(work, "full"), os.path.join(work, "daily")):
        shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(args.input, tree)
    listed = images(tree)
    n = len(listed)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}; {n} images, "
          f"{args.threads} threads")

    def run(name):
        out = os.path.join(work, name)
        wall, cpu, rss = measure([VERGER, "run", "--input", tree, "--output", out, "--cache", cache,
                                  "--threads", str(args.threads)])
        report = json.load(open(os.path.join(out, "report.json")))
        return wall, cpu, rss, report

    full = run("full")

    # A day's changes: 1 % new images, 0.5 % changed, both from the Test split (bytes the cache lacks).
    spare = images(os.path.join(SPLITS, "Test"))
    new, changed = n // 100, n // 200
    for i, source in enumerate(spare[:new]):
        label = os.path.basename(os.path.dirname(source))
        os.makedirs(os.path.join(tree, label), exist_ok=True)
        shutil.copy(source, os.path.join(tree, label, f"new-{i}.jpg"))
    step = n // changed
    for i in range(changed):
        shutil.copy(spare[new + i], listed[i * step])
    daily = run("daily")

    print(f"{'':8} {'wall s':>8} {'CPU s':>8} {'peak MiB':>9} {'hits':>6} {'featurized':>10} {'unread':>7} "
          f"{'hashed':>7} {'PCA rows merged':>15} {'computed':>8}")
    for name, (wall, cpu, rss, report) in (("full", full), ("daily", daily)):
        c = report["cache"]
        print(f"{name:8} {wall:8.2f} {cpu:8.2f} {rss:9.0f} {c['hits']:6} {c['featurized']:10} {c['unread']:7} "
              f"{c['hashed']:7} {c.get('pca_rows_merged', 0):15} {c.get('pca_rows_computed', 0):8}")
    listing = sum(s["wall_s"] for s in daily[3]["stages"] if s["stage"] in ("list", "cache_load"))
    print(f"daily / full: wall {daily[0] / full[0]:.3f}, CPU {daily[1] / full[1]:.3f} "
          f"(goal ≤ 0.05 plus listing; listing and cache load took {listing:.2f} s of the daily run's wall)")
    stages = ", ".join(f"{s['stage']} {s['wall_s']:.2f}" for s in daily[3]["stages"])
    print(f"daily run's stages (wall s): {stages}")
    saved = daily[3]["cache"]["saved_s"]
    print(f"the daily report's estimate of the time the cache saved: {saved:.1f} s")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
