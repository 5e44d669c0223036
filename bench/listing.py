"""Listing 100,000 objects on a local S3-compatible server: verger's parallel listing vs one request after
another, measured in one run.

usage: .venv/bin/python bench/listing.py [--objects N] [--folders N] [--repeat N]

Starts SeaweedFS (`weed mini` from .venv) on 127.0.0.1 in a temporary folder, uploads N tiny objects spread
over F folders (Fruits-360's layout: PREFIX/<label>/<image>.jpg) with boto3, then times, each R times:

- `verger list --concurrency 16`: folders found with delimiter listings, then listed side by side;
- `verger list --concurrency 1`: the same code, one folder at a time;
- boto3's ListObjectsV2 paginator over the whole prefix: what a single-threaded driver does (Spark's, say).

Prints the median wall time of each, objects per second and the ratios. The server stops at the end.
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from bench import target_dir  # noqa: E402
from machine import build  # noqa: E402

KEYS = dict(aws_access_key_id="bench", aws_secret_access_key="bench-secret")
BASE_PORT = 27000


def start_server(data):
    port = lambda i: str(BASE_PORT + i)  # noqa: E731
    server = subprocess.Popen(
        [os.path.join(ROOT, ".venv/bin/weed"), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
         f"-master.port={port(0)}", f"-volume.port={port(1)}", f"-filer.port={port(2)}", f"-s3.port={port(3)}",
         f"-admin.port={port(4)}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", BASE_PORT + 3), timeout=1).close()
            return server
        except OSError:
            if time.time() > deadline:
                server.kill()
                sys.exit("SeaweedFS did not start")
            time.sleep(0.2)


def create_bucket(s3, bucket):
    """Creates `bucket`, retrying while the server is still starting."""
    for _ in range(100):
        try:
            s3.create_bucket(Bucket=bucket)
            return
        except s3.exceptions.BucketAlreadyOwnedByYou:
            return
        except Exception:
            time.sleep(0.3)


def upload(s3, bucket, objects, folders):
    create_bucket(s3, bucket)
    keys = [f"images/label{i % folders:03d}/img{i:06d}.jpg" for i in range(objects)]
    started = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"not a jpeg"), keys))
    return time.perf_counter() - started


def verger_list(verger, endpoint, concurrency, objects):
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEYS["aws_access_key_id"],
               AWS_SECRET_ACCESS_KEY=KEYS["aws_secret_access_key"])
    started = time.perf_counter()
    out = subprocess.run([verger, "list", "--input", "s3://bench/images", "--endpoint", endpoint, "--region",
                          "eu-west-1", "--concurrency", str(concurrency)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if out.returncode != 0 or f"{objects} images" not in out.stdout:
        sys.exit(f"verger list failed:\n{out.stdout[-500:]}\n{out.stderr[-2000:]}")
    return wall


def paginate(s3, objects):
    started = time.perf_counter()
    count = sum(len(page.get("Contents", []))
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="images/"))
    wall = time.perf_counter() - started
    assert count == objects, count
    return wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--folders", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    build(ROOT)
    verger = os.path.join(target_dir(), "release", "verger")
    data = tempfile.mkdtemp(prefix="verger-listing-bench-")
    server = start_server(data)
    endpoint = f"http://127.0.0.1:{BASE_PORT + 3}"
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1", **KEYS)
        upload_s = upload(s3, "bench", args.objects, args.folders)
        print(f"uploaded {args.objects} objects in {args.folders} folders in {upload_s:.1f} s "
              f"({args.objects / upload_s:.0f}/s, boto3, 32 threads)")
        timings = {"verger list, 16 folders at a time": [], "verger list, one folder at a time": [],
                   "boto3 paginator, one request at a time": []}
        for _ in range(args.repeat):
            timings["verger list, 16 folders at a time"].append(verger_list(verger, endpoint, 16, args.objects))
            timings["verger list, one folder at a time"].append(verger_list(verger, endpoint, 1, args.objects))
            timings["boto3 paginator, one request at a time"].append(paginate(s3, args.objects))
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)

    medians = {name: statistics.median(t) for name, t in timings.items()}
    print(f"\n{'':42} {'median s':>9} {'objects/s':>10}")
    for name, wall in medians.items():
        print(f"{name:42} {wall:9.2f} {args.objects / wall:10.0f}")
    parallel = medians["verger list, 16 folders at a time"]
    print(f"\nparallel vs one folder at a time: {medians['verger list, one folder at a time'] / parallel:.2f}x faster")
    print(f"parallel vs boto3 paginator:      {medians['boto3 paginator, one request at a time'] / parallel:.2f}x faster")
    print(f"(median of {args.repeat}; verger's times include process start-up; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
