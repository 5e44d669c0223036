"""verger at scale on one machine: listing and planning a million files, and full runs whose peak memory must
not grow with the number of images beyond the manifest's own size.

usage: .venv/bin/python bench/scale.py [--dir DIR] [--files N] [--objects N] [--runs 10000,30000,100000]
                                      [--threads N]

Builds a synthetic collection by hard-linking the shared Fruits-360 images (9,856) under many folders, labels
preserved (`DIR/list/sNNN/<label>/<i>.jpg`): --files of them for listing and planning, and one tree per full
run size (`DIR/run-N`). Then, each as its own process, measured with wait4 (wall, CPU, peak RSS):
- `verger list` of the --files tree;
- listing + manifest + partition planning: `verger run` stopped by its test hook right after the manifest is
  committed (VERGER_ABORT_AT=manifest);
- the same two of --objects empty objects in a local SeaweedFS (copied in by its filer first);
- a full `verger run` at each size: wall, CPU per image, peak RSS, time to the first committed (staged)
  partition, the PCA fit alone (the report's pca_fit stage), and the resident memory sampled while it runs,
  whose trend shows what is retained (a single peak also catches transients);
then the peak-RSS slope per million images between the smallest and largest run. Hard links cost no disk;
the trees are kept in DIR for the next run. Run it on a quiet machine.
"""
import argparse
import glob
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
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
FRUITS = os.path.join(SHARED, "datasets/fruits360")
VERGER = os.path.join(ROOT, "scripts/verger")


def sources():
    files = sorted(glob.glob(os.path.join(FRUITS, "*", "*", "*.jpg")))
    assert files, f"no images under {FRUITS}"
    return [(f, os.path.basename(os.path.dirname(f))) for f in files]


def build(tree, n, per_folder=10_000):
    """`n` hard links under `tree`, `per_folder` to a shard folder, each in its label's folder."""
    marker = os.path.join(tree, f".complete-{n}")
    if os.path.exists(marker):
        return 0.0
    shutil.rmtree(tree, ignore_errors=True)
    started = time.perf_counter()
    images = sources()
    made = set()
    for i in range(n):
        src, label = images[i % len(images)]
        folder = os.path.join(tree, f"s{i // per_folder:03d}", label)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        os.link(src, os.path.join(folder, f"{i}.jpg"))
    open(marker, "w").close()
    return time.perf_counter() - started


def rss_mib(pid):
    """The process's resident memory now, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def measure(args, env=None, watch=None, samples=None):
    """Runs `args`; returns (exit code, wall s, CPU s, peak RSS MiB, first time `watch()` was true). With
    `samples` (a list), appends (seconds, resident MiB) every 0.25 s while it runs."""
    started = time.perf_counter()
    process = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    first = None
    last_sample = 0.0
    ended = None
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the maximum over every child so far); it
    # also reaps the child, so it is the only call that asks whether the child ended.
    while (watch and first is None) or samples is not None:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            ended = (status, usage)
            break
        now = time.perf_counter() - started
        if watch and first is None and watch():
            first = now
        if samples is not None and now - last_sample >= 0.25:
            rss = rss_mib(process.pid)
            if rss is not None:
                samples.append((now, rss))
            last_sample = now
        time.sleep(0.02)
    if ended is None:
        _, status, usage = os.wait4(process.pid, 0)
    else:
        status, usage = ended
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    return code, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, first


def upload_empty(s3, filer, bucket, tree, n, per_folder=10_000, labels=100):
    """`n` empty objects `images/sNNN/labelLL/<i>.jpg` (listing reads names and sizes only): a tree of hard
    links to empty files, copied in by SeaweedFS's own `weed filer.copy` into the bucket's folder (boto3's
    PUTs manage ~750/s here, the filer ~15,000/s). Returns seconds."""
    from listing import create_bucket

    create_bucket(s3, bucket)
    started = time.perf_counter()
    root = os.path.join(tree, "images")
    for i in range(n):
        # One empty file per shard: a file takes at most 65,000 links.
        empty = os.path.join(tree, f"empty-{i // per_folder}")
        if i % per_folder == 0:
            open(empty, "w").close()
        folder = os.path.join(root, f"s{i // per_folder:03d}", f"label{i % labels:02d}")
        if i % per_folder < labels:
            os.makedirs(folder, exist_ok=True)
        os.link(empty, os.path.join(folder, f"{i}.jpg"))
    subprocess.run([os.path.join(ROOT, ".venv/bin/weed"), "filer.copy", "-c", "32", root,
                    f"{filer}/buckets/{bucket}/"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def bucket_listing(args):
    """Listing, and listing + manifest + plan, of --objects objects in a local SeaweedFS."""
    import boto3
    import pyarrow.parquet as pq
    from listing import BASE_PORT, KEYS, start_server

    data = tempfile.mkdtemp(dir=args.dir, prefix="seaweedfs-")
    tree = tempfile.mkdtemp(dir=args.dir, prefix="objects-")
    server = start_server(data)
    endpoint = f"http://127.0.0.1:{BASE_PORT + 3}"
    filer = f"http://127.0.0.1:{BASE_PORT + 2}"
    env = {"AWS_ACCESS_KEY_ID": KEYS["aws_access_key_id"], "AWS_SECRET_ACCESS_KEY": KEYS["aws_secret_access_key"]}
    at = ["--input", "s3://bench/images", "--endpoint", endpoint, "--region", "eu-west-1"]
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1", **KEYS)
        took = upload_empty(s3, filer, "bench", tree, args.objects)
        print(f"uploaded {args.objects} objects in {took:.1f} s ({args.objects / took:.0f}/s, weed filer.copy)")
        code, wall, cpu, rss, _ = measure([VERGER, "list", *at], env=env)
        assert code == 0, code
        print(f"list {args.objects:>9} objects:             wall {wall:7.2f} s  CPU {cpu:7.2f} s  "
              f"peak RSS {rss:7.1f} MiB")
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            out = os.path.join(tmp, "out")
            code, wall, cpu, rss, _ = measure([VERGER, "run", *at, "--output", out],
                                              env={**env, "VERGER_ABORT_AT": "manifest"})
            assert code != 0 and os.path.exists(os.path.join(out, "manifest")), code
            listed = pq.read_table(os.path.join(out, "manifest")).num_rows
            assert listed == args.objects, f"the manifest lists {listed} of {args.objects} objects"
        print(f"list + manifest + plan {args.objects:>9} objects: wall {wall:7.2f} s  CPU {cpu:7.2f} s  "
              f"peak RSS {rss:7.1f} MiB")
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(tree, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "verger-scale"))
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--runs", default="10000,30000,100000")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--objects", type=int, default=1_000_000, help="objects in a local S3 server (0: skip)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.runs.split(",") if s]
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, {platform.platform()}; "
          f"{time.strftime('%Y-%m-%d')}")

    listing = os.path.join(args.dir, "list")
    print(f"built {args.files} links in {build(listing, args.files):.1f} s")
    code, wall, cpu, rss, _ = measure([VERGER, "list", "--input", listing])
    assert code == 0, code
    print(f"list {args.files:>9} files:               wall {wall:7.2f} s  CPU {cpu:7.2f} s  peak RSS {rss:7.1f} MiB")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        out = os.path.join(tmp, "out")
        code, wall, cpu, rss, _ = measure([VERGER, "run", "--input", listing, "--output", out],
                                          env={"VERGER_ABORT_AT": "manifest"})
        assert code != 0 and os.path.exists(os.path.join(out, "manifest")), code
        manifest_mb = sum(os.path.getsize(f) for f in glob.glob(os.path.join(out, "manifest", "*"))) / 1e6
    print(f"list + manifest + plan {args.files:>9}: wall {wall:7.2f} s  CPU {cpu:7.2f} s  peak RSS {rss:7.1f} MiB"
          f"  (manifest {manifest_mb:.1f} MB)")
    if args.objects:
        bucket_listing(args)

    runs = []
    for n in sizes:
        tree = os.path.join(args.dir, f"run-{n}")
        build(tree, n)
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            out = os.path.join(tmp, "out")
            staged = lambda: bool(glob.glob(os.path.join(out, "_staging", "*.parquet")))
            samples = []
            code, wall, cpu, rss, first = measure(
                [VERGER, "run", "--input", tree, "--output", out, "--threads", str(args.threads)], watch=staged,
                samples=samples)
            assert code == 0, code
            report = json.load(open(os.path.join(out, "report.json")))
        pca_fit = next(s["wall_s"] for s in report["stages"] if s["stage"] == "pca_fit")
        runs.append((n, rss))
        print(f"run {n:>7} images: wall {wall:7.1f} s  {n / wall:6.1f} images/s  CPU {cpu / n * 1000:5.2f} ms/image  "
              f"peak RSS {rss:6.1f} MiB  first partition {first if first is not None else float('nan'):5.2f} s  "
              f"PCA fit {pca_fit:.3f} s")
        # Resident memory while featurizing (the middle 80 % of the run): retained memory shows as a slope,
        # transient peaks do not.
        middle = [(t, r) for t, r in samples if 0.1 * wall <= t <= 0.9 * wall]
        if len(middle) >= 3:
            mt = sum(t for t, _ in middle) / len(middle)
            mr = sum(r for _, r in middle) / len(middle)
            slope = sum((t - mt) * (r - mr) for t, r in middle) / sum((t - mt) ** 2 for t, _ in middle)
            print(f"    resident while running (10-90 % of the run): {min(r for _, r in middle):.0f}-"
                  f"{max(r for _, r in middle):.0f} MiB, trend {slope / (n / wall) * 1e6:+.0f} MiB per million "
                  f"images ({len(middle)} samples)")
        print("    peak RSS when each stage ended (MiB): " +
              ", ".join(f"{st['stage']} {st.get('peak_rss_mib', float('nan')):.0f}" for st in report["stages"]))
    if len(runs) >= 2:
        (n0, r0), (n1, r1) = runs[0], runs[-1]
        print(f"peak RSS slope: {(r1 - r0) / (n1 - n0) * 1e6:.1f} MiB per million images "
              f"({n0} -> {n1} images: {r0:.1f} -> {r1:.1f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
