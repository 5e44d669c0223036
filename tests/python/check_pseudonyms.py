"""Pseudonymized outputs: each path is HMAC-SHA256(key, file:// URI) in hex, labels kept, no photo path, photo
file name, input folder or key file named anywhere, no size, time or ETag in the shared manifest.

usage: check_pseudonyms.py OUT KEYFILE INPUT_ROOT
"""
import hashlib
import hmac
import os
import sys

import pyarrow.parquet as pq

out, keyfile, root = sys.argv[1:4]
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
for directory, _, files in os.walk(os.path.abspath(root)):
    real.update(name for name in files if name.endswith(".jpg"))
for directory, _, files in os.walk(out):
    if os.path.relpath(directory, out).startswith("_staging"):
        continue  # the real manifest a resumed run needs, removed when the run succeeds
    for name in files:
        data = open(os.path.join(directory, name), "rb").read()
        for leaked in real:
            assert leaked.encode() not in data, f"{name} contains {leaked!r}"
print(f"ok: {len(result)} pseudonymized rows, {len(errors)} errors")
