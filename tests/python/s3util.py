"""Clients for the test's S3-compatible server: boto3 and pyarrow's S3 filesystem, as users have them.

The endpoint and keys come from VERGER_S3_ENDPOINT (http://127.0.0.1:PORT), VERGER_S3_ACCESS_KEY and
VERGER_S3_SECRET, set by the tests that start the server.
"""
import os
from urllib.parse import urlparse

import boto3
import pyarrow.fs

ENDPOINT = os.environ.get("VERGER_S3_ENDPOINT", "")
KEYS = dict(aws_access_key_id=os.environ.get("VERGER_S3_ACCESS_KEY", ""),
            aws_secret_access_key=os.environ.get("VERGER_S3_SECRET", ""))


def client():
    return boto3.client("s3", endpoint_url=ENDPOINT, region_name="eu-west-1", **KEYS)


def filesystem():
    url = urlparse(ENDPOINT)
    return pyarrow.fs.S3FileSystem(access_key=KEYS["aws_access_key_id"], secret_key=KEYS["aws_secret_access_key"],
                                   endpoint_override=url.netloc, scheme=url.scheme, region="eu-west-1")


def split(uri):
    """s3://bucket/prefix -> (bucket, prefix)"""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def read_table(location, **kwargs):
    """A Parquet folder or file, local or s3://, read by pyarrow."""
    import pyarrow.parquet as pq
    if location.startswith("s3://"):
        return pq.read_table(location.removeprefix("s3://"), filesystem=filesystem(), **kwargs)
    return pq.read_table(location, **kwargs)
