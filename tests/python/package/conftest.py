"""Fixtures of the Python package's tests: the shared Fruits-360 sample and small inputs copied from it.

The tests import the installed wheel (scripts/setup builds it and installs it into .venv); the shared data
sits beside the checkout (override with VERGER_SHARED). Missing data fails the tests, never skips them.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("VERGER_SHARED", REPO.parent / "shared"))
FRUITS = SHARED / "datasets" / "fruits360"
MODEL = SHARED / "models" / "mobilenet_v2" / "mobilenet_v2_imagenet.onnx"
ODD_IMAGES = SHARED / "datasets" / "pillow-test-images"


def training_images(label: str, n: int) -> list[Path]:
    files = sorted((FRUITS / "Training" / label).glob("*.jpg"))
    assert len(files) >= n, f"{label}: {len(files)} images, {n} wanted"
    return files[:n]


def copy_images(to: Path, per_label: dict[str, int]) -> list[Path]:
    copied = []
    for label, n in per_label.items():
        (to / label).mkdir(parents=True, exist_ok=True)
        for f in training_images(label, n):
            shutil.copy(f, to / label / f.name)
            copied.append(to / label / f.name)
    return sorted(copied)


LABELS = ["Apple 10", "Avocado", "Kiwi", "Pear"]


@pytest.fixture(scope="session", autouse=True)
def shared_data():
    assert MODEL.is_file(), f"the shared model is missing at {MODEL} (set VERGER_SHARED)"
    assert FRUITS.is_dir(), f"the shared Fruits-360 sample is missing at {FRUITS}"
    os.environ.setdefault("VERGER_MODEL", str(MODEL))


@pytest.fixture(scope="session")
def small_input(tmp_path_factory) -> Path:
    """16 images of each of 4 labels."""
    folder = tmp_path_factory.mktemp("small") / "input"
    copy_images(folder, {label: 16 for label in LABELS})
    return folder


@pytest.fixture(scope="session")
def small_run(small_input, tmp_path_factory):
    """The Python package's run on small_input: (output folder, report)."""
    import verger

    output = tmp_path_factory.mktemp("small-run") / "out"
    report = verger.run(small_input, output, k=10, threads=2, progress=False)
    return output, report


def verger_cli(*args: str) -> subprocess.CompletedProcess:
    """The verger command line of this checkout (scripts/verger, the workspace's release build)."""
    return subprocess.run([str(REPO / "scripts" / "verger"), *args], capture_output=True, text=True)


def python() -> str:
    return sys.executable
