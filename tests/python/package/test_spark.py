"""verger inside a PySpark job (pyspark from PyPI, local[2], Java 17): 200 Fruits-360 images featurized on
Spark's Python workers give features bit-identical to `verger run`, and Spark ML's PCA on them matches
verger's PCA up to sign."""

import os
import sys

import numpy as np
import pytest

import verger
from conftest import copy_images

K = 10
PER_LABEL = {"Apple 10": 50, "Avocado": 50, "Lemon": 50, "Peach": 50}


@pytest.fixture(scope="module")
def spark():
    # The executors' Python workers run this interpreter, where verger is installed.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("verger-test")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spark") / "input"
    files = copy_images(folder, PER_LABEL)
    assert len(files) == 200
    run = tmp_path_factory.mktemp("spark-run") / "out"
    verger.run(folder, run, k=K, progress=False)
    return folder, files, run


def run_features(run) -> dict[str, np.ndarray]:
    table = verger.read(run)
    return {
        p.removeprefix("file://"): np.asarray(f, dtype=np.float32)
        for p, f in zip(table.column("path").to_pylist(), table.column("features").to_pylist())
    }


def test_spark_paths_and_binary_files_give_the_runs_features(spark, images):
    from verger.spark import featurize

    folder, files, run = images
    expected = run_features(run)

    paths = spark.createDataFrame([(str(f), f.parent.name) for f in files], ["path", "label"]).repartition(4)
    by_path = featurize(paths, path_col="path").collect()
    assert len(by_path) == 200
    for row in by_path:
        assert row.error is None, row.error
        assert row.label == os.path.basename(os.path.dirname(row.path))
        assert np.array_equal(np.asarray(row.features, dtype=np.float32), expected[row.path]), row.path

    # The original notebook's way in: Spark's binaryFile source, images as bytes.
    binary = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", "*.jpg")
        .option("recursiveFileLookup", "true")
        .load(str(folder))
    )
    by_bytes = featurize(binary, bytes_col="content").select("path", "features", "error").collect()
    assert len(by_bytes) == 200
    for row in by_bytes:
        assert row.error is None, row.error
        path = row.path.removeprefix("file:")
        assert np.array_equal(np.asarray(row.features, dtype=np.float32), expected[path]), path


def test_a_bad_image_in_a_spark_batch_is_a_null_row(spark, images):
    from verger.spark import featurize

    _, files, _ = images
    rows = [(files[0].read_bytes(),), (b"corrupt",), (None,), (files[1].read_bytes(),)]
    df = spark.createDataFrame(rows, "content binary").coalesce(1)
    out = featurize(df, bytes_col="content").collect()
    assert [r.features is not None for r in out] == [True, False, False, True]
    assert out[1].error_stage == "decode" and out[1].error
    assert out[2].error_stage == "read"


def test_spark_ml_pca_matches_vergers_pca(spark, images):
    from pyspark.ml.feature import PCA

    from verger.spark import featurize, to_vectors

    _, files, run = images
    df = spark.createDataFrame([(str(f),) for f in files], ["path"])
    vectors = to_vectors(featurize(df, path_col="path"))
    spark_pca = PCA(k=K, inputCol="features", outputCol="pca").fit(vectors)
    theirs = spark_pca.pc.toArray().T  # k x 1280
    ours = verger.read_pca(run).components
    signs = np.sign(np.sum(theirs * ours, axis=1))
    aligned = ours * signs[:, None]
    relative = np.linalg.norm(theirs - aligned) / np.linalg.norm(theirs)
    assert relative <= 1e-4, relative
    np.testing.assert_allclose(
        spark_pca.explainedVariance.toArray(), verger.read_pca(run).explained_variance_ratio[:K], rtol=1e-6
    )
