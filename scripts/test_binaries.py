#!/usr/bin/env python3
"""Runs the workspace's Rust test binaries side by side: `cargo test` runs them one at a time, so a test that
waits on purpose (a link down for 30 s, an S3 outage, servers starting) holds up every binary after it. This
builds them with `cargo test --no-run`, then runs them JOBS at a time, longest first (durations of the last run
are kept beside the build), each in its package's folder as cargo runs it and with its own VERGER_TEST_SLOT
(the fixed ports of its servers derive from it). Each binary's whole output is printed when it ends, and the
doc tests run as one more job. Exits non-zero when any test failed; the last line counts the tests.

    scripts/test_binaries.py [--jobs N] -- CARGO_TEST_ARGS...
"""

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULT = re.compile(r"^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored")


def build(cargo_args: list[str]) -> list[dict]:
    """Builds every test binary; returns one job per binary: its name, command and folder."""
    command = ["cargo", "test", "--no-run", "--message-format=json-render-diagnostics", *cargo_args]
    built = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if built.returncode != 0:
        sys.exit(f"test_binaries: {' '.join(command)} failed ({built.returncode})")
    jobs = []
    for line in built.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") != "compiler-artifact" or not message.get("profile", {}).get("test"):
            continue
        if not message.get("executable"):
            continue
        target = message["target"]
        package = message["package_id"].split("#")[0].rsplit("/", 1)[-1]
        jobs.append({
            "name": f"{package.split('@')[0]}::{target['name']} ({'/'.join(target['kind'])})",
            "command": [message["executable"]],
            "cwd": str(Path(message["manifest_path"]).parent),
        })
    return jobs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("cargo_args", nargs="*")
    args = parser.parse_args()

    started = time.monotonic()
    jobs = build(args.cargo_args)
    jobs.append({"name": "doc tests", "command": ["cargo", "test", "--doc", *args.cargo_args], "cwd": os.getcwd()})
    print(f"test_binaries: {len(jobs)} jobs built in {time.monotonic() - started:.0f} s; {args.jobs} at a time",
          flush=True)

    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    durations_file = target / "test-durations.json"
    try:
        durations = json.loads(durations_file.read_text())
    except (OSError, ValueError):
        durations = {}
    # Longest first, so that the last to start are short; unknown ones first of all (they may be long).
    jobs.sort(key=lambda j: -durations.get(j["name"], 1e9))

    pending: queue.Queue = queue.Queue()
    for job in jobs:
        pending.put(job)
    lock = threading.Lock()
    outcomes = []

    def lane(slot: int) -> None:
        while True:
            try:
                job = pending.get_nowait()
            except queue.Empty:
                return
            env = dict(os.environ, VERGER_TEST_SLOT=str(slot))
            began = time.monotonic()
            done = subprocess.run(job["command"], cwd=job["cwd"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, errors="replace")
            seconds = time.monotonic() - began
            counts = [0, 0, 0]
            for line in done.stdout.splitlines():
                found = RESULT.match(line)
                if found:
                    counts = [c + int(n) for c, n in zip(counts, found.groups())]
            with lock:
                print(f"\n     Running {job['name']} ({seconds:.0f} s, exit {done.returncode})", flush=True)
                sys.stdout.write(done.stdout)
                sys.stdout.flush()
                outcomes.append((job, done.returncode, seconds, counts))

    lanes = [threading.Thread(target=lane, args=(slot,)) for slot in range(args.jobs)]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()

    durations.update({job["name"]: seconds for job, _, seconds, _ in outcomes})
    try:
        durations_file.write_text(json.dumps(durations, indent=1, sort_keys=True))
    except OSError:
        pass
    print("\ntest_binaries: the slowest:")
    for job, _, seconds, _ in sorted(outcomes, key=lambda o: -o[2])[:8]:
        print(f"  {seconds:6.0f} s  {job['name']}")
    failed_jobs = [job["name"] for job, code, _, _ in outcomes if code != 0]
    passed = sum(c[0] for *_, c in outcomes)
    failed = sum(c[1] for *_, c in outcomes)
    ignored = sum(c[2] for *_, c in outcomes)
    print(f"test_binaries: {len(outcomes)} jobs in {time.monotonic() - started:.0f} s; failed jobs: "
          f"{', '.join(failed_jobs) or 'none'}; {ignored} ignored")
    if failed_jobs and failed == 0:
        failed = len(failed_jobs)  # a binary that crashed or printed no result still fails the run
    print(f"{passed} passed, {failed} failed")
    return 1 if failed_jobs else 0


if __name__ == "__main__":
    sys.exit(main())
