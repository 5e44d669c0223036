"""The feature cache on a daily run: a full run over the Training split fills a fresh cache, then 1 % new
images are added and 0.5 % changed, and the second run featurizes only those.

usage: .venv/bin/python bench/incremental.py [--input DIR] [--dir DIR] [--threads N] [--repeat R] [--copies K]

Copies the split into DIR/images-full, and makes DIR/images-daily of hard links to it with 1 % new images
(Test images, under their labels) and 0.5 % changed (each replaced by another Test image's bytes). Then, each
as its own process measured with wait4 (wall, CPU, peak RSS), with the tree in turn at DIR/images: `verger run
--cache DIR/cache` over the full tree (every image a miss), and over the daily tree with the cache it left. Prints both runs, the second's share of the first (goal: ≤ 5 % plus
listing), and the report's hit and miss counts. With --copies K, the collection is K copies of the split, each
copy's files made distinct by a JPEG comment segment (same pixels, other bytes, so the cache cannot take one
for another): the per-run costs that do not grow with the collection weigh less. With --repeat R, R pairs are made in turn (the full run into a fresh
cache, the daily one into a copy of the cache the first full run left) and the ratio is the median of the
pairs' ratios: a shared machine's speed drifts by tens of percent within minutes.
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
    # Both runs read the same path (the cache knows unchanged files by path, size and time): the full run's
    # tree and the daily one's take turns under it.
    tree, cache = os.path.join(work, "images"), os.path.join(work, "cache")
    base, day = os.path.join(work, "images-full"), os.path.join(work, "images-daily")
    for path in (tree, base, day, cache, os.path.join(work, "full"), os.path.join(work, "daily")):
        shutil.rmtree(path, ignore_errors=True)
    copy_collection(args.input, base, args.copies)
    listed = images(base)
    n = len(listed)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}; {n} images, "
          f"{args.threads} threads")

    # A day's changes, in a tree of hard links (same files, same times): 1 % new images, 0.5 % changed, both
    # from the Test split (bytes the cache lacks).
    shutil.copytree(base, day, copy_function=os.link)
    spare = images(os.path.join(SPLITS, "Test"))
    new, changed = n // 100, n // 200
    for i, source in enumerate(spare[:new]):
        label = os.path.basename(os.path.dirname(source))
        os.makedirs(os.path.join(day, label), exist_ok=True)
        shutil.copy(source, os.path.join(day, label, f"new-{i}.jpg"))
    step = n // changed
    for i in range(changed):
        target = os.path.join(day, os.path.relpath(listed[i * step], base))
        os.remove(target)  # a link to the full run's file: replaced, not written through
        shutil.copy(spare[new + i], target)

    after_full = os.path.join(work, "cache-after-full")

    def run(name, source, cache_from=None):
        """One run over `source` (placed at `tree`), with a cache copied from `cache_from`, else a new one."""
        out = os.path.join(work, name)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        if cache_from:
            shutil.copytree(cache_from, cache)
        os.rename(source, tree)
        try:
            wall, cpu, rss = measure([VERGER, "run", "--input", tree, "--output", out, "--cache", cache,
                                      "--threads", str(args.threads)])
        finally:
            os.rename(tree, source)
        return wall, cpu, rss, json.load(open(os.path.join(out, "report.json")))

    # Full and daily runs take turns, so that a drift of the machine's speed weighs on both alike.
    fulls, dailies = [], []
    for i in range(args.repeat):
        fulls.append(run("full", base))
        if i == 0:
            shutil.rmtree(after_full, ignore_errors=True)
            shutil.copytree(cache, after_full)
        dailies.append(run("daily", day, cache_from=after_full))

    print(f"{'':8} {'wall s':>8} {'CPU s':>8} {'peak MiB':>9} {'hits':>6} {'featurized':>10} {'unread':>7} "
          f"{'hashed':>7} {'PCA rows merged':>15} {'computed':>8}")
    named = [(f"full-{i + 1}", r) for i, r in enumerate(fulls)] + [(f"daily-{i + 1}", r) for i, r in enumerate(dailies)]
    for name, (wall, cpu, rss, report) in named:
        c = report["cache"]
        print(f"{name:8} {wall:8.2f} {cpu:8.2f} {rss:9.0f} {c['hits']:6} {c['featurized']:10} {c['unread']:7} "
              f"{c['hashed']:7} {c.get('pca_rows_merged', 0):15} {c.get('pca_rows_computed', 0):8}")
    listings = [sum(s["wall_s"] for s in d[3]["stages"] if s["stage"] in ("list", "cache_load")) for d in dailies]
    ratio = lambda i: statistics.median(d[i] / f[i] for f, d in zip(fulls, dailies))
    beyond = statistics.median((d[0] - l) / f[0] for f, d, l in zip(fulls, dailies, listings))
    print(f"daily / full (median of {args.repeat} pairs run in turn): wall {ratio(0):.3f}, CPU {ratio(1):.3f}; "
          f"wall without the daily run's listing and cache load ({statistics.median(listings):.2f} s): {beyond:.3f} "
          f"(goal: <= 0.05 plus listing)")
    last = dailies[-1][3]
    stages = ", ".join(f"{s['stage']} {s['wall_s']:.2f}" for s in last["stages"])
    print(f"last daily run's stages (wall s): {stages}")
    print(f"the daily report's estimate of the time the cache saved: {last['cache']['saved_s']:.1f} s")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
