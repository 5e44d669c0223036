"""The exported app model as an app would run it: valid ONNX (onnx.checker, with shape inference), uint8
NHWC input, class names in the metadata, and, on Pillow-resized photos (`Image.open(p).resize((224, 224))`,
RGB, as the original pipeline), the same top-1 label as `verger identify` for every photo and every class
probability within 1e-4 of verger's.

usage: check_app_model.py MODEL.onnx IDENTIFY.json
(IDENTIFY.json: `verger identify --json --top CLASSES` of the photos)
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

model_path, answers_path = sys.argv[1], sys.argv[2]
onnx.checker.check_model(model_path, full_check=True)
model = onnx.load(model_path)
labels = json.loads({p.key: p.value for p in model.metadata_props}["labels"])
answers = json.load(open(answers_path))

options = ort.SessionOptions()
options.intra_op_num_threads = 2
session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
(image,) = session.get_inputs()
assert image.name == "image" and image.type == "tensor(uint8)", (image.name, image.type)
assert image.shape[1:] == [224, 224, 3], image.shape
(probabilities,) = session.get_outputs()
assert probabilities.name == "probabilities", probabilities.name

worst, disagreements = 0.0, []
for start in range(0, len(answers), 64):
    chunk = answers[start : start + 64]
    pixels = np.stack(
        [np.asarray(Image.open(a["photo"]).resize((224, 224)).convert("RGB"), dtype=np.uint8) for a in chunk]
    )
    (p,) = session.run(None, {"image": pixels})
    for answer, row in zip(chunk, p):
        theirs = answer["identified"]["labels"]
        assert len(theirs) == len(labels), "identify must list every class"
        if labels[int(np.argmax(row))] != theirs[0]["label"]:
            disagreements.append(answer["photo"])
        for entry in theirs:
            worst = max(worst, abs(float(row[labels.index(entry["label"])]) - entry["probability"]))
        assert abs(float(row.sum()) - 1.0) < 1e-4

print(f"{len(answers)} photos, {len(labels)} classes, top-1 disagreements {len(disagreements)}, "
      f"largest probability difference {worst:.2e}")
assert not disagreements, disagreements[:10]
assert worst <= 1e-4, worst
