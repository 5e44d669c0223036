"""Checks a run's features against an fp32 CPU run of the same input: each result says its precision and device
in its Parquet metadata, the runs hold the same rows, and the other run's features are as close as its mode
promises: bf16 close without being equal, fp32 on a GPU (TF32 off) equal up to fp32 rounding.

usage: python compare_features.py FP32_CPU_RUN OTHER_RUN [--precision fp32|bf16] [--device cpu|cuda:N]
"""
import argparse

import numpy as np
import pyarrow.dataset as ds


def read(run, precision, device):
    dataset = ds.dataset(f"{run}/result", format="parquet")
    for fragment in dataset.get_fragments():
        metadata = fragment.physical_schema.metadata or {}
        assert metadata.get(b"verger.precision") == precision.encode(), (fragment.path, metadata)
        assert metadata.get(b"verger.device") == device.encode(), (fragment.path, metadata)
    table = dataset.to_table(columns=["path", "features"])
    return dict(zip(table.column("path").to_pylist(), np.stack(table.column("features").to_numpy(zero_copy_only=False))))


ap = argparse.ArgumentParser()
ap.add_argument("reference")
ap.add_argument("other")
ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
ap.add_argument("--device", default="cpu")
args = ap.parse_args()
reference, other = read(args.reference, "fp32", "cpu"), read(args.other, args.precision, args.device)
assert reference.keys() == other.keys(), "the runs hold different rows"
a = np.stack([reference[p] for p in sorted(reference)]).astype(np.float64)
b = np.stack([other[p] for p in sorted(reference)]).astype(np.float64)
cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
diff = np.abs(a - b).max()
print(f"{len(a)} rows: cosine {args.precision} on {args.device} vs fp32 on cpu mean {cos.mean():.7f}, "
      f"min {cos.min():.7f}, max |delta| {diff:.2e}")
if args.precision == "bf16":
    assert cos.mean() >= 0.995 and cos.min() >= 0.99, "bf16 features drifted from fp32's"
    assert diff > 1e-3, "the bf16 run computed fp32's features"
else:
    # fp32 elsewhere (another device, other kernels) differs by rounding only; TF32 would give ~1e-2.
    assert cos.min() >= 0.99999 and diff <= 1e-3, "fp32 features differ beyond rounding"
