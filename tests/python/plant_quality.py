"""Plants known problems in a copy of the shared Training split, for `verger quality` to find:
20 images moved into another label's folder (wrong labels), 20 near duplicates (an image re-encoded as JPEG
quality 90 under another name), 10 exact copies under other names and 10 non-fruit photos (Pillow's test
images, as 100x100 JPEGs like Fruits-360's) in fruit folders. Writes what it planted to PLANTED_JSON.

usage: plant_quality.py TRAINING_DIR PILLOW_TEST_IMAGES_DIR OUT_DIR PLANTED_JSON
"""
import io
import json
import random
import shutil
import sys
from pathlib import Path

from PIL import Image

training, pillow, out, planted_json = map(Path, sys.argv[1:5])
NON_FRUIT = [
    "flower.jpg", "hopper.jpg", "pil_sample_rgb.jpg", "exif_typeerror.jpg", "sugarshack_bad_mpo_header.jpg",
    "junk_jpeg_header.jpg", "icc_profile_big.jpg", "exif-72dpi-int.jpg", "linear_gradient.png", "pil123rgba.png",
]

shutil.copytree(training, out)
images = sorted(p for p in out.rglob("*.jpg"))
labels = sorted(p.name for p in out.iterdir() if p.is_dir())
rng = random.Random(44)
chosen = rng.sample(images, 50)
wrong, reencoded, exact = chosen[:20], chosen[20:40], chosen[40:50]
planted = {"wrong": [], "reencoded": [], "exact": [], "non_fruit": []}
for i, path in enumerate(wrong):
    given = rng.choice([l for l in labels if l != path.parent.name])
    to = out / given / f"planted_wrong_{i}.jpg"
    path.rename(to)
    planted["wrong"].append({"path": str(to), "true": path.parent.name, "given": given})
for i, path in enumerate(reencoded):
    to = path.parent / f"planted_reencoded_{i}.jpg"
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, "JPEG", quality=90)
    to.write_bytes(buffer.getvalue())
    planted["reencoded"].append({"original": str(path), "copy": str(to)})
for i, path in enumerate(exact):
    to = path.parent / f"planted_copy_{i}.jpg"
    shutil.copyfile(path, to)
    planted["exact"].append({"original": str(path), "copy": str(to)})
for i, name in enumerate(NON_FRUIT):
    to = out / rng.choice(labels) / f"planted_non_fruit_{i}.jpg"
    Image.open(pillow / name).convert("RGB").resize((100, 100)).save(to, "JPEG", quality=95)
    planted["non_fruit"].append(str(to))
planted_json.write_text(json.dumps(planted, indent=1))
print(f"planted in {out}: {sum(len(v) for v in planted.values())} problems, {len(list(out.rglob('*.jpg')))} images")
