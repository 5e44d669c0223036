"""Prints how many executors the scheduler's REST API lists (0 when it does not answer yet).

usage: cluster_executors.py http://HOST:PORT
"""
import json
import sys
import urllib.request

try:
    with urllib.request.urlopen(f"{sys.argv[1]}/api/executors", timeout=5) as response:
        print(len(json.load(response)))
except Exception:
    print(0)
