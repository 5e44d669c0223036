"""Prints the keys under a prefix, one a line.

usage: s3_list.py s3://BUCKET/PREFIX
"""
import sys

from s3util import client, split

bucket, prefix = split(sys.argv[1])
for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for item in page.get("Contents", []):
        print(item["Key"])
