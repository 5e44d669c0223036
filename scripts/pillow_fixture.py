"""Pillow parity fixture for verger's image-loading stage.

The original Spark/EMR pipeline turned each image into pixels with Pillow:

    img = Image.open(path).resize((224, 224)); img = img.convert("RGB") if needed
    np.asarray(img, dtype=np.uint8).tobytes()      # 224*224*3 bytes, HWC RGB

This script runs exactly that step with Pillow 13.0.0 over a folder and writes one
TSV line per file: relative path, ok/error, Pillow's mode and size before resize,
and the SHA-256 of the RGB bytes (or the exception). verger's Rust decoder is tested
against these lines, so the fixture must come from this exact Pillow version.

Usage: python scripts/pillow_fixture.py ROOT OUT.tsv
"""

import hashlib
import os
import sys
from collections import Counter

import numpy as np
import PIL
from PIL import Image

assert PIL.__version__ == "13.0.0", f"need Pillow 13.0.0, found {PIL.__version__}"

EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
HEADER = "# pillow 13.0.0; columns: path status mode width height sha256|error"


def clean(text):
    return str(text).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def candidate_files(root):
    """Image files under root, sorted by relative path."""
    found = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and os.path.splitext(name)[1].lower() in EXTENSIONS:
                found.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(found)


def fixture_row(root, rel):
    """(status, mode, width, height, sha256|error); mode and size are Pillow's before resize."""
    path = os.path.join(root, rel)
    mode = width = height = "-"
    try:
        # Pillow's own defaults apply: DecompressionBombWarning stays a warning,
        # DecompressionBombError (like anything else that raises) is an error.
        with Image.open(path) as original:
            mode, (width, height) = original.mode, original.size
            img = original.resize((224, 224))  # forces the decode
        if img.mode != "RGB":
            img = img.convert("RGB")
        data = np.asarray(img, dtype=np.uint8).tobytes()
        assert len(data) == 224 * 224 * 3
        return "ok", mode, width, height, hashlib.sha256(data).hexdigest()
    except Exception as exc:  # every failure is a fixture row; keep messages machine-independent
        return "error", mode, width, height, f"{type(exc).__name__}: {clean(exc).replace(path, rel)}"


def main(root, out_path):
    counts = Counter()
    with open(out_path, "w", encoding="utf-8", newline="\n") as out:
        out.write(HEADER + "\n")
        for rel in candidate_files(root):
            row = fixture_row(root, rel)
            out.write("\t".join(map(str, (rel,) + row)) + "\n")
            counts[(row[0], row[1])] += 1
    for (status, mode), n in sorted(counts.items()):
        print(f"{status}\t{mode}\t{n}")
    print(f"total\t{sum(counts.values())}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
