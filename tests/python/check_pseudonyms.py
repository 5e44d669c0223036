"""Pseudonymized outputs: each path is HMAC-SHA256(key, file:// URI) in hex, labels kept, no photo path, photo
file name, input folder or key file named anywhere, no size, time or ETag in the shared manifest. With CACHE,
the run's feature cache too: named nowhere in the output, and in its own files no real name, no size, time
or ETag, and each content known by HMAC-SHA256(key, bytes), never by the photo's SHA-256.

usage: check_pseudonyms.py OUT KEYFILE INPUT_ROOT [CACHE]
"""
import hashlib
import hmac
import os
import sys

import pyarrow.parquet as pq

out, keyfile, root = sys.argv[1:4]
cache = sys.argv[4] if len(sys.argv) > 4 else None
key = open(keyfile, "rb").read().rstrip(b"\r\n")
expected = {}
for directory, _, files in os.walk(os.path.abspath(root)):
    for name in files:
        if name.endswith(".jpg"):
            uri = "file://" + os.path.join(directory, name)
            expected[hmac.new(key, uri.encode(), hashlib.sha256).hexdigest()] = os.path.basename(directory)

result = pq.read_table(f"{out}/result").to_pylist()
errors = pq.read_table(f"{out}/errors").to_pylist()
manifest = pq.read_table(f"{out}/manifest").to_pylist()
assert len(result) + len(errors) == len(expected) == len(manifest)
for row in result + manifest:
    assert row["path"] in expected, row["path"]
    assert row["label"] == expected[row["path"]], row
assert all(row["path"] in expected for row in errors)
assert len({r["path"] for r in result} | {r["path"] for r in errors}) == len(expected)

# Nothing that fingerprints a photo in the shared manifest: no size, time or ETag (issue 41, point 7).
assert all(row["size"] == 0 and row["modified_ms"] == 0 and row["etag"] is None for row in manifest)

# No byte of any file of the output names the input folder, a photo's file name or the key file.
real = {os.path.abspath(root), os.path.abspath(keyfile)}
sha256s, keyed = set(), set()
for directory, _, files in os.walk(os.path.abspath(root)):
    real.update(name for name in files if name.endswith(".jpg"))
    for name in files:
        if name.endswith(".jpg"):
            data = open(os.path.join(directory, name), "rb").read()
            sha256s.add(hashlib.sha256(data).digest())
            keyed.add(hmac.new(key, data, hashlib.sha256).digest())


def search(folder, skip_staging, names):
    for directory, _, files in os.walk(folder):
        if skip_staging and os.path.relpath(directory, folder).startswith("_staging"):
            continue  # the real manifest a resumed run needs, removed when the run succeeds
        for name in files:
            data = open(os.path.join(directory, name), "rb").read()
            for leaked in names:
                assert leaked.encode() not in data, f"{name} contains {leaked!r}"


search(out, True, real | ({os.path.abspath(cache)} if cache else set()))
if cache:
    search(cache, False, real)
    parts = [os.path.join(d, f) for d, _, files in os.walk(cache) for f in files if f.endswith(".parquet")]
    rows = [row for part in parts for row in pq.read_table(part).to_pylist()]
    assert rows, "the cache holds no rows"
    for row in rows:
        assert row["size"] == 0 and row["modified_ms"] == 0 and row.get("etag") is None, row
        assert len(row["path"]) == 64 and "/" not in row["path"], row["path"]
        assert row["sha256"] not in sha256s, "a photo's SHA-256 in the cache"
        assert row["sha256"] in keyed, "a content hash that is not a keyed hash of any photo"
    print(f"ok: the cache's {len(rows)} rows name and fingerprint no photo")
print(f"ok: {len(result)} pseudonymized rows, {len(errors)} errors")
