"""Drives a chunked upload with the official DocuSign Python SDK, unmodified, against a base URL.

Usage: sdk_chunked_upload.py BASE_URL ACCOUNT_ID TOKEN [--keep]

Creates an upload with part 0, adds parts 1 and 2, checks that a second PUT of part 1 is refused,
reads the upload back with its checksum, commits it and (unless --keep) deletes it. Prints one JSON
line describing what the SDK saw; exits non-zero on any surprise.
"""

import base64
import hashlib
import json
import os
import sys

from docusign_esign import ApiClient, EnvelopesApi
from docusign_esign.client.api_exception import ApiException
from docusign_esign.models import ChunkedUploadRequest


def part(data: bytes) -> ChunkedUploadRequest:
    return ChunkedUploadRequest(chunked_upload_id="", data=base64.b64encode(data).decode("ascii"))


def main() -> int:
    base, account, token = sys.argv[1:4]
    keep = "--keep" in sys.argv[4:]
    client = ApiClient(host=base)
    client.set_default_header("Authorization", f"Bearer {token}")
    api = EnvelopesApi(client)

    parts = [os.urandom(n) for n in (70_000, 65_536, 1_234)]
    created = api.create_chunked_upload(account, chunked_upload_request=part(parts[0]))
    upload_id = created.chunked_upload_id
    assert created.committed.lower() == "false", created.committed
    assert [(p.sequence, p.size) for p in created.chunked_upload_parts] == [("0", str(len(parts[0])))]

    for seq in (1, 2):
        api.update_chunked_upload_part(account, upload_id, str(seq), chunked_upload_request=part(parts[seq]))

    try:
        api.update_chunked_upload_part(account, upload_id, "1", chunked_upload_request=part(b"again"))
        raise AssertionError("a second PUT of part 1 was accepted")
    except ApiException as err:
        refused = {"status": err.status, "errorCode": json.loads(err.body).get("errorCode")}

    got = api.get_chunked_upload(account, upload_id, include="checksum")
    expected = hashlib.sha256(b"".join(parts)).hexdigest()
    assert got.checksum == expected, (got.checksum, expected)
    assert got.total_size == str(sum(map(len, parts))), got.total_size

    committed = api.update_chunked_upload(account, upload_id, action="commit")
    assert committed.committed.lower() == "true", committed.committed

    if not keep:
        api.delete_chunked_upload(account, upload_id)

    print(json.dumps({
        "upload_id": upload_id,
        "sha256": expected,
        "parts": len(committed.chunked_upload_parts),
        "refused_duplicate": refused,
        "deleted": not keep,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
