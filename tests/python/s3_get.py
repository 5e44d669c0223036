"""Prints one object's bytes (e.g. a run's report.json in a bucket).

usage: s3_get.py s3://BUCKET/KEY
"""
import sys

from s3util import client, split

bucket, key = split(sys.argv[1])
sys.stdout.buffer.write(client().get_object(Bucket=bucket, Key=key)["Body"].read())
