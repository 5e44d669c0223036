"""The feature cache on a daily run: a full run over the Training split fills a fresh cache, then 1 % new
images are added and 0.5 % changed, and the second run featurizes only those.

usage: .venv/bin/python bench/incremental.py [--input DIR] [--dir DIR] [--threads N] [--repeat R] [--copies K]

Copies the split into DIR/images (so it can be changed), then, each as its own process measured with wait4
(wall, CPU, peak RSS): `verger run --cache DIR/cache` over it (the full run: every image a miss), then adds
1 % new images (Test images, under their labels) and changes 0.5 % (each replaced by another Test image's bytes),
and runs again with the same cache. Prints both runs, the second's share of the first (goal: ≤ 5 % plus
listing), and the report's hit and miss counts. With --copies K, the collection is K copies of the split, each
copy's files made distinct by a JPEG comment segment (same pixels, other bytes, so the cache cannot take one
for another): the per-run costs that do not grow with the collection weigh less. With --repeat R, each run is made R times (the full one into a
fresh cache, the daily one into a copy of the cache the full run left) and the ratio is of the medians: a
shared machine's speed drifts by tens of percent within minutes.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
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


def with_comment(jpeg, text):
    """`jpeg` with a comment segment (COM) after its start marker: the same image in other bytes."""
    assert jpeg[:2] == b"\xff\xd8", "not a JPEG"
    body = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def copy_collection(source, tree, copies):
    """`copies` copies of `source`'s images under their labels; copies after the first carry a comment."""
    if copies == 1:
        shutil.copytree(source, tree)
        return
    for path in images(source):
        label = os.path.basename(os.path.dirname(path))
        os.makedirs(os.path.join(tree, label), exist_ok=True)
        data = open(path, "rb").read()
        name = os.path.basename(path)
        for k in range(copies):
            target = os.path.join(tree, label, name if k == 0 else f"copy{k}-{name}")
            with open(target, "wb") as f:
                f.write(data if k == 0 else with_comment(data, f"verger bench copy {k}"))


def images(folder):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".jpg"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", default=os.path.join(SPLITS, "Training"))
    parser.add_argument("--dir", default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--copies", type=int, default=1)
    args = parser.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="verger-incremental-")
    tree, cache = os.path.join(work, "images"), os.path.join(work, "cache")
    for path in (tree, cache, os.path.join(work, "full"), os.path.join(work, "daily")):
        shutil.rmtree(path, ignore_errors=True)
    copy_collection(args.input, tree, args.copies)
    listed = images(tree)
    n = len(listed)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}; {n} images, "
          f"{args.threads} threads")

    def run(name, cache_from=None):
        """`name` made --repeat times, each with a cache copied from `cache_from` (else a new one)."""
        runs = []
        out = os.path.join(work, name)
        for _ in range(args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            if cache_from:
                shutil.copytree(cache_from, cache)
            wall, cpu, rss = measure([VERGER, "run", "--input", tree, "--output", out, "--cache", cache,
                                      "--threads", str(args.threads)])
            report = json.load(open(os.path.join(out, "report.json")))
            runs.append((wall, cpu, rss, report))
        return runs

    fulls = run("full")
    after_full = os.path.join(work, "cache-after-full")
    shutil.rmtree(after_full, ignore_errors=True)
    shutil.copytree(cache, after_full)

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
    dailies = run("daily", cache_from=after_full)

    print(f"{'':8} {'wall s':>8} {'CPU s':>8} {'peak MiB':>9} {'hits':>6} {'featurized':>10} {'unread':>7} "
          f"{'hashed':>7} {'PCA rows merged':>15} {'computed':>8}")
    named = [(f"full-{i + 1}", r) for i, r in enumerate(fulls)] + [(f"daily-{i + 1}", r) for i, r in enumerate(dailies)]
    for name, (wall, cpu, rss, report) in named:
        c = report["cache"]
        print(f"{name:8} {wall:8.2f} {cpu:8.2f} {rss:9.0f} {c['hits']:6} {c['featurized']:10} {c['unread']:7} "
              f"{c['hashed']:7} {c.get('pca_rows_merged', 0):15} {c.get('pca_rows_computed', 0):8}")
    full = [statistics.median(r[i] for r in fulls) for i in range(2)]
    daily = [statistics.median(r[i] for r in dailies) for i in range(2)]
    last = dailies[-1][3]
    listing = sum(s["wall_s"] for s in last["stages"] if s["stage"] in ("list", "cache_load"))
    print(f"daily / full (medians of {args.repeat}): wall {daily[0] / full[0]:.3f}, CPU {daily[1] / full[1]:.3f} "
          f"(goal ≤ 0.05 plus listing; listing and cache load took {listing:.2f} s of the last daily run's wall)")
    stages = ", ".join(f"{s['stage']} {s['wall_s']:.2f}" for s in last["stages"])
    print(f"last daily run's stages (wall s): {stages}")
    print(f"the daily report's estimate of the time the cache saved: {last['cache']['saved_s']:.1f} s")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
