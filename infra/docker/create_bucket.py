"""One-shot: create the S3 bucket named by S3_BUCKET if it does not exist (compose's `createbucket`)."""

import os
import sys
import time

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError

client = boto3.client(
    "s3",
    endpoint_url=os.environ.get("S3_ENDPOINT_URL") or None,
    aws_access_key_id=os.environ.get("S3_ACCESS_KEY_ID") or None,
    aws_secret_access_key=os.environ.get("S3_SECRET_ACCESS_KEY") or None,
    region_name=os.environ.get("S3_REGION", "us-east-1"),
)
bucket = os.environ.get("S3_BUCKET", "visor")
for _attempt in range(60):
    try:
        client.head_bucket(Bucket=bucket)
        print(f"bucket {bucket} exists")
        sys.exit(0)
    except ClientError as error:
        if error.response["Error"]["Code"] in {"404", "NoSuchBucket"}:
            client.create_bucket(Bucket=bucket)
            print(f"bucket {bucket} created")
            sys.exit(0)
        print(f"waiting for S3: {error}", file=sys.stderr)
    except EndpointConnectionError as error:
        print(f"waiting for S3: {error}", file=sys.stderr)
    time.sleep(2)
sys.exit(f"S3 at {os.environ.get('S3_ENDPOINT_URL')} did not answer")
