"""verger inside an existing PySpark job: the drop-in for the original notebook's TensorFlow pandas UDF.

>>> from verger.spark import featurize                                 # doctest: +SKIP
>>> images = spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg") \\
...     .option("recursiveFileLookup", "true").load("s3://bucket/Training")  # doctest: +SKIP
>>> features = featurize(images, bytes_col="content")                  # doctest: +SKIP

:func:`featurize` runs through :meth:`pyspark.sql.DataFrame.mapInArrow`: Arrow batches go from the JVM to each
Python worker and back without pickling rows; each worker loads and verifies the model once (Spark reuses
its Python workers) and featurizes with verger's Rust library, so the features are bit-identical to
``verger run``'s. Spark ML's :class:`pyspark.ml.feature.PCA` can reduce them as before.
"""

from __future__ import annotations

from typing import Any, Iterator

__all__ = ["featurize", "to_vectors"]


def featurize(
    df: "pyspark.sql.DataFrame",  # noqa: F821
    path_col: str | None = "path",
    *,
    bytes_col: str | None = None,
    features_col: str = "features",
    model: str | None = None,
    model_sha256: str | None = None,
    batch_size: int | None = None,
    max_pixels: int | None = None,
    threads: int = 1,
    region: str | None = None,
    endpoint: str | None = None,
    allow_http: bool = False,
) -> "pyspark.sql.DataFrame":  # noqa: F821
    """``df`` with three more columns: ``features_col`` (``array<float>``, 1280 values; null when the image
    failed), ``error_stage`` and ``error``.

    The images are read from ``bytes_col`` (binary: encoded images, as Spark's ``binaryFile`` source gives
    them in ``content``) when given, else from ``path_col`` (paths or ``s3://`` URIs that every executor can
    read). ``threads`` per Python worker: 1 suits Spark, which runs a worker per core. The model must be at
    ``model`` (or ``$VERGER_MODEL``) on every executor. The other options are :func:`verger.featurize`'s.
    """
    from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

    source = bytes_col or path_col
    if source is None:
        raise ValueError("featurize needs path_col or bytes_col")
    if source not in df.columns:
        raise ValueError(f"featurize: no column {source!r} in {df.columns}")
    for taken in (features_col, "error_stage", "error"):
        if taken in df.columns:
            raise ValueError(f"featurize: the DataFrame already has a column {taken!r}")
    schema = StructType(
        list(df.schema.fields)
        + [
            StructField(features_col, ArrayType(FloatType(), True), True),
            StructField("error_stage", StringType(), True),
            StructField("error", StringType(), True),
        ]
    )
    options = dict(
        model=model,
        model_sha256=model_sha256,
        batch_size=batch_size,
        max_pixels=max_pixels,
        threads=threads,
        region=region,
        endpoint=endpoint,
        allow_http=allow_http,
    )

    def featurize_batches(batches: Iterator[Any]) -> Iterator[Any]:
        # Runs on the executors' Python workers.
        import pyarrow as pa

        import verger

        for batch in batches:
            images = batch.column(batch.schema.get_field_index(source)).to_pylist()
            found = verger.featurize(images, **options)
            columns = list(batch.columns) + [
                found.column("features").combine_chunks(),
                found.column("error_stage").combine_chunks(),
                found.column("error").combine_chunks(),
            ]
            names = list(batch.schema.names) + [features_col, "error_stage", "error"]
            yield pa.RecordBatch.from_arrays(columns, names=names)

    return df.mapInArrow(featurize_batches, schema)


def to_vectors(df: "pyspark.sql.DataFrame", col: str = "features", out: str | None = None):  # noqa: F821
    """``df`` with ``col`` (an array of floats) as a Spark ML vector column ``out`` (default: ``col``), for
    :class:`pyspark.ml.feature.PCA` and the other estimators; rows whose ``col`` is null are dropped."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    return df.where(F.col(col).isNotNull()).withColumn(out or col, array_to_vector(F.col(col)))
