"""Two verger outputs hold the same rows: same images (by label/file name), identical features and PCA.

usage: compare_runs.py OUT_A OUT_B
"""
import sys

import pyarrow.parquet as pq


def rows(out):
    table = pq.read_table(f"{out}/result").to_pylist()
    keyed = {"/".join(r["path"].split("/")[-2:]): r for r in table}
    assert len(keyed) == len(table), "duplicated rows"
    return keyed


a, b = rows(sys.argv[1]), rows(sys.argv[2])
assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
for key in a:
    assert a[key]["label"] == b[key]["label"], key
    assert a[key]["features"] == b[key]["features"], f"features of {key} differ"
    assert a[key]["pca_features"] == b[key]["pca_features"], f"pca_features of {key} differ"
errors_a = sorted("/".join(p.split("/")[-2:]) for p in pq.read_table(f"{sys.argv[1]}/errors").column("path").to_pylist())
errors_b = sorted("/".join(p.split("/")[-2:]) for p in pq.read_table(f"{sys.argv[2]}/errors").column("path").to_pylist())
assert errors_a == errors_b, (errors_a, errors_b)
print(f"same {len(a)} rows and {len(errors_a)} errors")
