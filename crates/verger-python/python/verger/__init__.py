"""verger in Python: featurize images with MobileNetV2, reduce them with PCA, and train a classifier, from a
notebook or inside a Spark job.

Every function calls verger's Rust library (the same code as the ``verger`` command line: same options, same
defaults, same messages), with the GIL released; tables come back as :mod:`pyarrow` objects without copies.

>>> import verger
>>> report = verger.run("Training", "out/training", overwrite=True)   # doctest: +SKIP
>>> df = verger.read("out/training").to_pandas()                       # doctest: +SKIP

Errors are :class:`verger.VergerError` subclasses (:mod:`verger.errors`). :mod:`verger.spark` featurizes a
column of a PySpark DataFrame on the executors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence, Union

__all__ = [
    "run",
    "read",
    "read_pca",
    "featurize",
    "preprocess",
    "train",
    "evaluate",
    "identify",
    "quality",
    "Report",
    "PcaModel",
    "__version__",
]


def _package_library(package: str, folder: str, prefix: str) -> str | None:
    """The shared library ``prefix*`` in ``folder`` of the installed ``package``, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        found = sorted((Path(root) / folder).glob(prefix + "*"))
        if found:
            return str(found[0])
    return None


# The library looks at VERGER_ORT_LIB first; point it at the onnxruntime wheel this package depends on,
# unless the user chose a runtime. Likewise OpenVINO's, for precision="bf16" (the `bf16` extra), which is
# loaded only when bf16 is asked for.
for _variable, _others, _package, _folder, _prefix in (
    ("VERGER_ORT_LIB", ("ORT_DYLIB_PATH",), "onnxruntime", "capi", "libonnxruntime.so"),
    ("VERGER_OPENVINO_LIB", (), "openvino", "libs", "libopenvino_c.so"),
):
    if not os.environ.get(_variable) and not any(os.environ.get(o) for o in _others):
        _library = _package_library(_package, _folder, _prefix)
        if _library:
            os.environ[_variable] = _library

from . import _verger, errors  # noqa: E402
from .errors import *  # noqa: E402,F401,F403 (every exception, also as verger.VergerError etc.)

__all__ += errors.__all__

__version__: str = _verger.__version__

PathLike = Union[str, "os.PathLike[str]"]
ImageLike = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]


def _text(value: Any) -> str:
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _options(**options: Any) -> list[str]:
    """Keyword arguments as the command line's options: ``max_errors=10`` is ``--max-errors 10``, ``True``
    a flag, a list a repeated option; ``None`` and ``False`` are left out (the default)."""
    argv: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, _text(item)]
        else:
            argv += [flag, _text(value)]
    return argv


def _store(
    region: str | None = None,
    endpoint: str | None = None,
    allow_http: bool = False,
    max_retries: int | None = None,
    timeout: int | None = None,
) -> dict[str, Any]:
    return dict(region=region, endpoint=endpoint, allow_http=allow_http, max_retries=max_retries, timeout=timeout)


class _Attributes(dict):
    """A dict whose keys also read as attributes (nested dicts too)."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return _Attributes(value) if isinstance(value, dict) and not isinstance(value, _Attributes) else value


class Report(_Attributes):
    """A run's report (``OUTPUT/report.json``) as a dict whose keys also read as attributes
    (``report.counts.featurized``), plus ``status``: ``"success"`` (every image featurized), ``"partial"``
    (some images failed: ``OUTPUT/errors/`` says why) or ``"already_complete"`` (``resume=True`` found
    nothing to do; then only ``output`` is set)."""


def _interactive() -> bool:
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


class _ProgressBar:
    """One bar per stage, updated in place: tqdm's notebook widget or terminal bar when tqdm is installed,
    plain text updates otherwise."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar: Any = None
        try:
            from tqdm.auto import tqdm

            self.tqdm: Any = tqdm
        except ImportError:
            self.tqdm = None

    def __call__(self, stage: str, done: int, total: int | None, ended: bool) -> None:
        if stage != self.stage:
            self.close()
            if ended and not done and not total:
                return  # a stage with nothing to count (a check) draws no bar
            self.stage = stage
            if self.tqdm is not None:
                self.bar = self.tqdm(total=total, desc=stage, leave=True)
        if self.bar is not None:
            self.bar.n = done
            self.bar.refresh()
        else:
            of = f"/{total}" if total is not None else ""
            print(f"\r{stage}: {done}{of}", end="\n" if ended else "", file=sys.stderr, flush=True)
        if ended:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.stage = None


def run(
    input: PathLike,
    output: PathLike,
    *,
    k: int | None = None,
    variance: float | None = None,
    pca_model: PathLike | None = None,
    center: bool = False,
    cache: PathLike | None = None,
    verify_cache: bool = False,
    globs: Sequence[str] | None = None,
    threads: int | None = None,
    partition_rows: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    max_errors: int | float | str | None = None,
    pseudonymize_paths: PathLike | None = None,
    cluster: str | None = None,
    cluster_jobs: int | None = None,
    security: PathLike | None = None,
    model: PathLike | None = None,
    model_sha256: str | None = None,
    batch_size: int | None = None,
    max_pixels: int | None = None,
    device: str | None = None,
    precision: Literal["fp32", "bf16"] | None = None,
    region: str | None = None,
    endpoint: str | None = None,
    allow_http: bool = False,
    allowed_regions: Sequence[str] | None = None,
    sse: Literal["AES256", "aws:kms"] | None = None,
    sse_kms_key_id: str | None = None,
    max_retries: int | None = None,
    timeout: int | None = None,
    instance_type: str | None = None,
    price_region: str | None = None,
    nodes: int | None = None,
    prices: PathLike | None = None,
    progress: bool | Callable[[str, int, int | None, bool], None] | None = None,
) -> Report:
    """Runs the whole job, as ``verger run`` does: lists the images under ``input`` (a folder or
    ``s3://bucket/prefix``; each image's label is its parent folder's name), featurizes them, fits PCA
    (``k`` components, default 50; or the fewest reaching ``variance``; or projects with ``pca_model``) and
    writes ``output`` (``result/``, ``errors/``, ``pca/``, ``report.json``, ``report.html``, ``_SUCCESS``).

    Every option is the command line's (``verger run --help``): ``max_errors=10`` is ``--max-errors 10``.
    ``progress``: ``None`` draws a bar when interactive (a notebook or a terminal), ``True`` always,
    ``False`` never, or a callable ``(stage, done, total, ended)``. ``cache`` (a folder or ``s3://``) keeps
    features across runs, so a daily run featurizes only new or changed images (``report["cache"]`` says how
    many).

    Ctrl-C (KeyboardInterrupt) stops the run cleanly: its output is released and what it featurized is kept,
    so the same call with ``resume=True`` continues it. Raises a :class:`VergerError` subclass when the run
    fails (nothing committed); images that fail are not errors of the run (``report.status == "partial"``).
    """
    argv = ["run", "--input", _text(input), "--output", _text(output)]
    argv += _options(
        k=k,
        variance=variance,
        pca_model=pca_model,
        center=center,
        cache=cache,
        verify_cache=verify_cache,
        glob=list(globs) if globs is not None else None,
        threads=threads,
        partition_rows=partition_rows,
        overwrite=overwrite,
        resume=resume,
        max_errors=max_errors,
        pseudonymize_paths=pseudonymize_paths,
        cluster=cluster,
        cluster_jobs=cluster_jobs,
        security=security,
        model=model,
        model_sha256=model_sha256,
        batch_size=batch_size,
        max_pixels=max_pixels,
        device=device,
        precision=precision,
        allowed_regions=list(allowed_regions) if allowed_regions is not None else None,
        sse=sse,
        sse_kms_key_id=sse_kms_key_id,
        instance_type=instance_type,
        price_region=price_region,
        nodes=nodes,
        prices=prices,
        **_store(region, endpoint, allow_http, max_retries, timeout),
    )
    if callable(progress):
        draw: Any = progress
    elif progress or (progress is None and _interactive()):
        draw = _ProgressBar()
    else:
        draw = None
    try:
        status, body = _verger.run(argv, draw)
    finally:
        if isinstance(draw, _ProgressBar):
            draw.close()
    if status == "already_complete":
        return Report(status=status, output=body)
    report = Report(json.loads(body))
    report["status"] = status
    return report


def read(
    output: PathLike,
    *,
    region: str | None = None,
    endpoint: str | None = None,
    allow_http: bool = False,
    max_retries: int | None = None,
    timeout: int | None = None,
) -> "pyarrow.Table":  # noqa: F821
    """The result rows of the finished run ``output`` (a folder or ``s3://``) as a :class:`pyarrow.Table`
    sorted by path: ``path``, ``label``, ``features`` (1280 float32), ``pca_features`` (k float64).
    ``.to_pandas()`` gives a DataFrame."""
    argv = _options(**_store(region, endpoint, allow_http, max_retries, timeout))
    return _verger.read(_text(output), argv)


@dataclass(frozen=True)
class PcaModel:
    """A run's PCA model (``OUTPUT/pca/model.json``), with Spark ML's conventions: ``components`` are the
    ``k`` principal axes (rows, largest variance first) and projecting does not subtract the mean unless
    ``center``."""

    k: int
    dim: int
    count: int
    center: bool
    mean: "numpy.ndarray"  # noqa: F821
    components: "numpy.ndarray"  # noqa: F821
    eigenvalues: "numpy.ndarray"  # noqa: F821
    explained_variance_ratio: "numpy.ndarray"  # noqa: F821
    model_sha256: str | None

    @property
    def explained_variance(self) -> float:
        """The share of the variance the ``k`` components keep."""
        return float(self.explained_variance_ratio[: self.k].sum())

    def transform(self, features: Any) -> "numpy.ndarray":  # noqa: F821
        """Projects rows of 1280-d features (anything :func:`numpy.asarray` takes) as a run does."""
        import numpy as np

        x = np.asarray(features, dtype=np.float64)
        if self.center:
            x = x - self.mean
        return x @ self.components.T


def read_pca(
    output: PathLike,
    *,
    region: str | None = None,
    endpoint: str | None = None,
    allow_http: bool = False,
    max_retries: int | None = None,
    timeout: int | None = None,
) -> PcaModel:
    """The PCA model of the finished run ``output``."""
    import numpy as np

    argv = _options(**_store(region, endpoint, allow_http, max_retries, timeout))
    saved = json.loads(_verger.read_pca(_text(output), argv))
    return PcaModel(
        k=saved["k"],
        dim=saved["dim"],
        count=saved["count"],
        center=saved["center"],
        mean=np.asarray(saved["mean"], dtype=np.float64),
        components=np.asarray(saved["components"], dtype=np.float64).reshape(saved["k"], saved["dim"]),
        eigenvalues=np.asarray(saved["eigenvalues"], dtype=np.float64),
        explained_variance_ratio=np.asarray(saved["explained_variance_ratio"], dtype=np.float64),
        model_sha256=saved.get("model_sha256"),
    )


def _image(item: Any, i: int) -> str | bytes | None:
    if item is None or isinstance(item, (str, bytes)):
        return item
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, os.PathLike):
        return os.fspath(item)
    raise TypeError(f"images[{i}] is {type(item).__name__}: expected a path (str or os.PathLike) or the image's bytes")


def featurize(
    images: Iterable[ImageLike | None],
    *,
    model: PathLike | None = None,
    model_sha256: str | None = None,
    batch_size: int | None = None,
    max_pixels: int | None = None,
    device: str | None = None,
    precision: Literal["fp32", "bf16"] | None = None,
    threads: int | None = None,
    region: str | None = None,
    endpoint: str | None = None,
    allow_http: bool = False,
    max_retries: int | None = None,
    timeout: int | None = None,
) -> "pyarrow.Table":  # noqa: F821
    """The 1280-d MobileNetV2 features of ``images``, a row each in input order, as a :class:`pyarrow.Table`
    with columns ``path`` (null for bytes), ``features`` (list of 1280 float32), ``error_stage`` and ``error``.

    Each image is a path, an ``s3://`` URI, or the encoded image's bytes (already in memory). Features are
    bit-identical to a run's. An image that cannot be read or decoded (or ``None``) gives a row with null
    ``features`` and the reason in ``error``, never an exception for the whole batch. ``threads``: worker
    threads (default: all cores). The model is loaded and verified once per process. ``device``: ``"cpu"``
    (default) or ``"cuda"``/``"cuda:N"`` (ONNX Runtime's GPU build, from ``scripts/setup-gpu``; a process runs
    one ONNX Runtime, the one its first call loads). ``precision``: ``"fp32"`` (default, the reference) or
    ``"bf16"`` (CPUs with AVX512-BF16 or AMX, through OpenVINO: about 1.9x faster, features within cosine
    0.995 of fp32's; refused with :class:`VergerError` on other CPUs).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    items = [_image(item, i) for i, item in enumerate(images)]
    present = [i for i, item in enumerate(items) if item is not None]
    argv = _options(
        model=model,
        model_sha256=model_sha256,
        batch_size=batch_size,
        max_pixels=max_pixels,
        device=device,
        precision=precision,
        **_store(region, endpoint, allow_http, max_retries, timeout),
    )
    batch = _verger.featurize([items[i] for i in present], argv, threads)
    table = pa.Table.from_batches([batch])
    if len(present) == len(items):
        return table
    # Rows for the missing images: null everywhere, then the reason.
    where = [None] * len(items)
    for row, i in enumerate(present):
        where[i] = row
    table = table.take(pa.array(where, type=pa.int64()))
    missing = pc.is_null(pa.array(where, type=pa.int64()))
    for name, text in (("error_stage", "read"), ("error", "no image (None)")):
        column = pc.if_else(missing, pa.scalar(text), table.column(name))
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def preprocess(image: ImageLike, *, max_pixels: int | None = None) -> "numpy.ndarray":  # noqa: F821
    """The exact pixels the model sees for ``image`` (a path or the image's bytes): a ``uint8`` array of shape
    ``(224, 224, 3)``, RGB, bit-identical to Pillow's ``Image.open(..).convert("RGB").resize((224, 224))``.
    Raises :class:`FileError` for a file that cannot be read, :class:`ImageError` for one that cannot be
    decoded."""
    import numpy as np

    item = _image(image, 0)
    if item is None:
        raise TypeError("preprocess needs an image, not None")
    pixels = _verger.preprocess(item, max_pixels)
    return np.frombuffer(pixels, dtype=np.uint8).reshape(224, 224, 3)


def train(
    run: PathLike,
    out: PathLike,
    *,
    on: Literal["pca-features", "features"] = "pca-features",
    l2: float | None = None,
    unknown_percentile: float | None = None,
    search: str = "auto",
    overwrite: bool = False,
    region: str | None = None,
    endpoint: str | None = None,
    allow_http: bool = False,
    max_retries: int | None = None,
    timeout: int | None = None,
) -> dict[str, Any]:
    """Trains a classifier (softmax regression, L2) on the finished run ``run`` and writes its folder
    ``out``, as ``verger train`` does; returns how training went (``training.json``). ``identify`` calls a
    photo unknown above the ``unknown_percentile`` (default 99) of the training images' distances to their
    5th nearest other. ``search``: ``"auto"`` (exact up to 100,000 training images; beyond, an HNSW index saved
    with the classifier, its recall@10 in the result's ``search``), ``"exact"`` or ``"approximate"``."""
    argv = ["train", _text(run), "--out", _text(out)]
    argv += _options(
        on=on,
        l2=l2,
        unknown_percentile=unknown_percentile,
        search=search,
        overwrite=overwrite,
        **_store(region, endpoint, allow_http, max_retries, timeout),
    )
    return _Attributes(json.loads(_verger.classify(argv)))


def evaluate(
    classifier: PathLike,
    run: PathLike,
    *,
    novel_only_vs: PathLike | None = None,
    threshold: float | None = None,
    region: str | None = None,
    endpoint: str | None = None,
    allow_http: bool = False,
    max_retries: int | None = None,
    timeout: int | None = None,
) -> dict[str, Any]:
    """Scores ``classifier`` on the finished, labelled run ``run`` (made with the classifier's PCA model), as
    ``verger evaluate`` does: ``top1``, ``top5``, ``macro_f1``, ``per_class``, ``most_confused``... With
    ``novel_only_vs`` (the training run), ``novel`` holds the same scores on the images without a near twin
    there (cosine similarity below ``threshold``, default 0.93)."""
    argv = ["evaluate", "--model", _text(classifier), _text(run)]
    argv += _options(
        novel_only_vs=None if novel_only_vs is None else _text(novel_only_vs),
        threshold=threshold,
        **_store(region, endpoint, allow_http, max_retries, timeout),
    )
    return _Attributes(json.loads(_verger.classify(argv)))


def quality(
    run: PathLike,
    *,
    against: Sequence[PathLike] = (),
    threshold: float | None = None,
    neighbours: int | None = None,
    folds: int | None = None,
    top: int | None = None,
    thumbnails: bool = False,
    search: str = "auto",
    region: str | None = None,
    endpoint: str | None = None,
    allow_http: bool = False,
    max_retries: int | None = None,
    timeout: int | None = None,
) -> dict[str, Any]:
    """Checks the finished run ``run``'s images as a dataset, as ``verger quality`` does: exact and near
    duplicates, leakage into the runs ``against`` (e.g. the Training run for the Test run), outliers and likely
    wrong labels (``suspects``). Writes ``run/quality/`` (``images.parquet``: a row per image) and a section of
    the run's report; returns the summary. ``thumbnails=True`` embeds small JPEGs of the listed images in
    ``report.html`` (off by default: photos may be personal data). ``search``: ``"auto"`` (exact up to
    100,000 x 100,000 image pairs, an HNSW index beyond, its recall@10 in the summary's ``search``),
    ``"exact"`` or ``"approximate"``."""
    argv = ["quality", _text(run)]
    argv += _options(
        against=[_text(a) for a in against],
        threshold=threshold,
        neighbours=neighbours,
        folds=folds,
        top=top,
        thumbnails=thumbnails,
        search=search,
        **_store(region, endpoint, allow_http, max_retries, timeout),
    )
    return _Attributes(json.loads(_verger.classify(argv)))


def identify(
    classifier: PathLike,
    photos: Sequence[PathLike],
    *,
    top: int = 5,
    neighbours: int = 5,
    featurizer: PathLike | None = None,
    max_pixels: int | None = None,
    region: str | None = None,
    endpoint: str | None = None,
    allow_http: bool = False,
    max_retries: int | None = None,
    timeout: int | None = None,
) -> list[dict[str, Any]]:
    """The ``top`` most probable labels and ``neighbours`` nearest training images of each photo (paths or
    ``s3://`` URIs), as ``verger identify --json`` answers; a photo that cannot be read has ``error``."""
    argv = ["identify", "--model", _text(classifier)]
    argv += _options(
        top=top,
        neighbours=neighbours,
        featurizer=featurizer,
        max_pixels=max_pixels,
        **_store(region, endpoint, allow_http, max_retries, timeout),
    )
    argv += ["--", *(_text(p) for p in photos)]
    return [_Attributes(answer) for answer in json.loads(_verger.classify(argv))]
