"""The near-duplicate threshold curve behind `verger quality`'s default: for each threshold, how many of the
planted JPEG re-encodings (plant_quality.py) are found as near duplicates of their original, the share of
the Training images with another Training image at or above it, and the share of Test images with a
Training image at or above it (leakage). Exact cosine similarities of the runs' 1280-d features, numpy.

usage: .venv/bin/python bench/quality_curve.py PLANTED_RUN TEST_RUN PLANTED_JSON
(PLANTED_RUN: `verger run` on plant_quality.py's copy of Training; TEST_RUN: the Test split with its PCA)
"""
import json
import sys

import numpy as np
import pyarrow.parquet as pq

run, test_run, planted = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))


def features(output):
    t = pq.read_table(f"{output}/result", columns=["path", "features"]).to_pandas()
    x = np.stack(t["features"].to_numpy()).astype(np.float64)
    paths = [p[len("file://"):] if p.startswith("file://") else p for p in t["path"]]
    return paths, x / np.linalg.norm(x, axis=1, keepdims=True)


paths, train = features(run)
index = {p: i for i, p in enumerate(paths)}
planted_paths = {w["path"] for w in planted["wrong"]} | set(planted["non_fruit"])
planted_paths |= {p["copy"] for p in planted["reencoded"] + planted["exact"]}
# The pristine Training images: the planted copy without what was planted.
pristine = np.array([p not in planted_paths for p in paths])
similarity = train @ train.T
np.fill_diagonal(similarity, -1.0)
pairs = np.array([similarity[index[p["copy"]], index[p["original"]]] for p in planted["reencoded"]])
within = similarity[np.ix_(pristine, pristine)].max(axis=1)
_, test = features(test_run)
leak = (test @ train[pristine].T).max(axis=1)
print(f"re-encoded pairs' similarity: min {pairs.min():.4f}, median {np.median(pairs):.4f}, max {pairs.max():.4f}")
print("| threshold | re-encodings found | Training images with a near twin in Training | Test images with a near twin in Training |")
print("| ---: | ---: | ---: | ---: |")
for t in [0.90, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99]:
    print(
        f"| {t:.2f} | {int((pairs >= t).sum())}/{len(pairs)} | {100 * (within >= t).mean():.1f} % "
        f"| {100 * (leak >= t).mean():.1f} % |"
    )
