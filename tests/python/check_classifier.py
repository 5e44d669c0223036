"""A classifier folder as pyarrow and pandas read it: the neighbours (one row per training image, with
pca_features) and the confusion matrix of its last evaluation (counts adding up to the rows evaluated).

usage: check_classifier.py CLASSIFIER CLASSES EVALUATED_ROWS
"""
import json
import sys

import pyarrow.parquet as pq

folder, classes, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
clf = json.load(open(f"{folder}/classifier.json"))
assert len(clf["classes"]) == classes, len(clf["classes"])
neighbours = pq.read_table(f"{folder}/neighbours.parquet").to_pandas()
k = json.load(open(f"{folder}/pca_model.json"))["k"]
assert set(neighbours.columns) == {"path", "label", "pca_features"}, neighbours.columns
assert neighbours["pca_features"].map(len).eq(k).all()
assert neighbours["label"].nunique() == classes
confusion = pq.read_table(f"{folder}/confusion.parquet").to_pandas()
assert confusion["count"].sum() == rows, confusion["count"].sum()
diagonal = confusion[confusion.true_label == confusion.predicted_label]["count"].sum()
top1 = json.load(open(f"{folder}/evaluation.json"))["top1"]
assert abs(diagonal / rows - top1) < 1e-12, (diagonal, rows, top1)
print(f"{len(neighbours)} neighbours, {len(confusion)} confusion cells, top-1 {top1:.4f}")
