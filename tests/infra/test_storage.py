import uuid

import boto3
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage


def _bucket_keys(prefix: str) -> list[str]:
    options = settings.STORAGES["default"]["OPTIONS"]
    client = boto3.client(
        "s3",
        endpoint_url=options["endpoint_url"],
        aws_access_key_id=options["access_key"],
        aws_secret_access_key=options["secret_key"],
        region_name=options["region_name"],
    )
    listing = client.list_objects_v2(Bucket=options["bucket_name"], Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_an_object_is_written_read_and_deleted_in_the_s3_server():
    prefix = f"tests/{uuid.uuid4().hex}/"
    name = default_storage.save(prefix + "hello.bin", ContentFile(b"\x00visor\xff"))

    assert _bucket_keys(prefix) == [name]
    with default_storage.open(name, "rb") as handle:
        assert handle.read() == b"\x00visor\xff"

    default_storage.delete(name)
    assert _bucket_keys(prefix) == []
    assert not default_storage.exists(name)
