"""Reads a verger output folder the way users do (pyarrow, pandas, json) and checks its contract.

usage: check_output.py OUT K EXPECTED_ROWS EXPECTED_ERRORS
"""
import json
import os
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

out, k, rows, errors = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
assert os.path.exists(os.path.join(out, "_SUCCESS")), "no _SUCCESS"

table = pq.read_table(os.path.join(out, "result"))
schema = table.schema
assert schema.field("path").type == pa.string(), schema
assert schema.field("label").type == pa.string(), schema
assert pa.types.is_list(schema.field("features").type) and schema.field("features").type.value_type == pa.float32(), schema
assert pa.types.is_list(schema.field("pca_features").type) and schema.field("pca_features").type.value_type == pa.float64(), schema
assert table.num_rows == rows, (table.num_rows, rows)

df = pd.read_parquet(os.path.join(out, "result"))
assert list(df.columns) == ["path", "label", "features", "pca_features"], df.columns
assert df["path"].is_unique and df["path"].is_monotonic_increasing
assert all(p.startswith("file:///") for p in df["path"])
assert all(len(f) == 1280 for f in df["features"]) and all(len(p) == k for p in df["pca_features"])
assert all(p.split("/")[-2] == label for p, label in zip(df["path"], df["label"]))

errs = pd.read_parquet(os.path.join(out, "errors"))
assert list(errs.columns) == ["path", "stage", "message"], errs.columns
assert len(errs) == errors, errs
assert errs["message"].str.len().min() > 0 if len(errs) else True

model = json.load(open(os.path.join(out, "pca", "model.json")))
assert model["k"] == k and model["dim"] == 1280 and model["count"] == rows
assert len(model["components"]) == k and all(len(c) == 1280 for c in model["components"])
assert len(model["explained_variance_ratio"]) == 1280
assert abs(sum(model["explained_variance_ratio"]) - 1.0) < 1e-9

manifest = pd.read_parquet(os.path.join(out, "manifest"))
assert len(manifest) == rows + errors

report = json.load(open(os.path.join(out, "report.json")))
assert report["counts"] == {"listed": rows + errors, "featurized": rows, "failed": errors}, report["counts"]
assert {s["stage"] for s in report["stages"]} >= {"list", "featurize", "pca_fit", "project_write"}
print(f"ok: {rows} rows, {errors} errors, k={k}, read back with pyarrow {pa.__version__} and pandas {pd.__version__}")
