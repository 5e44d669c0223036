"""Uploads a folder to an S3-compatible store with boto3 (the client users have), creating the bucket.

usage: s3_put.py ENDPOINT BUCKET PREFIX FOLDER
"""
import os
import sys

import boto3

endpoint, bucket, prefix, folder = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1",
                  aws_access_key_id="test-access-key", aws_secret_access_key="test-secret-key")
try:
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
count = 0
for directory, _, files in os.walk(folder):
    for name in files:
        path = os.path.join(directory, name)
        key = f"{prefix}/{os.path.relpath(path, folder)}"
        s3.upload_file(path, bucket, key)
        count += 1
print(f"uploaded {count} objects to s3://{bucket}/{prefix}")
