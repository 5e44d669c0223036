"""What a reader that waits for _SUCCESS sees: prints "present" or "absent".

usage: s3_success.py s3://BUCKET/PREFIX
"""
import sys

from s3util import client, split

bucket, prefix = split(sys.argv[1])
s3 = client()
listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/_SUCCESS")
print("present" if listed.get("KeyCount", 0) else "absent")
