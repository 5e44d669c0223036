"""A finished verger output in S3: the full layout, _SUCCESS written last (then only the lease, released), no
staging left, every object encrypted as asked, and the report saying which buckets, regions and encryption were used.

usage: check_s3_output.py s3://BUCKET/PREFIX SSE|none ROWS
"""
import json
import os
import sys

from s3util import client, read_table, split

uri, sse, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
bucket, prefix = split(uri)
s3 = client()
objects = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
           for o in page.get("Contents", [])]
names = {o["Key"][len(prefix) + 1:]: o for o in objects}
for required in ["_SUCCESS", "report.json", "report.html", "pca/model.json", "manifest/part-00000.parquet",
                 "errors/part-00000.parquet", "result/part-00000.parquet"]:
    assert required in names, (required, sorted(names))
assert not [n for n in names if n.startswith("_staging")], "staging left behind"
# The run's lease is marked released after _SUCCESS (never deleted: object stores delete unconditionally).
if "_CLAIM" in names:
    claim = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/_CLAIM")["Body"].read())
    assert claim.get("released") is True, claim
success = names["_SUCCESS"]["LastModified"]
results = [o for name, o in names.items() if name != "_CLAIM"]
assert all(o["LastModified"] <= success for o in results), "_SUCCESS is not the last object written"

secret = os.environ.get("PLANTED_SECRET", "").encode()
for name in names:
    head = s3.head_object(Bucket=bucket, Key=f"{prefix}/{name}")
    if sse != "none":
        assert head.get("ServerSideEncryption") == sse, (name, head.get("ServerSideEncryption"))
    if sse == "aws:kms":
        assert head.get("SSEKMSKeyId"), (name, "no KMS key id")
    if secret:
        assert secret not in s3.get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read(), name

report = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/report.json")["Body"].read())
# "AES256", or "aws:kms (key ID)"
assert (report["encryption"] or "none").split(" ")[0] == sse, report["encryption"]
assert bucket in {b["bucket"] for b in report["buckets"]}, report["buckets"]
table = read_table(f"{uri}/result")
assert table.num_rows == rows, (table.num_rows, rows)
assert table.schema.field("features").type.value_type == "float" and table.schema.field("pca_features").type.value_type == "double"
print(f"{len(names)} objects, {table.num_rows} rows, encryption {sse}, buckets {report['buckets']}")
