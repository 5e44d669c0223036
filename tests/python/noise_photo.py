"""Writes N photos of uniform random noise (100x100 RGB JPEG, like Fruits-360's), seeded, into DIR.

usage: noise_photo.py DIR N
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

out, n = Path(sys.argv[1]), int(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(7)
for i in range(n):
    pixels = rng.integers(0, 256, size=(100, 100, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(out / f"noise_{i}.jpg", quality=95)
print(f"{n} noise photos in {out}")
