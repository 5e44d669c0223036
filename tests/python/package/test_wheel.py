"""The wheel is all a user installs: `pip install verger-*.whl` in a new, empty virtual environment brings
onnxruntime, pyarrow and numpy from PyPI, and verger there loads that onnxruntime's library and featurizes
exactly as the checkout's build does."""

import glob
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np

import verger
from conftest import MODEL, REPO, training_images

SCRIPT = """
import json, sys, verger
table = verger.featurize(sys.argv[1:])
print(json.dumps({
    "runtime": verger._verger.runtime_library(),
    "features": table.column("features").to_pylist(),
    "module": verger.__file__,
}))
"""


def wheel() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    found = sorted(glob.glob(f"{target}/wheels/verger-*.whl"), key=os.path.getmtime)
    assert found, f"no wheel in {target}/wheels: scripts/setup builds it"
    return Path(found[-1])


def test_the_wheel_installs_and_runs_in_a_fresh_virtual_environment(tmp_path):
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # The versions pinned for the checkout, so that both sides run the same ONNX Runtime.
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel()),
         "-c", str(REPO / "requirements.txt"), "-c", str(REPO / "requirements-python.txt")],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    images = [str(p) for p in training_images("Quince", 3)]
    clean = {k: v for k, v in os.environ.items() if k not in ("VERGER_ORT_LIB", "ORT_DYLIB_PATH", "VIRTUAL_ENV")}
    clean["VERGER_MODEL"] = str(MODEL)
    done = subprocess.run(
        [str(python), "-c", SCRIPT, *images], capture_output=True, text=True, env=clean, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert answer["module"].startswith(str(env_dir)), answer["module"]
    assert answer["runtime"].startswith(str(env_dir)), f"loaded {answer['runtime']}, not the fresh onnxruntime"
    here = np.array(verger.featurize(images).column("features").to_pylist())
    assert np.array_equal(np.array(answer["features"]), here)
