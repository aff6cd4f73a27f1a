"""The official DocuSign Python SDK doing a chunked upload itself, as an integration would without
chunkgate: read the document, create with part 0, add parts 1..n one after another, commit.

Usage: sdk_upload.py BASE_URL ACCOUNT TOKEN SIZE PART_SIZE
Prints {"secs": ..., "parts": ...} on one line. Loopback only.
"""

import base64
import json
import os
import sys
import time

from docusign_esign import ApiClient, EnvelopesApi
from docusign_esign.models import ChunkedUploadRequest


def main() -> int:
    base, account, token, size, part = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    document = os.urandom(size)
    client = ApiClient(host=base)
    client.set_default_header("Authorization", f"Bearer {token}")
    api = EnvelopesApi(client)
    started = time.perf_counter()
    chunks = [document[i : i + part] for i in range(0, size, part)]
    req = lambda b: ChunkedUploadRequest(chunked_upload_id="", data=base64.b64encode(b).decode("ascii"))
    created = api.create_chunked_upload(account, chunked_upload_request=req(chunks[0]))
    for seq, chunk in enumerate(chunks[1:], start=1):
        api.update_chunked_upload_part(account, created.chunked_upload_id, str(seq), chunked_upload_request=req(chunk))
    committed = api.update_chunked_upload(account, created.chunked_upload_id, action="commit")
    assert committed.committed.lower() == "true"
    print(json.dumps({"secs": time.perf_counter() - started, "parts": len(chunks)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
