"""The Python package's call overhead: `verger.featurize` of 1,000 images held in memory (bytes) against the
command line's `verger embed` of the same 1,000 files, measured in one run.

usage: .venv/bin/python bench/python_api.py [--input DIR] [--images N] [--rounds N]

Each contender runs in its own child process, taking turns for --rounds rounds; wall and CPU seconds are the
child's (rusage), so process start, imports and the model's loading count for both:

- **cli embed**: `verger embed IMAGES... --out F.parquet` (one worker thread: embed featurizes in order);
- **python bytes, 1 thread**: `import verger`, the files read into `bytes` (not timed inside, but in the child's
  totals), `verger.featurize(images, threads=1)`: the same work as the CLI, minus the Parquet file;
- **python bytes, all cores**: the same with `threads` = the machine's cores.

Printed per round and as medians: wall, CPU, and the Python/CLI ratios; the Python children also print the
time inside the `featurize` call alone. Run it on a quiet machine.
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

from machine import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
VERGER = os.path.join(ROOT, "scripts/verger")

CHILD = """
import json, sys, time
started = time.perf_counter()
import verger
imported = time.perf_counter()
paths = sys.argv[2:]
images = [open(p, "rb").read() for p in paths]
read = time.perf_counter()
table = verger.featurize(images, threads=int(sys.argv[1]))
done = time.perf_counter()
assert table.num_rows == len(paths) and table.column("error").null_count == len(paths)
print(json.dumps({"import_s": imported - started, "read_s": read - imported, "call_s": done - read}))
"""


def child(argv):
    """Runs argv; returns (wall s, CPU s, stdout) of that child alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", default=os.path.join(SHARED, "datasets/fruits360/Training"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    files = sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(args.input)
        for name in names
        if name.endswith(".jpg")
    )[: args.images]
    cores = os.cpu_count()
    print(f"machine: {cores} cores, {cpu_model()}; {len(files)} images from {args.input}; {args.rounds} rounds")

    results = {"cli embed": [], "python bytes, 1 thread": [], f"python bytes, {cores} threads": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round in range(args.rounds):
            out = os.path.join(tmp, f"embed-{round}.parquet")
            wall, cpu, _ = child([VERGER, "embed", *files, "--out", out])
            results["cli embed"].append((wall, cpu, None))
            for threads, name in ((1, "python bytes, 1 thread"), (cores, f"python bytes, {cores} threads")):
                wall, cpu, stdout = child([sys.executable, "-c", CHILD, str(threads), *files])
                results[name].append((wall, cpu, json.loads(stdout)))
            cli_wall = results["cli embed"][-1][0]
            print(f"round {round + 1}: " + "; ".join(
                f"{name} {runs[-1][0]:.2f} s wall, {runs[-1][1]:.2f} s CPU"
                + (f" (call {runs[-1][2]['call_s']:.2f} s, import {runs[-1][2]['import_s']:.2f} s)" if runs[-1][2] else "")
                + ("" if name == "cli embed" else f", {runs[-1][0] / cli_wall:.3f}x the CLI's wall")
                for name, runs in results.items()
            ))

    print(f"\nmedians over {args.rounds} rounds ({len(files)} images):")
    print(f"{'':<26} {'wall s':>8} {'CPU s':>8} {'ms/image':>9} {'call s':>8} {'wall / cli':>11}")
    cli_wall = statistics.median(r[0] for r in results["cli embed"])
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        call = statistics.median(r[2]["call_s"] for r in runs) if runs[0][2] else float("nan")
        print(f"{name:<26} {wall:>8.2f} {cpu:>8.2f} {wall / len(files) * 1000:>9.2f} {call:>8.2f} "
              f"{wall / cli_wall:>11.3f}")


if __name__ == "__main__":
    main()
