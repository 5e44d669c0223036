"""Checks two runs of the same input, in fp32 and in bf16: each result says its precision in its Parquet
metadata, the runs hold the same rows, and the bf16 features stay close to fp32's without being equal.

usage: python compare_precision.py FP32_RUN BF16_RUN
"""
import sys

import numpy as np
import pyarrow.dataset as ds


def read(run, precision):
    dataset = ds.dataset(f"{run}/result", format="parquet")
    for fragment in dataset.get_fragments():
        metadata = fragment.physical_schema.metadata or {}
        assert metadata.get(b"verger.precision") == precision.encode(), (fragment.path, metadata)
        assert metadata.get(b"verger.device") == b"cpu", (fragment.path, metadata)
    table = dataset.to_table(columns=["path", "features"])
    return dict(zip(table.column("path").to_pylist(), np.stack(table.column("features").to_numpy(zero_copy_only=False))))


fp32, bf16 = read(sys.argv[1], "fp32"), read(sys.argv[2], "bf16")
assert fp32.keys() == bf16.keys(), "the runs hold different rows"
a = np.stack([fp32[p] for p in sorted(fp32)]).astype(np.float64)
b = np.stack([bf16[p] for p in sorted(fp32)]).astype(np.float64)
cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
print(f"{len(a)} rows: cosine bf16 vs fp32 mean {cos.mean():.5f}, min {cos.min():.5f}, max |delta| {np.abs(a - b).max():.4f}")
assert cos.mean() >= 0.995 and cos.min() >= 0.99, "bf16 features drifted from fp32's"
assert np.abs(a - b).max() > 1e-3, "the bf16 run computed fp32's features"
