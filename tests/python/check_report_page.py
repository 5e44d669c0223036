"""Opens a run's report.html in a real headless Chromium (Debian's, driven by Playwright) from file:// and checks
that it loads with no console error and no network request, that every section is there and drawn, and that
the given labels show as text (escaped in the HTML, not markup). Takes a full-page screenshot.

With --quality, the data-quality section is drawn (its histogram, suspects and outliers); with --thumbnails,
its thumbnails are decoded images, and without, the page holds none.

usage: check_report_page.py REPORT_HTML SCREENSHOT_PNG [--label TEXT]... [--evaluated] [--failed-run]
       [--quality] [--thumbnails]
"""

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile

from playwright.sync_api import sync_playwright

SECTIONS = ["summary", "pca", "map", "time", "errors", "residency", "cost", "evaluation", "quality"]

parser = argparse.ArgumentParser()
parser.add_argument("page")
parser.add_argument("screenshot")
parser.add_argument("--label", action="append", default=[])
parser.add_argument("--evaluated", action="store_true")
parser.add_argument("--failed-run", action="store_true")
parser.add_argument("--quality", action="store_true")
parser.add_argument("--thumbnails", action="store_true")
args = parser.parse_args()

page_path = pathlib.Path(args.page).resolve()
size = page_path.stat().st_size
assert size < 2 * 1024 * 1024, f"the page is {size} bytes"
url = page_path.as_uri()
chromium = shutil.which("chromium") or "/usr/bin/chromium"
assert os.path.exists(chromium), "Debian's chromium is not installed (scripts/setup installs it)"

console_errors, page_errors, requests = [], [], []
with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
    browser = p.chromium.launch_persistent_context(
        profile,
        executable_path=chromium,
        headless=True,
        viewport={"width": 1280, "height": 900},
        # This machine has no internet: Chromium's own background connections are turned off.
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync"],
    )
    page = browser.new_page()
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url, wait_until="load")
    page.wait_for_timeout(300)

    facts = page.evaluate(
        """(sections) => {
            const out = {};
            for (const id of sections) {
                const s = document.getElementById(id);
                out[id] = s ? {h2: (s.querySelector('h2') || {}).textContent || '', text: s.textContent.length,
                               svg: s.querySelectorAll('svg').length, height: s.getBoundingClientRect().height} : null;
            }
            out.points = document.querySelectorAll('#map circle').length;
            out.bars = document.querySelectorAll('#pca rect.scree').length;
            out.cells = document.querySelectorAll('#evaluation rect.cell').length;
            out.legend = Array.from(document.querySelectorAll('#map .legend div')).map(d => d.textContent.trim());
            out.scripts = document.scripts.length;
            out.quality_bars = document.querySelectorAll('#quality rect.scree').length;
            out.quality_rows = document.querySelectorAll('#quality table tr').length;
            out.thumbs = Array.from(document.querySelectorAll('img.thumb')).map(i => [i.complete, i.naturalWidth]);
            out.body = document.body.innerText;
            return out;
        }""",
        SECTIONS,
    )
    page.screenshot(path=args.screenshot, full_page=True)
    browser.close()

assert not console_errors, console_errors
assert not page_errors, page_errors
assert requests == [url], f"the page made requests beyond itself: {requests}"
assert facts["scripts"] == 0, "the page needs no script"
for id in SECTIONS:
    assert facts[id] is not None, f"section {id} missing"
    assert facts[id]["h2"], f"section {id} has no heading"
    assert facts[id]["height"] > 40, f"section {id} is empty: {facts[id]}"
if args.failed_run:
    assert "No image could be featurized" in facts["body"]
    assert facts["points"] == 0
else:
    assert facts["bars"] > 0, "no scree bars"
    assert facts["points"] > 0, "no map points"
    assert facts["pca"]["svg"] == 1 and facts["map"]["svg"] == 1 and facts["time"]["svg"] == 1, facts
for label in args.label:
    assert any(entry.startswith(label + " ") for entry in facts["legend"]), (label, facts["legend"])
if args.evaluated:
    assert facts["cells"] > 0, "no confusion matrix"
    assert "top-1 accuracy" in facts["body"]
if args.quality:
    assert facts["quality_bars"] > 0 and facts["quality_rows"] > 2, facts
    assert "Likely wrong labels" in facts["body"] and "Outliers" in facts["body"]
if args.thumbnails:
    assert facts["thumbs"] and all(done and width > 0 for done, width in facts["thumbs"]), facts["thumbs"]
else:
    assert not facts["thumbs"], "thumbnails without --thumbnails"
for needed in ["cheaper per image", "per 1,000,000 images"] if not args.failed_run else ["per 1,000,000 images"]:
    assert needed in facts["body"], needed
print(json.dumps({k: facts[k] for k in ["points", "bars", "cells", "quality_bars"]} | {"thumbnails": len(facts["thumbs"]), "bytes": size}))
