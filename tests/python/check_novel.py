"""`verger evaluate --novel-only-vs TRAIN_RUN`'s novel-only scores against numpy: the novel Test images are
those whose most similar TRAIN_RUN image (cosine similarity of the 1280-d features) is below the threshold;
their top-1 comes from the classifier's own weights (classifier.json) on their pca_features.

usage: check_novel.py CLASSIFIER TEST_RUN TRAIN_RUN
"""
import json
import sys

import numpy as np
import pyarrow.parquet as pq

classifier, test_run, train_run = sys.argv[1:4]
evaluation = json.load(open(f"{classifier}/evaluation.json"))
novel = evaluation["novel"]
threshold = novel["threshold"]


def rows(output):
    t = pq.read_table(f"{output}/result", columns=["path", "label", "features", "pca_features"]).to_pandas()
    t = t.sort_values("path").reset_index(drop=True)
    x = np.stack(t["features"].to_numpy()).astype(np.float64)
    return t, x / np.linalg.norm(x, axis=1, keepdims=True)


test, test_x = rows(test_run)
_, train_x = rows(train_run)
keep = np.max(test_x @ train_x.T, axis=1) < threshold
assert novel["rows"] == int(keep.sum()), (novel["rows"], int(keep.sum()))

model = json.load(open(f"{classifier}/classifier.json"))
assert model["input"] == "pca_features", model["input"]
m = model["model"]
weights = np.array(m["weights"]).reshape(m["classes"], m["dim"])
pca = np.stack(test["pca_features"].to_numpy())
predicted = np.argmax(pca @ weights.T + np.array(m["bias"]), axis=1)
truth = test["label"].map({c: i for i, c in enumerate(model["classes"])}).to_numpy()
correct = predicted == truth
top1_all, top1_novel = correct.mean(), correct[keep].mean()
print(
    f"all {len(test)}: top-1 {top1_all:.4f} (verger {evaluation['top1']:.4f}); "
    f"novel {int(keep.sum())}: top-1 {top1_novel:.4f} (verger {novel['top1']:.4f}), macro F1 {novel['macro_f1']:.4f}"
)
assert abs(top1_all - evaluation["top1"]) < 1e-9
assert abs(top1_novel - novel["top1"]) < 1e-9
