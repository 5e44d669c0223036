"""Fault suite for verger: bad inputs must become error rows, never crashes, and an interrupted run must resume
to exactly the output of an uninterrupted one.

usage: .venv/bin/python bench/fault_suite.py [--verger PATH] [--seed N] [--keep]

What it does (well under 3 minutes on a 2-core machine):

1. Builds a corpus in a temporary folder:
   - fruits/<class>/*.jpg: about 40 good Fruits-360 JPEGs from 3 seeded classes;
   - pillow/...: every file of ../shared/datasets/pillow-test-images (subfolders kept; the run only lists
     *.jpg and *.png, so the README and licence are present but never listed);
   - generated/: bad files made here: a zero-byte .jpg, a text file named .jpg, random bytes named .png,
     12 truncations each of a real JPEG and a real PNG, 12 JPEGs and 12 PNGs with 1-8 flipped bits, a JPEG
     whose SOF0 says 65500x65500, a PNG whose IHDR says 100000x100000 (with a valid CRC), and a PNG with a
     5 MB zTXt chunk (Pillow refuses more than 1 MiB of decompressed text).
   Everything random comes from --seed, so a failure can be replayed.
2. Asks Pillow 13.0.0 about every listed file, exactly as the original pipeline did:
   `Image.open(p).resize((224, 224))`, then `convert("RGB")` if needed. The file is "ok" (with the sha256 of
   the RGB bytes) or an error.
3. Runs `verger run --glob '*.jpg' --glob '*.png' --k 5` on the corpus and checks: exit code 3; every listed
   file in exactly one of result/ and errors/; every file Pillow opens in result/, every file Pillow refuses
   in errors/ with a message. Files on which verger and Pillow differ are listed as disagreements.
4. Resume: an uninterrupted baseline on a small corpus (the good images and a few bad ones, 4 rows per
   partition, batches of 2), then a run aborted by VERGER_ABORT_AT at each commit point, and 3 runs killed
   with SIGKILL (once the first staged partition appears, or after a seeded random delay); each is resumed
   with --resume and must equal the baseline (paths, labels, features and pca_features bit for bit, errors,
   PCA model).
5. Refusals (issue 41): `--overwrite` of the folder holding the input and of a folder that is not verger's,
   `--resume` of such a folder, of a run made with another input or partitioning, and pseudonymisation keys
   that are short or readable by others: each must exit 1 saying why and leave every file as it was.
6. Prints a summary block and exits 1 if anything crashed, a row was lost or duplicated, a resume failed, a
   refusal did not refuse cleanly, or
   the main run broke a rule above (exit code, missing message, paths never listed). Disagreements with
   Pillow are listed and counted but do not fail the suite: they are findings to triage. As an extra,
   informational check, `verger preprocess` must give Pillow's exact pixels for every file Pillow opens.

The default seed (15) is one whose bit flips and truncations hit known weak spots; other seeds damage other
bytes, so run a few (`for s in 1 2 3; do ...; done`) when changing the decoders.

"Crash" counts every verger run that was not deliberately interrupted and ended by a signal, with an exit code
other than 0-3, or did not finish within RUN_TIMEOUT_S (a hang; it is then killed).
"""
import argparse
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zlib

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
FRUITS = os.path.join(SHARED, "datasets/fruits360/Training")
PILLOW_IMAGES = os.path.join(SHARED, "datasets/pillow-test-images")
DEFAULT_VERGER = "/root/.cache/verger-target/release/verger"

GLOBS = ["--glob", "*.jpg", "--glob", "*.png"]
MAIN_ARGS = GLOBS + ["--k", "5"]
RESUME_ARGS = GLOBS + ["--k", "5", "--partition-rows", "4", "--batch-size", "2"]
ABORT_POINTS = ["listed", "manifest", "featurize:1", "featurize:3", "errors", "pca", "write:2", "report"]
SIGKILLS = 3
RUN_TIMEOUT_S = 90
EXPECTED_EXIT = 3  # every corpus here holds bad files


# ----------------------------------------------------------------------------------------------- corpus


def copy_fruits(dest, rng, classes=3, per_class=14):
    """About 40 good JPEGs from a few seeded classes, in <class>/ folders so labels are meaningful."""
    names = sorted(os.listdir(FRUITS))
    for cls in sorted(rng.sample(names, classes)):
        files = sorted(os.listdir(os.path.join(FRUITS, cls)))
        os.makedirs(os.path.join(dest, cls))
        for f in sorted(rng.sample(files, per_class)):
            shutil.copy(os.path.join(FRUITS, cls, f), os.path.join(dest, cls, f))


def png_chunk(kind, data):
    """One PNG chunk with a correct CRC, so only the field we mean to break is broken."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_chunks(data):
    """Splits a PNG file into (type, payload) pairs after the 8-byte signature."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def rebuild_png(signature, chunks):
    return signature + b"".join(png_chunk(k, d) for k, d in chunks)


def patch_sof0(jpeg, width, height):
    """Rewrites the frame size in the first SOF0 marker (FFC0: length, precision, height, width)."""
    i = jpeg.find(b"\xff\xc0")
    if i < 0:
        raise ValueError("source JPEG has no SOF0 (baseline) marker")
    b = bytearray(jpeg)
    b[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(b)


def flip_bits(data, rng):
    """Flips 1-8 random bits anywhere in the file: header damage and entropy-data damage both happen."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(len(b))
        b[pos] ^= 1 << rng.randrange(8)
    return bytes(b)


def generated_bad_files(jpeg, png, rng):
    """name -> bytes of every generated bad file (a few may still decode; Pillow decides, not the name)."""
    files = {
        "empty.jpg": b"",
        "text.jpg": b"this is a text file, not a JPEG\n" * 4,
        "random.png": bytes(rng.randrange(256) for _ in range(4096)),
        "sof0_65500x65500.jpg": patch_sof0(jpeg, 65500, 65500),
    }
    for i in range(12):
        files[f"trunc_jpeg_{i:02d}.jpg"] = jpeg[:rng.randrange(1, len(jpeg))]
        files[f"trunc_png_{i:02d}.png"] = png[:rng.randrange(1, len(png))]
        files[f"flip_jpeg_{i:02d}.jpg"] = flip_bits(jpeg, rng)
        files[f"flip_png_{i:02d}.png"] = flip_bits(png, rng)

    sig, chunks = png[:8], png_chunks(png)
    assert chunks[0][0] == b"IHDR"
    ihdr = struct.pack(">II", 100000, 100000) + chunks[0][1][8:]
    files["ihdr_100000x100000.png"] = rebuild_png(sig, [(b"IHDR", ihdr)] + chunks[1:])
    ztxt = b"Comment\x00\x00" + zlib.compress(b"A" * (5 * 1024 * 1024), 9)
    files["ztxt_5mb.png"] = rebuild_png(sig, chunks[:1] + [(b"zTXt", ztxt)] + chunks[1:])
    return files


def build_corpus(root, rng):
    """Creates fruits/, pillow/ and generated/ under root; returns the paths of the generated files."""
    copy_fruits(os.path.join(root, "fruits"), rng)
    shutil.copytree(PILLOW_IMAGES, os.path.join(root, "pillow"))
    jpeg = open(os.path.join(PILLOW_IMAGES, "hopper.jpg"), "rb").read()
    png = open(os.path.join(PILLOW_IMAGES, "hopper.png"), "rb").read()
    gen = os.path.join(root, "generated")
    os.makedirs(gen)
    paths = []
    for name, data in sorted(generated_bad_files(jpeg, png, rng).items()):
        paths.append(os.path.join(gen, name))
        with open(paths[-1], "wb") as f:
            f.write(data)
    return paths


def listed_files(root):
    """What `--glob '*.jpg' --glob '*.png'` should list: absolute paths, as verger's file:// URIs strip them."""
    return sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names
                  if f.endswith((".jpg", ".png")))


# ----------------------------------------------------------------------------------------------- Pillow


def pillow_verdict(path):
    """('ok', sha256 of the 224x224 RGB bytes) or ('error', 'Type: message'), as the original pipeline saw it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning stays a warning, as in the pipeline
            with Image.open(path) as original:
                img = original.resize((224, 224))
            if img.mode != "RGB":
                img = img.convert("RGB")
        return "ok", hashlib.sha256(img.tobytes()).hexdigest()
    except Exception as exc:  # anything Pillow raises means the pipeline would have dropped the image
        return "error", f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------------------------- running verger


class Runner:
    """Runs verger and keeps the crash count: a run that was not meant to be interrupted must end 0-3."""

    def __init__(self, binary):
        self.binary = binary
        self.crashes = []  # (what, description)

    def command(self, input_dir, output, extra):
        return [self.binary, "run", "--input", input_dir, "--output", output, *extra]

    def run(self, what, input_dir, output, extra, env=None, expect_abort=False):
        """Returns (returncode or None on hang, stderr). Aborted-on-purpose runs are not crashes."""
        proc = subprocess.Popen(self.command(input_dir, output, extra), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        try:
            _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            self.crashes.append((what, f"hang: no exit after {RUN_TIMEOUT_S} s; stderr tail: {err[-500:]}"))
            return None, err
        if not expect_abort and (proc.returncode < 0 or proc.returncode not in (0, 1, 2, 3)):
            self.crashes.append((what, f"exit {describe_exit(proc.returncode)}; stderr tail: {err[-1500:]}"))
        return proc.returncode, err


def describe_exit(code):
    if code is None:
        return "none (hang)"
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return str(code)


# ----------------------------------------------------------------------------------------------- reading output


def read_parts(folder):
    """All rows of the part-*.parquet files of one output folder, as a list of dicts."""
    rows = []
    for part in sorted(glob.glob(os.path.join(folder, "part-*.parquet"))):
        rows.extend(pq.read_table(part).to_pylist())
    return rows


def strip_uri(uri):
    return uri[len("file://"):] if uri.startswith("file://") else uri


def read_output(out):
    """(result rows, error rows, PCA model or None) of a finished output folder, paths without file://."""
    result = read_parts(os.path.join(out, "result"))
    errors = read_parts(os.path.join(out, "errors"))
    for row in result + errors:
        row["path"] = strip_uri(row["path"])
    model_path = os.path.join(out, "pca", "model.json")
    model = json.load(open(model_path)) if os.path.exists(model_path) else None
    return result, errors, model


def duplicates(paths):
    seen, dup = set(), set()
    for p in paths:
        (dup if p in seen else seen).add(p)
    return sorted(dup)


# ----------------------------------------------------------------------------------------------- check 3: main run


def check_main_run(runner, corpus, out, verdicts):
    """Runs verger on the whole corpus and compares every listed file with Pillow's verdict."""
    code, err = runner.run("main run", corpus, out, MAIN_ARGS)
    problems = []
    if code != EXPECTED_EXIT:
        problems.append(f"main run: exit {describe_exit(code)}, expected {EXPECTED_EXIT}; stderr: {err[-1500:]}")
    if not os.path.exists(os.path.join(out, "_SUCCESS")):
        problems.append("main run: no _SUCCESS")
        return {"lost": len(verdicts), "dups": 0, "bad": 0, "disagreements": [], "problems": problems}
    result, errors, _ = read_output(out)
    in_result = {r["path"] for r in result}
    in_errors = {r["path"]: r for r in errors}
    listed = set(verdicts)
    lost = sorted(listed - in_result - set(in_errors))
    dups = duplicates([r["path"] for r in result] + [r["path"] for r in errors])
    unexpected = sorted((in_result | set(in_errors)) - listed)
    if unexpected:
        problems.append(f"{len(unexpected)} output paths that were never listed, e.g. {unexpected[:3]}")
    manifest = {strip_uri(r["path"]) for r in read_parts(os.path.join(out, "manifest"))}
    if manifest != listed:
        problems.append(f"manifest differs from the expected listing: missing {sorted(listed - manifest)[:5]},"
                        f" extra {sorted(manifest - listed)[:5]}")
    for p in sorted(in_errors):
        if not (in_errors[p].get("message") or "").strip():
            problems.append(f"error row without a message: {p}")
    for p in lost:
        problems.append(f"row lost: {p}")
    for p in dups:
        problems.append(f"duplicate row: {p}")
    disagreements = []
    for p, (status, detail) in sorted(verdicts.items()):
        if status == "ok" and p not in in_result:
            e = in_errors.get(p, {})
            disagreements.append((p, f"Pillow opens it, verger refuses: [{e.get('stage')}] {e.get('message')}"))
        elif status == "error" and p not in in_errors and p in in_result:
            disagreements.append((p, f"Pillow refuses it ({detail}), verger put it in result/"))
    return {"lost": len(lost), "dups": len(dups), "bad": len(in_errors), "disagreements": disagreements,
            "problems": problems}


def stem_unique_groups(paths):
    """Splits paths into groups with distinct file stems: `verger preprocess` names its output DIR/<stem>.png."""
    groups, stems = [[]], [set()]
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in stems[-1]:
            groups.append([])
            stems.append(set())
        groups[-1].append(p)
        stems[-1].add(stem)
    return [g for g in groups if g]


def check_pixels(runner, verdicts, work):
    """Extra, informational: for every file Pillow opens, `verger preprocess` must give Pillow's exact RGB bytes.

    Not one of the suite's pass/fail counts (the brief asks for verdict agreement), but a pixel difference is a
    wrong feature vector just the same, so it is listed."""
    ok = [p for p, (status, _) in sorted(verdicts.items()) if status == "ok"]
    mismatches = []
    for i, group in enumerate(stem_unique_groups(ok)):
        out = os.path.join(work, f"pixels-{i}")
        proc = subprocess.run([runner.binary, "preprocess", *group, "--out", out], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)
        if proc.returncode < 0 or proc.returncode not in (0, 3):
            runner.crashes.append((f"preprocess group {i}", f"exit {describe_exit(proc.returncode)}"))
        for p in group:
            png = os.path.join(out, os.path.splitext(os.path.basename(p))[0] + ".png")
            if not os.path.exists(png):
                mismatches.append((p, "verger preprocess wrote no pixels"))
                continue
            with Image.open(png) as img:
                got = hashlib.sha256(img.convert("RGB").tobytes()).hexdigest()
            if got != verdicts[p][1]:
                mismatches.append((p, "224x224 RGB pixels differ from Pillow's"))
    return mismatches


# ----------------------------------------------------------------------------------------------- check 4: resume


def build_small_corpus(corpus, small, bad_files):
    """The good Fruits images plus a few bad ones: enough partitions (4 rows each) to interrupt in the middle."""
    shutil.copytree(os.path.join(corpus, "fruits"), os.path.join(small, "fruits"))
    os.makedirs(os.path.join(small, "bad"))
    for name in bad_files:
        shutil.copy(os.path.join(corpus, "generated", name), os.path.join(small, "bad", name))


def canonical(out):
    """An output reduced to what must not change across a resume: rows by path, errors, PCA model."""
    result, errors, model = read_output(out)
    rows = {}
    for r in result:
        rows.setdefault(r["path"], []).append(
            (r["label"], np.asarray(r["features"], dtype=np.float32), np.asarray(r["pca_features"])))
    errs = sorted((e["path"], e["stage"], e["message"]) for e in errors)
    return rows, errs, model


def compare_to_baseline(out, baseline):
    """Differences between a resumed output and the uninterrupted baseline, as short strings (empty = equal)."""
    if not os.path.exists(os.path.join(out, "_SUCCESS")):
        return ["no _SUCCESS after --resume"]
    diffs = []
    if os.path.exists(os.path.join(out, "_staging")):
        diffs.append("_staging left behind")
    rows, errs, model = canonical(out)
    base_rows, base_errs, base_model = baseline
    dup = [p for p, v in rows.items() if len(v) > 1]
    if dup:
        diffs.append(f"{len(dup)} duplicate paths in result, e.g. {dup[0]}")
    if set(rows) != set(base_rows):
        diffs.append(f"paths differ: missing {sorted(set(base_rows) - set(rows))[:3]},"
                     f" extra {sorted(set(rows) - set(base_rows))[:3]}")
    for p in sorted(set(rows) & set(base_rows)):
        (label, feat, pca), (blabel, bfeat, bpca) = rows[p][0], base_rows[p][0]
        if label != blabel:
            diffs.append(f"label differs for {p}")
        if not np.array_equal(feat, bfeat):
            diffs.append(f"features differ for {p} (max |d| {np.abs(feat - bfeat).max():.3g})")
        if pca.shape != bpca.shape or not np.array_equal(pca, bpca):
            diffs.append(f"pca_features differ for {p}")
    if errs != base_errs:
        diffs.append(f"errors differ: {len(errs)} rows vs {len(base_errs)} in the baseline")
    if model != base_model:
        diffs.append("pca/model.json differs")
    return diffs[:8]


def staged_partition_exists(out):
    return bool(glob.glob(os.path.join(out, "_staging", "part-*.parquet")))


def progress(out):
    """What an interrupted output holds, for the report: staged and written partitions, other commits."""
    count = lambda pattern: len(glob.glob(os.path.join(out, pattern)))
    done = [name for name, pattern in (("errors", "errors/part-*.parquet"), ("pca", "pca/model.json"),
                                       ("report", "report.json")) if count(pattern)]
    return (f"{count('_staging/part-*.parquet')} staged, {count('result/part-*.parquet')} written"
            + "".join(f", {d}" for d in done))


def sigkill_run(runner, small, out, trigger, delay):
    """Starts a run and SIGKILLs it once a staged partition exists (trigger 'staged') or after delay seconds.

    Returns (problem or None, what the output held when killed); a run that ends before it can be killed is
    a problem: that resume would prove nothing."""
    proc = subprocess.Popen(runner.command(small, out, RESUME_ARGS), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    start = time.monotonic()
    while proc.poll() is None and time.monotonic() - start < RUN_TIMEOUT_S:
        if (trigger == "staged" and staged_partition_exists(out)) or \
                (trigger == "delay" and time.monotonic() - start >= delay):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    state = progress(out)
    if proc.returncode != -signal.SIGKILL:
        return f"not interrupted: the run ended by itself with exit {describe_exit(proc.returncode)}", state
    return None, state


def resume_and_compare(runner, what, small, out, baseline):
    """The second half of every resume check: --resume must finish and equal the baseline."""
    if os.path.exists(os.path.join(out, "_SUCCESS")):
        return ["_SUCCESS present after the interruption"]
    code, err = runner.run(f"{what} --resume", small, out, RESUME_ARGS + ["--resume"])
    if code != EXPECTED_EXIT:
        return [f"--resume exit {describe_exit(code)}, expected {EXPECTED_EXIT}: {err.strip()[-600:]}"]
    return compare_to_baseline(out, baseline)


def check_resumes(runner, small, work, rng):
    """All resume checks; returns [(what, [problems])], an empty problem list meaning a pass."""
    base_out = os.path.join(work, "baseline")
    t0 = time.monotonic()
    code, err = runner.run("resume baseline", small, base_out, RESUME_ARGS)
    base_wall = time.monotonic() - t0
    if code != EXPECTED_EXIT:  # nothing to compare with: every resume check fails, the summary still prints
        why = f"baseline run ended with exit {describe_exit(code)}: {err.strip()[-600:]}"
        names = [f"VERGER_ABORT_AT={p}" for p in ABORT_POINTS] + [f"SIGKILL #{i + 1}" for i in range(SIGKILLS)]
        return [(name, [why]) for name in names]
    baseline = canonical(base_out)
    outcomes = []
    for point in ABORT_POINTS:
        out = os.path.join(work, "abort-" + point.replace(":", "-"))
        what = f"VERGER_ABORT_AT={point}"
        code, err = runner.run(what, small, out, RESUME_ARGS, env={"VERGER_ABORT_AT": point}, expect_abort=True)
        if code is None or code >= 0:
            outcomes.append((what, [f"the hook did not abort the run (exit {describe_exit(code)})"]))
            continue
        outcomes.append((what, resume_and_compare(runner, what, small, out, baseline)))
    for i in range(SIGKILLS):
        trigger, delay = ("staged", 0.0) if i == 0 else ("delay", rng.uniform(0.1, 0.9) * base_wall)
        what = f"SIGKILL #{i + 1} ({'first staged partition' if trigger == 'staged' else f'after {delay:.2f} s'})"
        out = os.path.join(work, f"sigkill-{i + 1}")
        problem, state = sigkill_run(runner, small, out, trigger, delay)
        what += f" [{state}]"
        outcomes.append((what, [problem] if problem else resume_and_compare(runner, what, small, out, baseline)))
    return outcomes


# ----------------------------------------------------------------------------------------------- refusals


def snapshot(folder):
    """Every file under `folder` with its bytes (the claim file aside: a refused run may have held it)."""
    files = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            if name != "_CLAIM":
                path = os.path.join(directory, name)
                files[os.path.relpath(path, folder)] = open(path, "rb").read()
    return files


def check_refusals(runner, small, work):
    """Issue 41's refusals: each command must fail with exit 1 naming why, and leave every file as it was.
    Returns [(what, [problems])]."""
    photos = os.path.join(work, "photos")
    shutil.copytree(small, photos)
    one_class = os.path.join(photos, sorted(os.listdir(photos))[0])
    documents = os.path.join(work, "documents")
    os.makedirs(os.path.join(documents, "result"))
    for name, text in [("notes.txt", "mine"), ("result/thesis.tex", "mine too")]:
        with open(os.path.join(documents, name), "w") as f:
            f.write(text)
    aborted = os.path.join(work, "aborted")
    runner.run("a run to resume", photos, aborted, RESUME_ARGS, env={"VERGER_ABORT_AT": "featurize:2"},
               expect_abort=True)
    other = os.path.join(work, "other")
    shutil.copytree(one_class, os.path.join(other, "only"))
    short_key, loose_key = os.path.join(work, "short.key"), os.path.join(work, "loose.key")
    for path, key, mode in [(short_key, "sixteen-byte-key", 0o600), (loose_key, "k" * 40, 0o644)]:
        with open(path, "w") as f:
            f.write(key)
        os.chmod(path, mode)
    cases = [
        ("--overwrite of the folder holding the input", one_class, photos, ["--overwrite"], "contains the input",
         photos),
        ("--overwrite of a folder that is not verger's", photos, documents, ["--overwrite"], "not verger's",
         documents),
        ("--resume of a folder that is not verger's", photos, documents, ["--resume"], "not verger's", documents),
        ("--resume with another input", other, aborted, RESUME_ARGS + ["--resume"], "input:", aborted),
        ("--resume with another partitioning", photos, aborted,
         GLOBS + ["--k", "5", "--partition-rows", "5", "--resume"], "--partition-rows", aborted),
        ("an output holding the feature cache", photos, os.path.join(work, "with-cache"),
         GLOBS + ["--cache", os.path.join(work, "with-cache", "cache")], "contains the cache", None),
        ("an output holding the given PCA model", photos, aborted,
         GLOBS + ["--overwrite", "--pca-model", os.path.join(aborted, "pca", "model.json")], "the PCA model",
         aborted),
        ("a pseudonymisation key of 16 bytes", photos, os.path.join(work, "short"),
         ["--pseudonymize-paths", short_key], "at least 32", None),
        ("a pseudonymisation key others may read", photos, os.path.join(work, "loose"),
         ["--pseudonymize-paths", loose_key], "chmod 600", None),
    ]
    outcomes = []
    for what, input_dir, output, extra, says, untouched in cases:
        before = snapshot(untouched) if untouched else None
        code, err = runner.run(what, input_dir, output, extra)
        problems = []
        if code != 1:
            problems.append(f"exit {describe_exit(code)}, not 1")
        if says not in err:
            problems.append(f"the message does not say {says!r}: {err.strip()[-300:]}")
        if untouched and snapshot(untouched) != before:
            problems.append(f"{os.path.basename(untouched)} changed")
        outcomes.append((what, problems))
    return outcomes


# ----------------------------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--verger", default=DEFAULT_VERGER, help=f"verger binary (default {DEFAULT_VERGER})")
    ap.add_argument("--seed", type=int, default=15,
                    help="seed for the corpus, bit flips and kill delays (default 15; see the note at the top)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder and print where it is")
    args = ap.parse_args()
    if not os.access(args.verger, os.X_OK):
        sys.exit(f"no verger binary at {args.verger}")
    rng = random.Random(args.seed)
    started = time.monotonic()
    work = os.path.realpath(tempfile.mkdtemp(prefix="verger-faults-"))
    try:
        corpus = os.path.join(work, "corpus")
        build_corpus(corpus, rng)
        verdicts = {p: pillow_verdict(p) for p in listed_files(corpus)}
        print(f"corpus: {len(verdicts)} listed files, Pillow opens"
              f" {sum(v[0] == 'ok' for v in verdicts.values())}", flush=True)

        runner = Runner(args.verger)
        main_check = check_main_run(runner, corpus, os.path.join(work, "out"), verdicts)
        pixel_mismatches = check_pixels(runner, verdicts, work)
        print(f"main run and pixels checked ({time.monotonic() - started:.0f} s)", flush=True)

        small = os.path.join(work, "small")
        build_small_corpus(corpus, small, ["empty.jpg", "text.jpg", "trunc_jpeg_00.jpg", "ihdr_100000x100000.png"])
        outcomes = check_resumes(runner, small, os.path.join(work, "resume"), rng)
        passed = sum(not problems for _, problems in outcomes)
        refusals = check_refusals(runner, small, os.path.join(work, "refusals"))
        refused = sum(not problems for _, problems in refusals)

        for p in main_check["problems"]:
            print(f"PROBLEM {p}")
        for path, why in main_check["disagreements"]:
            print(f"DISAGREEMENT {os.path.relpath(path, corpus)}: {why}")
        for path, why in pixel_mismatches:
            print(f"PIXELS {os.path.relpath(path, corpus)}: {why}")
        print(f"pixel mismatches with Pillow (verger preprocess, informational): {len(pixel_mismatches)}")
        for what, problems in outcomes:
            print(f"resume {'ok  ' if not problems else 'FAIL'} {what}" + "".join(f"\n    {p}" for p in problems))
        for what, problems in refusals:
            print(f"refusal {'ok  ' if not problems else 'FAIL'} {what}" + "".join(f"\n    {p}" for p in problems))
        for what, why in runner.crashes:
            print(f"CRASH {what}: {why}")
        print(f"({time.monotonic() - started:.0f} s)\n")
        print(f"files tried: {len(verdicts)}")
        print(f"bad files recorded: {main_check['bad']}")
        print(f"crashes: {len(runner.crashes)}")
        print(f"rows lost: {main_check['lost']}")
        print(f"duplicates: {main_check['dups']}")
        print(f"disagreements with Pillow: {len(main_check['disagreements'])}")
        print(f"resumes tried: {len(outcomes)}, passed: {passed}")
        print(f"refusals tried: {len(refusals)}, refused cleanly: {refused}")
        failed = (runner.crashes or main_check["problems"] or main_check["lost"] or main_check["dups"]
                  or passed < len(outcomes) or refused < len(refusals))
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
