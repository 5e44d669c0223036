"""Deletes one object.

usage: s3_delete.py s3://BUCKET/KEY
"""
import sys

from s3util import client, split

bucket, key = split(sys.argv[1])
client().delete_object(Bucket=bucket, Key=key)
