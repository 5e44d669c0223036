"""`verger quality`'s findings on planted problems (plant_quality.py), against what was planted, cleanlab and
a numpy oracle:
- every exact copy shares its original's exact_group; >= 18/20 JPEG re-encodings are near duplicates of their
  original; >= 16/20 moved images are among the first 100 suspects; >= 8/10 non-fruit photos are among the
  first 20 outliers;
- the label issues equal cleanlab.filter.find_label_issues(filter_by="confident_learning") on the same
  out-of-fold probabilities, Jaccard >= 0.9;
- TEST_RUN's leakage into RUN (its `quality --against RUN`) equals numpy's count of Test images whose
  most similar RUN image has cosine similarity >= the threshold.

usage: check_quality.py RUN TEST_RUN PLANTED_JSON
"""
import json
import sys

import numpy as np
import pyarrow.parquet as pq
from cleanlab.filter import find_label_issues

run, test_run, planted = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))


def local(uri):
    return uri[len("file://"):] if uri.startswith("file://") else uri


summary = json.load(open(f"{run}/quality/summary.json"))
table = pq.read_table(f"{run}/quality/images.parquet")
images = table.to_pandas()
images["path"] = images["path"].map(local)
images["nearest_path"] = images["nearest_path"].map(lambda p: None if p is None else local(p))
by_path = images.set_index("path")
assert len(images) == summary["rows"], (len(images), summary["rows"])

exact = sum(
    1
    for pair in planted["exact"]
    if by_path.loc[pair["copy"], "exact_group"] == by_path.loc[pair["original"], "exact_group"]
    and not np.isnan(by_path.loc[pair["copy"], "exact_group"])
)
print(f"exact copies found: {exact}/{len(planted['exact'])}")
assert exact == len(planted["exact"])

threshold = summary["threshold"]
reencoded = 0
for pair in planted["reencoded"]:
    copy, original = by_path.loc[pair["copy"]], by_path.loc[pair["original"]]
    same_group = not np.isnan(copy["near_group"]) and copy["near_group"] == original["near_group"]
    reencoded += same_group
print(f"re-encoded duplicates found: {reencoded}/{len(planted['reencoded'])}")
assert reencoded >= 18

suspects = [local(s["path"]) for s in summary["suspects"][:100]]
wrong = sum(w["path"] in suspects for w in planted["wrong"])
print(f"wrong labels in the top 100 suspects: {wrong}/{len(planted['wrong'])}")
assert wrong >= 16
for w in planted["wrong"]:
    for s in summary["suspects"]:
        if local(s["path"]) == w["path"]:
            assert s["label"] == w["given"], (s, w)

outliers = [local(o["path"]) for o in summary["outliers"][:20]]
non_fruit = sum(p in outliers for p in planted["non_fruit"])
print(f"non-fruit photos among the top 20 outliers: {non_fruit}/{len(planted['non_fruit'])}")
assert non_fruit >= 8

classes = json.loads(table.schema.metadata[b"verger.classes"])
labels = images["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
probabilities = np.stack(images["probabilities"].to_numpy())
assert probabilities.shape == (len(images), len(classes)), probabilities.shape
assert np.allclose(probabilities.sum(axis=1), 1.0)
theirs = find_label_issues(labels, probabilities, filter_by="confident_learning")
ours = images["label_issue"].to_numpy()
union = np.sum(theirs | ours)
jaccard = np.sum(theirs & ours) / union if union else 1.0
print(f"label issues: verger {ours.sum()}, cleanlab {theirs.sum()}, Jaccard {jaccard:.3f}")
assert jaccard >= 0.9
assert ours.sum() == summary["label_issues"]


def features(output):
    t = pq.read_table(f"{output}/result", columns=["path", "features"]).to_pandas()
    x = np.stack(t["features"].to_numpy()).astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


test, train = features(test_run), features(run)
best = np.max(test @ train.T, axis=1)
leaked = int(np.sum(best >= threshold))
leakage = json.load(open(f"{test_run}/quality/summary.json"))["leakage"]
assert len(leakage) == 1, leakage
print(f"leakage: verger {leakage[0]['leaked']} of {leakage[0]['rows']} ({leakage[0]['share']:.4f}), numpy {leaked}")
assert leakage[0]["rows"] == len(test)
assert leakage[0]["leaked"] == leaked
rows = pq.read_table(f"{test_run}/quality/leakage.parquet").to_pandas()
assert rows["leaked"].sum() == leaked and len(rows) == len(test)
