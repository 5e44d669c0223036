"""`verger quality` and identify at scale (issue 44): time, peak memory and the HNSW index's recall@10, printed
as a table, each line one process (the example `quality_scale`, so that its peak memory is its own):

1. the audit's numbers (quality::audit: neighbours, outlier scores, out-of-fold probabilities, confident
   learning) on 1,000,000 synthetic PCA-50 rows of 100 classes, through the index as `auto` chooses it;
2. the same on the shared Training run's rows copied to 100,000 (each copy moved by a little noise), on their
   1280-d features as `verger quality` compares them;
3. the peer: 100,000 synthetic PCA-50 rows, exact search against the index (where `auto` switches);
4. identify's nearest-training-image lookup among 1,000,000 training rows: the index against brute force.

usage: python bench/quality.py [--rows 1000000] [--copies 100000] [--training-run DIR] [--only NAME ...]
(without --training-run, the shared Training split is run first into a temporary folder)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from machine import build, cpu_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("VERGER_SHARED", os.path.join(ROOT, "..", "shared"))


def target_dir():
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return json.loads(meta.stdout)["target_directory"]


def measure(example, args):
    started = time.monotonic()
    done = subprocess.run([example] + [str(a) for a in args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"quality_scale {' '.join(map(str, args))} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall"] = time.monotonic() - started
    return result


def recall(r):
    s = r["search"]
    return f"{s['recall_at_10']:.4f} ({s['sample']} queries)" if s["method"] == "approximate" else "exact"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--copies", type=int, default=100_000)
    ap.add_argument("--peer-rows", type=int, default=100_000)
    ap.add_argument("--training-run")
    ap.add_argument("--only", nargs="*", choices=["synthetic", "copies", "peer", "lookup"])
    args = ap.parse_args()
    only = set(args.only or ["synthetic", "copies", "peer", "lookup"])

    build(ROOT)
    release = os.path.join(target_dir(), "release")
    example = os.path.join(release, "examples", "quality_scale")
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_model()}, {os.cpu_count()} cores")
    print("| what | rows | seconds (neighbours + out-of-fold) | peak memory | recall@10 | near duplicates | label issues |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")

    def line(what, r):
        p = r["parts"]
        print(f"| {what} | {r['rows']:,} | {r['seconds']:.1f} ({p['neighbours']:.1f} + {p['probabilities']:.1f}) "
              f"| {r['peak_mib']:.0f} MiB | {recall(r)} | {r['near_duplicate_images']:,} | {r['label_issues']:,} |",
              flush=True)

    if "synthetic" in only:
        line("synthetic PCA-50, 100 classes, auto", measure(example, ["synthetic", args.rows, 50, 100, "auto"]))
    if "copies" in only:
        with tempfile.TemporaryDirectory() as tmp:
            run = args.training_run
            if run is None:
                run = os.path.join(tmp, "training")
                subprocess.run([os.path.join(release, "verger"), "run", "--input",
                                os.path.join(SHARED, "datasets/fruits360/Training"), "--output", run],
                               check=True)
            r = measure(example, ["copies", run, args.copies, "auto"])
            line(f"Training's {r['copies_of']:,} rows copied, 1280-d features, auto", r)
    if "peer" in only:
        exact = measure(example, ["synthetic", args.peer_rows, 50, 100, "exact"])
        line("synthetic PCA-50, exact", exact)
        index = measure(example, ["synthetic", args.peer_rows, 50, 100, "approximate"])
        line("synthetic PCA-50, index", index)
        print(f"index / exact time at {args.peer_rows:,} rows: {index['seconds'] / exact['seconds']:.2f}")
    if "lookup" in only:
        r = measure(example, ["lookup", args.rows, 50, 1000])
        print(f"\nidentify's lookup of the 5 nearest among {r['rows']:,} training rows (PCA-50), "
              f"{r['queries']} queries one at a time: index p50 {r['index_ms']['p50']:.3f} ms, "
              f"p99 {r['index_ms']['p99']:.3f} ms; brute force p50 {r['brute_force_ms']['p50']:.2f} ms, "
              f"p99 {r['brute_force_ms']['p99']:.2f} ms; index built in {r['build_seconds']:.0f} s, "
              f"recall@10 {recall(r)}, peak {r['peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
