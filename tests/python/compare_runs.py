"""Two verger outputs hold the same rows: same images (by label/file name), identical features and PCA.
Outputs are local folders or s3:// prefixes (read with pyarrow's S3 filesystem, see s3util.py).

usage: compare_runs.py OUT_A OUT_B
"""
import sys

from s3util import read_table


def rows(out):
    table = read_table(f"{out}/result").to_pylist()
    keyed = {"/".join(r["path"].split("/")[-2:]): r for r in table}
    assert len(keyed) == len(table), "duplicated rows"
    return keyed


def errors(out):
    return sorted("/".join(p.split("/")[-2:]) for p in read_table(f"{out}/errors").column("path").to_pylist())


a, b = rows(sys.argv[1]), rows(sys.argv[2])
assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
for key in a:
    assert a[key]["label"] == b[key]["label"], key
    assert a[key]["features"] == b[key]["features"], f"features of {key} differ"
    assert a[key]["pca_features"] == b[key]["pca_features"], f"pca_features of {key} differ"
errors_a, errors_b = errors(sys.argv[1]), errors(sys.argv[2])
assert errors_a == errors_b, (errors_a, errors_b)
print(f"same {len(a)} rows and {len(errors_a)} errors")
