"""Uploads a file or a folder to the test's S3-compatible store with boto3 (the client users have), creating
the bucket.

usage: s3_put.py BUCKET PREFIX PATH   (endpoint from VERGER_S3_ENDPOINT)
"""
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from s3util import client

bucket, prefix, path = sys.argv[1:4]
s3 = client()
try:
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
    pass
if os.path.isfile(path):
    files = [(path, os.path.basename(path))]
else:
    files = [(os.path.join(d, n), os.path.relpath(os.path.join(d, n), path)) for d, _, names in os.walk(path)
             for n in names]
with ThreadPoolExecutor(16) as pool:
    list(pool.map(lambda f: s3.upload_file(f[0], bucket, f"{prefix}/{f[1]}"), files))
print(f"uploaded {len(files)} objects to s3://{bucket}/{prefix}")
