"""Two verger outputs hold the same rows: same images (by label/file name), identical features, the same
metadata about them (precision, device, model) in the result files, and the same PCA (model and pca_features): identical, or with --pca-rtol R equal up to R times each vector's largest
magnitude (for PCA statistics merged in another order, such as those stored in a feature cache).
Outputs are local folders or s3:// prefixes (read with pyarrow's S3 filesystem, see s3util.py).

usage: compare_runs.py OUT_A OUT_B [--pca-rtol R]
"""
import argparse
import json
import numbers

from s3util import client, read_table, split


def rows(out):
    table = read_table(f"{out}/result").to_pylist()
    keyed = {"/".join(r["path"].split("/")[-2:]): r for r in table}
    assert len(keyed) == len(table), "duplicated rows"
    return keyed


def feature_metadata(out):
    """What the result files say of their features (Parquet key-value metadata, as pyarrow shows it)."""
    metadata = read_table(f"{out}/result").schema.metadata or {}
    keys = [b"verger.precision", b"verger.device", b"verger.model_sha256"]
    assert all(k in metadata for k in keys), f"{out}: result metadata {metadata}"
    return {k: metadata[k] for k in keys}


def errors(out):
    return sorted("/".join(p.split("/")[-2:]) for p in read_table(f"{out}/errors").column("path").to_pylist())


def model(out):
    if out.startswith("s3://"):
        bucket, prefix = split(out)
        return json.loads(client().get_object(Bucket=bucket, Key=f"{prefix}/pca/model.json")["Body"].read())
    with open(f"{out}/pca/model.json") as f:
        return json.load(f)


def close(a, b, rtol, what):
    """a == b, numbers within rtol of the largest magnitude in their vector."""
    if isinstance(b, list) and b and all(isinstance(v, numbers.Number) for v in b):
        assert isinstance(a, list) and len(a) == len(b), what
        scale = max(1.0, max(abs(v) for v in b))
        worst = max(abs(x - y) for x, y in zip(a, b))
        assert worst <= rtol * scale, f"{what} differ by {worst} (allowed {rtol * scale})"
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, rtol, f"{what}[{i}]")
    elif isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), what
        for key in b:
            close(a[key], b[key], rtol, f"{what}.{key}")
    elif isinstance(b, float):
        assert abs(a - b) <= rtol * max(1.0, abs(b)), f"{what}: {a} != {b}"
    else:
        assert a == b, f"{what}: {a} != {b}"


parser = argparse.ArgumentParser()
parser.add_argument("a")
parser.add_argument("b")
parser.add_argument("--pca-rtol", type=float, default=0.0)
args = parser.parse_args()

a, b = rows(args.a), rows(args.b)
assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
for key in a:
    assert a[key]["label"] == b[key]["label"], key
    assert a[key]["features"] == b[key]["features"], f"features of {key} differ"
    close(a[key]["pca_features"], b[key]["pca_features"], args.pca_rtol, f"pca_features of {key}")
assert feature_metadata(args.a) == feature_metadata(args.b), (feature_metadata(args.a), feature_metadata(args.b))
close(model(args.a), model(args.b), args.pca_rtol, "the PCA model")
errors_a, errors_b = errors(args.a), errors(args.b)
assert errors_a == errors_b, (errors_a, errors_b)
print(f"same {len(a)} rows and {len(errors_a)} errors")
