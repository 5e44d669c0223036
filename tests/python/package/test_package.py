"""The Python package against the command line and Pillow: the same results, Arrow/pandas back, typed
errors with the CLI's messages, bad images as error rows, the GIL released, progress reported."""

import os
import subprocess
import sys
import threading

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import verger
from conftest import LABELS, MODEL, ODD_IMAGES, REPO, copy_images, training_images, verger_cli


def features(table: pa.Table, column: str = "features") -> np.ndarray:
    return np.array(table.column(column).to_pylist(), dtype=np.float64)


def test_run_reports_and_reads_back_as_arrow_and_pandas(small_input, small_run):
    output, report = small_run
    assert isinstance(report, verger.Report)
    assert report.status == "success"
    assert report.counts.listed == 64 and report.counts.featurized == 64 and report.counts.failed == 0
    assert report["pca"]["k"] == 10 and 0 < report.pca.explained_variance < 1

    table = verger.read(output)
    assert isinstance(table, pa.Table)
    assert table.num_rows == 64
    assert {"path", "label", "features", "pca_features"} <= set(table.column_names)
    paths = table.column("path").to_pylist()
    assert paths == sorted(paths)
    assert sorted(set(table.column("label").to_pylist())) == sorted(LABELS)
    frame = table.to_pandas()
    assert len(frame) == 64 and frame["features"].map(len).eq(1280).all()
    assert frame["pca_features"].map(len).eq(10).all()

    pca = verger.read_pca(output)
    assert pca.components.shape == (10, 1280) and pca.k == 10 and pca.count == 64
    assert pca.explained_variance == pytest.approx(report.pca.explained_variance, rel=1e-12)
    # Spark's convention: raw vectors projected, no centring.
    np.testing.assert_allclose(pca.transform(features(table)), features(table, "pca_features"), rtol=1e-9, atol=1e-9)


def test_run_gives_the_command_lines_results(small_input, small_run, tmp_path):
    output, _ = small_run
    cli_output = tmp_path / "cli"
    done = verger_cli("run", "--input", str(small_input), "--output", str(cli_output), "--k", "10", "--threads", "2")
    assert done.returncode == 0, done.stderr
    ours, theirs = verger.read(output), verger.read(cli_output)
    assert ours.column("path").to_pylist() == theirs.column("path").to_pylist()
    assert np.array_equal(features(ours), features(theirs))
    assert np.array_equal(features(ours, "pca_features"), features(theirs, "pca_features"))


def test_a_cache_serves_the_second_run(small_input, small_run, tmp_path):
    cache = tmp_path / "cache"
    first = verger.run(small_input, tmp_path / "first", k=10, threads=2, cache=cache, progress=False)
    assert first["cache"]["featurized"] == 64 and first["cache"]["hits"] == 0
    second = verger.run(small_input, tmp_path / "second", k=10, threads=2, cache=cache, progress=False)
    assert second["cache"]["hits"] == 64 and second["cache"]["featurized"] == 0 and second["cache"]["unread"] == 64
    assert second["cache"]["pca_rows_merged"] == 64
    ours, theirs = verger.read(tmp_path / "second"), verger.read(small_run[0])
    assert np.array_equal(features(ours), features(theirs))
    # The PCA statistics merged from the cache are summed in another order: equal up to rounding.
    theirs_pca = features(theirs, "pca_features")
    assert np.abs(features(ours, "pca_features") - theirs_pca).max() <= 1e-9 * np.abs(theirs_pca).max()


def test_featurize_paths_and_bytes_match_the_run(small_input, small_run):
    output, _ = small_run
    run = verger.read(output)
    by_path = {p.removeprefix("file://"): i for i, p in enumerate(run.column("path").to_pylist())}
    files = sorted(small_input.rglob("*.jpg"))[:12]
    expected = features(run.take([by_path[str(f)] for f in files]))

    from_paths = verger.featurize(files, threads=2)
    assert from_paths.column_names == ["path", "features", "error_stage", "error"]
    assert from_paths.column("path").to_pylist() == [str(f) for f in files]
    assert np.array_equal(features(from_paths), expected), "features differ from the run's"

    from_bytes = verger.featurize([f.read_bytes() for f in files], threads=1)
    assert from_bytes.column("path").null_count == len(files)
    assert np.array_equal(features(from_bytes), expected), "features of bytes differ from the run's"
    assert from_bytes.column("error").null_count == len(files)


def test_bad_images_become_error_rows_not_exceptions(tmp_path):
    good = training_images("Kiwi", 2)
    truncated = good[0].read_bytes()[:2000]
    missing = tmp_path / "nowhere" / "missing.jpg"
    table = verger.featurize(
        [good[0], b"not an image", truncated, str(missing), None, bytearray(good[1].read_bytes()), b""]
    )
    assert table.num_rows == 7
    ok = [f is not None for f in table.column("features").to_pylist()]
    assert ok == [True, False, False, False, False, True, False]
    stages = table.column("error_stage").to_pylist()
    errors = table.column("error").to_pylist()
    assert stages == [None, "decode", "decode", "read", "read", None, "decode"]
    assert str(missing) in errors[3], errors[3]
    assert errors[4] == "no image (None)"
    assert all(e for e, good in zip(errors, ok) if not good)
    # The good rows are unaffected by the bad ones around them.
    alone = verger.featurize([good[0], good[1]])
    assert np.array_equal(features(table.take([0, 5])), features(alone))


def test_wrong_types_and_options_raise_typed_errors(tmp_path):
    with pytest.raises(TypeError, match=r"images\[1\] is int"):
        verger.featurize([training_images("Kiwi", 1)[0], 42])
    with pytest.raises(verger.UsageError, match="--variance"):
        verger.run(tmp_path, tmp_path / "out", k=5, variance=0.9)
    with pytest.raises(verger.UsageError, match="threads"):
        verger.featurize([b""], threads=0)
    with pytest.raises(verger.ModelError, match="sha256"):
        verger.featurize([training_images("Kiwi", 1)[0]], model_sha256="0" * 64)
    nowhere = tmp_path / "no-such-folder"
    with pytest.raises(verger.VergerError, match=str(nowhere)):
        verger.run(nowhere, tmp_path / "out", progress=False)
    with pytest.raises(verger.RunError, match="no file under"):
        (tmp_path / "empty").mkdir()
        verger.run(tmp_path / "empty", tmp_path / "out2", progress=False)
    with pytest.raises(verger.ClassifyError, match="_SUCCESS"):
        verger.read(tmp_path)
    with pytest.raises(verger.FileError, match="missing.jpg"):
        verger.preprocess(tmp_path / "missing.jpg")
    with pytest.raises(verger.ImageError, match="the image's bytes"):
        verger.preprocess(b"\xff\xd8\xff garbage")


def test_an_existing_output_is_refused_with_the_command_lines_message(small_input, small_run):
    output, _ = small_run
    with pytest.raises(verger.RunError, match="already exists: --resume continues"):
        verger.run(small_input, output, k=10, progress=False)
    again = verger.run(small_input, output, k=10, resume=True, progress=False)
    assert again.status == "already_complete" and again.output


def test_preprocess_is_pillows_resize():
    for path in training_images("Pear", 3) + [ODD_IMAGES / "hopper.png", ODD_IMAGES / "hopper_gray.jpg"]:
        ours = verger.preprocess(path)
        assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
        with Image.open(path) as image:
            pillow = np.asarray(image.convert("RGB").resize((224, 224), Image.BICUBIC))
        assert np.array_equal(ours, pillow), path
        assert np.array_equal(verger.preprocess(path.read_bytes()), ours)


def test_featurize_releases_the_gil():
    files = training_images("Plum", 24)
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    counter = threading.Thread(target=count)
    counter.start()
    try:
        verger.featurize(files, threads=1)
        during = ticks
    finally:
        stop.set()
        counter.join()
    # With the GIL held for the whole call (~0.5 s), the counter would barely move.
    assert during > 100_000, during


def test_progress_reaches_a_callable(small_input, tmp_path):
    seen = []
    report = verger.run(small_input, tmp_path / "out", k=5, progress=lambda *state: seen.append(state))
    stages = [s[0] for s in seen]
    assert "list" in stages and "featurize" in stages
    last = [s for s in seen if s[0] == "featurize"][-1]
    assert last[1] == report.counts.featurized == 64 and last[3] is True
    assert all(done <= (total or done) for _, done, total, _ in seen)


def test_an_exception_in_the_progress_callable_stops_the_run(small_input, tmp_path):
    def fail(*state):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        verger.run(small_input, tmp_path / "out", k=5, progress=fail)
    # The claim was released: the same output resumes at once.
    report = verger.run(small_input, tmp_path / "out", k=5, resume=True, progress=False)
    assert report.status == "success" and report.counts.featurized == 64


def test_train_evaluate_identify(small_input, small_run, tmp_path):
    output, _ = small_run
    trained = verger.train(output, tmp_path / "classifier")
    assert trained.classes == 4 and trained.rows == 64
    scores = verger.evaluate(tmp_path / "classifier", output)
    assert scores.rows == 64 and 0.9 <= scores.top1 <= 1.0
    photo = sorted((small_input / "Kiwi").glob("*.jpg"))[0]
    answers = verger.identify(tmp_path / "classifier", [photo, tmp_path / "missing.jpg"], top=2, neighbours=1)
    assert len(answers) == 2
    assert answers[0]["identified"]["labels"][0]["label"] == "Kiwi", answers[0]
    assert answers[1]["error"] and "missing.jpg" in str(answers[1]), answers[1]


def test_quality_and_novel_scores(small_input, tmp_path):
    import json

    import pyarrow.parquet as pq

    run = tmp_path / "run"
    verger.run(small_input, run, k=10, threads=2, progress=False)
    summary = verger.quality(run, neighbours=3, folds=2, top=5)
    assert summary.rows == 64 and summary.neighbours == 3 and summary.folds == 2
    assert summary.exact_duplicates["copies"] == 0, summary.exact_duplicates
    assert len(summary.outliers) == 5
    images = pq.read_table(run / "quality" / "images.parquet")
    assert images.num_rows == 64 and json.loads(images.schema.metadata[b"verger.classes"]) == sorted(LABELS)
    assert json.load(open(run / "report.json"))["quality"]["rows"] == 64
    assert summary.search == {"method": "exact"}, summary.search
    indexed = verger.quality(run, neighbours=3, folds=2, top=5, search="approximate")
    assert indexed.search["method"] == "approximate" and indexed.search["sample"] == 64, indexed.search
    assert 0.9 <= indexed.search["recall_at_10"] <= 1.0, indexed.search
    with pytest.raises(verger.UsageError, match="search"):
        verger.quality(run, search="fast")
    with pytest.raises(verger.UsageError, match=r"\(0, 1\]"):
        verger.quality(run, threshold=1.5)
    with pytest.raises(verger.ClassifyError, match="not a finished verger run"):
        verger.quality(tmp_path)

    verger.train(run, tmp_path / "classifier", unknown_percentile=95)
    scores = verger.evaluate(tmp_path / "classifier", run, novel_only_vs=run)
    # Every image has itself in the run it is compared with: none is novel.
    assert scores.novel["rows"] == 0 and scores.novel["threshold"] == 0.93, scores.novel
    with pytest.raises(verger.UsageError, match="--threshold"):
        verger.evaluate(tmp_path / "classifier", run, novel_only_vs=run, threshold=0)
    photo = sorted((small_input / "Kiwi").glob("*.jpg"))[0]
    answer = verger.identify(tmp_path / "classifier", [photo])[0]["identified"]
    assert answer["novelty"] < 0.05 and answer["unknown"] is False, answer


def test_inference_leaves_nothing_in_the_user_s_home(tmp_path):
    """Microsoft's ONNX Runtime wheels record usage telemetry under ~/.cache/Microsoft unless told not to."""
    home = tmp_path / "home"
    home.mkdir()
    image = training_images("Plum", 1)[0]
    script = f"import verger; t = verger.featurize([{str(image)!r}]); assert t.column('error').null_count == 1"
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY")}
    env["HOME"] = str(home)
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    assert list(home.iterdir()) == [], f"featurizing wrote to the user's home: {list(home.rglob('*'))}"


def test_a_gpu_where_there_is_none_is_a_model_error_and_the_cpu_still_works(tmp_path):
    """``device="cuda"`` where ONNX Runtime's GPU build is not installed, then where it is (scripts/setup puts it
    in .venv-gpu) but the machine has no NVIDIA driver: a ModelError naming what is missing, and the process
    goes on featurizing on the CPU, with the CPU build; asked for a GPU again, it says the CPU build it loaded has
    no CUDA provider."""
    image = str(training_images("Plum", 1)[0])
    gpu_build = sorted((REPO / ".venv-gpu/lib/python3.11/site-packages/onnxruntime/capi").glob("libonnxruntime.so*"))
    assert gpu_build, "no GPU build of ONNX Runtime in .venv-gpu: run scripts/setup"
    for library, missing in ((tmp_path / "nowhere" / "libonnxruntime.so", "GPU build"),
                             (gpu_build[0], "no NVIDIA driver")):
        script = f"""
import verger
try:
    verger.featurize([{image!r}], device="cuda")
except verger.ModelError as e:
    assert {missing!r} in str(e), str(e)
else:
    raise AssertionError("no error")
t = verger.featurize([{image!r}])
assert t.column("error").null_count == 1, t
assert "1.32" in verger._verger.runtime_library(), verger._verger.runtime_library()
try:
    verger.featurize([{image!r}], device="cuda:1")
except verger.ModelError as e:
    assert "no CUDA execution provider" in str(e) and "new process" in str(e), str(e)
else:
    raise AssertionError("no error once the CPU build is loaded")
try:
    verger.featurize([{image!r}], device="tpu")
except verger.UsageError as e:
    assert "expected cpu, cuda or cuda:N" in str(e), str(e)
else:
    raise AssertionError("no usage error")
"""
        env = dict(os.environ, VERGER_ORT_GPU_LIB=str(library))
        subprocess.run([sys.executable, "-c", script], env=env, check=True)


def test_bf16_features_stay_close_to_fp32_or_the_cpu_is_refused():
    """``precision="bf16"`` (OpenVINO, MobileNetV2's first block in fp32): close to fp32's features without being
    them, where the CPU supports bf16 (as /proc/cpuinfo says); a ModelError naming what is missing elsewhere."""
    images = [str(p) for p in training_images("Plum", 4)]
    with pytest.raises(verger.UsageError, match="expected fp32 or bf16"):
        verger.featurize(images, precision="int8")
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    if not {"avx512_bf16", "amx_bf16"} & set(flags):
        with pytest.raises(verger.ModelError, match="AVX512-BF16 or AMX"):
            verger.featurize(images, precision="bf16")
        return
    fp32, bf16 = verger.featurize(images, threads=1), verger.featurize(images, precision="bf16", threads=1)
    assert bf16.column("error").null_count == len(images)
    a, b = features(fp32), features(bf16)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.mean() >= 0.995 and cos.min() >= 0.99, cos
    assert np.abs(a - b).max() > 1e-3, "bf16 computed fp32's features"
