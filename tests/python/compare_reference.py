"""End-to-end parity with the original Spark + TensorFlow pipeline's output on the Training sample.

usage: compare_reference.py OUT SEED_PARQUET
Checks: every path once with its label; features max |diff| <= 1e-4; PCA projections equal up to each
component's sign (relative Frobenius error <= 1e-4); explained-variance ratios within 1e-6 of a numpy fit of
the reference features with Spark's conventions.
"""
import json
import sys

import numpy as np
import pyarrow.parquet as pq

out, seed_path = sys.argv[1], sys.argv[2]
ours = pq.read_table(f"{out}/result").to_pandas()
seed = pq.read_table(seed_path).to_pandas()

# Seed paths are relative to datasets/fruits360 ("Training/Apple 10/x.jpg"); ours are absolute file:// URIs.
ours["key"] = ours["path"].map(lambda p: "/".join(p.split("/")[-3:]))
assert ours["key"].is_unique, "duplicated paths"
assert len(ours) == len(seed), (len(ours), len(seed))
merged = seed.merge(ours, left_on="path", right_on="key", suffixes=("_seed", "_ours"), validate="one_to_one")
assert len(merged) == len(seed), "paths differ"
assert (merged["label_seed"] == merged["label_ours"]).all(), "labels differ"

f_seed = np.stack(merged["features_seed"].to_numpy()).astype(np.float64)
f_ours = np.stack(merged["features_ours"].to_numpy()).astype(np.float64)
feature_diff = np.abs(f_seed - f_ours).max()
assert feature_diff <= 1e-4, f"features max |diff| {feature_diff}"

p_seed = np.stack(merged["pca_features_seed"].to_numpy())
p_ours = np.stack(merged["pca_features_ours"].to_numpy())
signs = np.sign((p_seed * p_ours).sum(axis=0))
rel = np.linalg.norm(p_seed - p_ours * signs) / np.linalg.norm(p_seed)
assert rel <= 1e-4, f"PCA relative Frobenius error {rel}"

cov = np.cov(f_seed, rowvar=False)  # centred, divided by m - 1
eig = np.sort(np.linalg.eigvalsh(cov))[::-1]
ratio = eig / eig.sum()
model = json.load(open(f"{out}/pca/model.json"))
ours_ratio = np.array(model["explained_variance_ratio"])
ratio_diff = np.abs(ours_ratio - ratio).max()
assert ratio_diff <= 1e-6, f"explained variance ratio max |diff| {ratio_diff}"

print(f"parity ok: {len(merged)} rows; features max |diff| {feature_diff:.2e}; "
      f"PCA rel. Frobenius {rel:.2e}; EVR max |diff| {ratio_diff:.2e}; "
      f"sum of {model['k']} ratios {ours_ratio[:model['k']].sum():.4f}")
