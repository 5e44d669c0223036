"""Reduced precision on the CPU (issue #20, part 2), judged by the issue's rule against verger's fp32 features.

For each mode (OpenVINO's CPU plugin with its inference precision set explicitly: bf16, f16, and fp32 up to a
block then bf16, `bf16-from-block1` and `bf16-from-block3`), on the shared
splits: the features' mean/min cosine and max |delta| against verger's own fp32 features; the 1-nearest-neighbour
label agreement with fp32 (Test -> Training); top-1 of verger's classifier (`verger train` + `verger evaluate`,
on PCA-50 and on the 1280-d features) trained and scored on the mode's features; and inference-only images/s on
one thread against ONNX Runtime fp32 (verger's session settings) measured in the same run. A mode passes when
both top-1 figures lose at most 0.3 points and it runs at least 1.8x the fp32 floor.

Every mode's PCA is refitted here (numpy, Spark ML's convention: eigenvectors of the sample covariance, no
centring when projecting), fp32's too, so that only the features differ between the rows.

usage: python bench/precision.py [--verger BIN] [--train DIR] [--test DIR] [--modes bf16,f16,bf16-from-block1,bf16-from-block3] [--work DIR]

Runs with `.venv/bin/python` (scripts/setup installs `openvino` and `onnx` there, beside numpy, pyarrow, Pillow
and onnxruntime). `bf16-from-block1` is what `verger run --precision bf16` computes. BIN defaults to this
checkout's release build.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import MODEL, SHARED, target_dir  # noqa: E402
from machine import cpu_model  # noqa: E402

BATCH = 16
MAX_LOSS_POINTS = 0.3
MIN_SPEEDUP = 1.8


def pixels(uri):
    """The model's input for one image, as the original pipeline made it (Pillow, BICUBIC, then RGB)."""
    image = Image.open(uri.removeprefix("file://")).resize((224, 224))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.float32) / 127.5 - 1


def read_run(run):
    """A run's result as (paths, features) in one order, and its parts' file names."""
    parts = sorted(glob.glob(os.path.join(run, "result", "*.parquet")))
    paths, feats = [], []
    for part in parts:
        table = pq.read_table(part, columns=["path", "features"])
        paths += table.column("path").to_pylist()
        feats.append(np.stack(table.column("features").to_numpy(zero_copy_only=False)))
    return paths, np.concatenate(feats).astype(np.float32)


# Where a mixed mode hands over from fp32 to bf16: the output of the block before the one named. The bf16 error
# of the whole network comes almost all from the first blocks at 112x112 and 56x56 (measured by cutting the graph
# at each block), so these modes keep those in fp32 and run the rest, most of the arithmetic, in bf16.
HANDOVER = {
    "bf16-from-block1": "mobilenetv2_features/expanded_conv_project_BN/FusedBatchNormV3:0",
    "bf16-from-block3": "mobilenetv2_features/block_2_add/add:0",
}
OV_PRECISION = {"bf16": "bf16", "f16": "f16", "fp32": "f32"}


def compile_part(core, path, precision, threads, shape):
    model = core.read_model(path)
    model.reshape({model.inputs[0].get_any_name(): shape})
    # Set explicitly: on CPUs with bf16 support OpenVINO would pick bf16 by itself.
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                 "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1})
    got = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    assert got == precision, f"asked for {precision}, OpenVINO runs {got}"
    return compiled


class OpenVinoMode:
    """One mode: the whole model in one precision, or fp32 up to a block and bf16 after it (two compiled
    models, the first's output fed to the second)."""

    def __init__(self, core, mode, threads, scratch):
        if mode in HANDOVER:
            from onnx.utils import extract_model
            head, tail = os.path.join(scratch, f"{mode}-head.onnx"), os.path.join(scratch, f"{mode}-tail.onnx")
            extract_model(MODEL, head, ["input"], [HANDOVER[mode]])
            extract_model(MODEL, tail, [HANDOVER[mode]], ["features"])
            first = compile_part(core, head, "f32", threads, [BATCH, 224, 224, 3])
            second = compile_part(core, tail, "bf16", threads, list(first.outputs[0].shape))
            self.requests = [first.create_infer_request(), second.create_infer_request()]
        else:
            self.requests = [compile_part(core, MODEL, OV_PRECISION[mode], threads,
                                          [BATCH, 224, 224, 3]).create_infer_request()]

    def infer(self, x):
        for request in self.requests:
            x = request.infer({0: x})[0]
        return x


def supported(mode, capabilities):
    return {"f16": "FP16"}.get(mode, "BF16") in capabilities


def featurize(mode, paths):
    out = []
    for i in range(0, len(paths), BATCH):
        x = np.stack([pixels(p) for p in paths[i:i + BATCH]])
        n = len(x)
        if n < BATCH:
            x = np.concatenate([x, np.zeros((BATCH - n, 224, 224, 3), np.float32)])
        out.append(mode.infer(x).reshape(BATCH, -1)[:n].copy())
    return np.concatenate(out)


def one_thread_rate(infer, x, rounds=8):
    infer(x)
    start = time.perf_counter()
    for _ in range(rounds):
        infer(x)
    return rounds * len(x) / (time.perf_counter() - start)


def speeds(modes, core, x, scratch):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])
    rates = {"fp32": one_thread_rate(lambda b: session.run(None, {"input": b}), x)}
    for mode in modes:
        rates[mode] = one_thread_rate(OpenVinoMode(core, mode, 1, scratch).infer, x)
    return rates


def with_features(src, dst, paths, feats, pca=None):
    """A copy of run `src` at `dst` whose features are `feats` (rows in `paths` order) and whose PCA is
    refitted on them (`pca` None: the Training run) or taken from the Training copy's (`pca` its folder)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    model_path = os.path.join(dst, "pca", "model.json")
    model = json.load(open(model_path))
    if pca is None:
        x = feats.astype(np.float64)
        values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
        order = np.argsort(values)[::-1]
        values, vectors = values[order], vectors[:, order]
        model.update(components=vectors[:, :model["k"]].T.tolist(), eigenvalues=values.tolist(),
                     explained_variance_ratio=(values / values.sum()).tolist(), mean=x.mean(0).tolist())
        json.dump(model, open(model_path, "w"))
    else:
        shutil.copy(os.path.join(pca, "pca", "model.json"), model_path)
        model = json.load(open(model_path))
    components = np.asarray(model["components"], dtype=np.float64)
    row = dict(zip(paths, feats))
    for part in glob.glob(os.path.join(dst, "result", "*.parquet")):
        table = pq.read_table(part)
        f = np.stack([row[p] for p in table.column("path").to_pylist()]).astype(np.float32)
        for name, values in (("features", f), ("pca_features", f.astype(np.float64) @ components.T)):
            field = table.schema.field(name)
            table = table.set_column(table.column_names.index(name), field, pa.array(list(values), type=field.type))
        pq.write_table(table, part)


def top1(verger, train, test, classifier, on):
    subprocess.run([verger, "train", train, "--out", classifier, "--on", on, "--overwrite"], check=True,
                   capture_output=True)
    subprocess.run([verger, "evaluate", "--model", classifier, test], check=True, capture_output=True)
    return 100 * json.load(open(os.path.join(classifier, "evaluation.json")))["top1"]


def nearest_labels(train, test, labels):
    d = (test ** 2).sum(1)[:, None] - 2 * test @ train.T + (train ** 2).sum(1)[None]
    return labels[d.argmin(1)]


def cosines(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verger")
    ap.add_argument("--train", default=os.path.join(SHARED, "datasets/fruits360/Training"))
    ap.add_argument("--test", default=os.path.join(SHARED, "datasets/fruits360/Test"))
    ap.add_argument("--modes", default="bf16,f16," + ",".join(HANDOVER))
    ap.add_argument("--work", help="keep the runs and classifiers here (default: a temporary folder)")
    args = ap.parse_args()
    import openvino as ov

    verger = args.verger or os.path.join(target_dir(), "release", "verger")
    core = ov.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    modes = []
    for mode in args.modes.split(","):
        if not supported(mode, capabilities):
            print(f"{mode}: this CPU has no {mode} support (OpenVINO lists {capabilities}): not measured")
        else:
            modes.append(mode)
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; OpenVINO {ov.get_version()}; modes {modes}")

    work = args.work or tempfile.mkdtemp()
    os.makedirs(work, exist_ok=True)
    at = lambda name: os.path.join(work, name)  # noqa: E731
    for split, src in (("train", args.train), ("test", args.test)):
        if not os.path.exists(at(split)):
            subprocess.run([verger, "run", "--input", src, "--output", at(split), "--model", MODEL], check=True,
                           capture_output=True)
    train_paths, train_fp32 = read_run(at("train"))
    test_paths, test_fp32 = read_run(at("test"))
    label = lambda p: os.path.basename(os.path.dirname(p))  # noqa: E731
    train_labels = np.array([label(p) for p in train_paths])

    x = np.stack([pixels(p) for p in test_paths[:BATCH]])
    rates = speeds(modes, core, x, work)
    print(f"inference only, 1 thread, batch {BATCH}: " +
          ", ".join(f"{m} {r:.1f} images/s" for m, r in rates.items()))

    rows = {}
    fp32_nn = nearest_labels(train_fp32.astype(np.float64), test_fp32.astype(np.float64), train_labels)
    for mode in ["fp32"] + modes:
        if mode == "fp32":
            train_f, test_f = train_fp32, test_fp32
        else:
            ov_mode = OpenVinoMode(core, mode, os.cpu_count(), work)
            train_f, test_f = featurize(ov_mode, train_paths), featurize(ov_mode, test_paths)
        with_features(at("train"), at(f"train-{mode}"), train_paths, train_f)
        with_features(at("test"), at(f"test-{mode}"), test_paths, test_f, pca=at(f"train-{mode}"))
        c = np.concatenate([cosines(train_f, train_fp32), cosines(test_f, test_fp32)])
        nn = nearest_labels(train_f.astype(np.float64), test_f.astype(np.float64), train_labels)
        rows[mode] = {
            "mean_cosine": float(c.mean()), "min_cosine": float(c.min()),
            "max_abs_diff": float(np.abs(np.concatenate([train_f, test_f]) -
                                         np.concatenate([train_fp32, test_fp32])).max()),
            "nn_agreement_pct": float(100 * (nn == fp32_nn).mean()),
            "top1_pca": top1(verger, at(f"train-{mode}"), at(f"test-{mode}"), at(f"clf-{mode}-pca"),
                             "pca-features"),
            "top1_features": top1(verger, at(f"train-{mode}"), at(f"test-{mode}"), at(f"clf-{mode}-1280"),
                                  "features"),
            "speedup": rates[mode] / rates["fp32"],
        }
        print(mode, json.dumps(rows[mode]), flush=True)

    base = rows["fp32"]
    print(f"\n| mode | mean / min cosine | 1-NN agreement | top-1 PCA-50 | top-1 1280-d | 1 thread vs fp32 | verdict |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for mode, r in rows.items():
        loss = max(base["top1_pca"] - r["top1_pca"], base["top1_features"] - r["top1_features"])
        verdict = "reference" if mode == "fp32" else (
            "accepted" if loss <= MAX_LOSS_POINTS and r["speedup"] >= MIN_SPEEDUP else
            f"rejected ({'loses %.2f points' % loss if loss > MAX_LOSS_POINTS else ''}"
            f"{', ' if loss > MAX_LOSS_POINTS and r['speedup'] < MIN_SPEEDUP else ''}"
            f"{'%.2fx < %.1fx' % (r['speedup'], MIN_SPEEDUP) if r['speedup'] < MIN_SPEEDUP else ''})")
        print(f"| {mode} | {r['mean_cosine']:.4f} / {r['min_cosine']:.4f} | {r['nn_agreement_pct']:.2f} % | "
              f"{r['top1_pca']:.2f} % ({r['top1_pca'] - base['top1_pca']:+.2f}) | "
              f"{r['top1_features']:.2f} % ({r['top1_features'] - base['top1_features']:+.2f}) | "
              f"{r['speedup']:.2f}x | {verdict} |")
    if not args.work:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
