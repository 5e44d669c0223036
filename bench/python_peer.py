"""Python peer for verger's benchmark: the simplest fast Python version of the same job.

It does what verger does, with the stock Python tools a data scientist would reach for:
Pillow resize to 224x224 (as the original pipeline did), MobileNetV2 features with onnxruntime
in batches of 32, PCA with numpy (Spark ML convention: covariance of the centred data, projection
of the *uncentred* data), and a Parquet file with path, label, features, pca_features.
bench/bench.py runs it beside verger so the speed comparison is against a fair, plain peer.

usage: python bench/python_peer.py --input DIR --output FILE.parquet [--k 50] [--threads 2] [--limit N]
Prints one JSON line: images, wall_s, cpu_s, peak_rss_mib, images_per_s, cpu_ms_per_image.
"""
import argparse
import json
import os
import resource
import time

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(os.path.dirname(ROOT), "shared/models/mobilenet_v2/mobilenet_v2_imagenet.onnx")
BATCH = 32


def list_images(folder):
    """Absolute paths of *.jpg under folder, sorted like verger's file:// URIs."""
    folder = os.path.abspath(folder)
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".jpg"))


def pixels(path):
    img = Image.open(path).resize((224, 224))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def embed(paths, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, len(paths), BATCH):
        batch = np.stack([pixels(p) for p in paths[i:i + BATCH]])
        out.append(session.run(["features"], {"input": batch})[0])
    return np.concatenate(out)


def pca(features, k):
    """Top-k projection (uncentred X @ V) and the explained-variance ratio of all components."""
    x = features.astype(np.float64)
    eigenvalues, vectors = np.linalg.eigh(np.cov(x, rowvar=False))  # centred, divided by m - 1
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    return x @ vectors[:, :k], eigenvalues / eigenvalues.sum()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int)
    args = ap.parse_args()

    start = time.perf_counter()
    paths = list_images(args.input)[:args.limit]
    features = embed(paths, args.threads)
    projected, ratio = pca(features, args.k)
    table = pa.table({
        "path": pa.array(["file://" + p for p in paths], pa.string()),
        "label": pa.array([os.path.basename(os.path.dirname(p)) for p in paths], pa.string()),
        "features": pa.array(list(features), pa.list_(pa.float32())),
        "pca_features": pa.array(list(projected), pa.list_(pa.float64())),
    })
    pq.write_table(table, args.output)
    wall = time.perf_counter() - start

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    n = len(paths)
    print(json.dumps({
        "images": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "images_per_s": round(n / wall, 2),
        "cpu_ms_per_image": round(cpu * 1000 / n, 2),
        "explained_variance": round(float(ratio[:args.k].sum()), 6),
    }))


if __name__ == "__main__":
    main()
