"""Ctrl-C in a notebook: KeyboardInterrupt stops a run cleanly, and resume=True continues it to exactly the
rows of an uninterrupted run (no row lost, none twice), with the same features."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

import verger
from conftest import copy_images

CHILD = textwrap.dedent(
    """
    import json, signal, sys
    from pathlib import Path
    import verger

    # Ctrl-C as in a terminal, however the tests were started: a shell's background job inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt for it.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    source, output = sys.argv[1], Path(sys.argv[2])
    told = []

    # Once: progress may be called again before the interrupt reaches the main thread, and the parent reads
    # the next line as the outcome.
    def progress(stage, done, total, ended):
        if stage == "featurize" and done >= 32 and not told:
            told.append(True)
            print("featurizing", flush=True)

    try:
        verger.run(source, output, k=5, threads=1, partition_rows=16, progress=progress)
        print(json.dumps({"interrupted": False}), flush=True)
    except KeyboardInterrupt as e:
        print(json.dumps({
            "interrupted": True,
            "message": str(e),
            "success": (output / "_SUCCESS").exists(),
            "staged": len(list((output / "_staging").glob("part-*.parquet"))),
        }), flush=True)
    report = verger.run(source, output, k=5, threads=1, partition_rows=16, resume=True, progress=False)
    print(json.dumps({"status": report.status, "featurized": report.counts.featurized}), flush=True)
    """
)


def test_keyboard_interrupt_stops_cleanly_and_resume_continues(tmp_path):
    source = tmp_path / "input"
    copy_images(source, {"Lemon": 60, "Orange": 60, "Plum": 60})
    output = tmp_path / "interrupted"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(source), str(output)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "featurizing"
        child.send_signal(signal.SIGINT)
        started = time.monotonic()
        first = json.loads(child.stdout.readline())
        stopped_in = time.monotonic() - started
        second = json.loads(child.stdout.readline())
        assert child.wait(timeout=120) == 0, child.stderr.read()
    finally:
        child.kill()
    assert first["interrupted"], first
    assert "resume=True" in first["message"], first
    assert not first["success"] and first["staged"] >= 1, first
    assert stopped_in < 10, f"the run took {stopped_in:.1f} s to stop"
    assert second == {"status": "success", "featurized": 180}, second

    whole = tmp_path / "whole"
    verger.run(source, whole, k=5, threads=2, progress=False)
    resumed, expected = verger.read(output), verger.read(whole)
    paths = resumed.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 180
    assert paths == expected.column("path").to_pylist()
    features = lambda t: np.array(t.column("features").to_pylist())  # noqa: E731
    assert np.array_equal(features(resumed), features(expected))
