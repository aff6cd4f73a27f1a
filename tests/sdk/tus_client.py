"""A tus upload with tuspy (PyPI), a client nobody here wrote: resumable, its URL stored on disk.

usage: tus_client.py ENDPOINT TOKEN FILE STORAGE CHUNK [--stop-after N]

Uploads FILE to ENDPOINT in CHUNK-byte PATCHes, keeping the upload's URL in STORAGE (tuspy's own
file storage, keyed by the file's fingerprint). With --stop-after N it sends N chunks and then dies
at once (os._exit), as a killed client would; run again without it, it resumes from the stored URL
(a HEAD for the offset, then the rest). Prints the upload's URL and the offset it ended at.
"""

import os
import sys

from tusclient import client
from tusclient.storage import filestorage


def main():
    endpoint, token, path, storage, chunk = sys.argv[1:6]
    stop_after = int(sys.argv[7]) if len(sys.argv) > 7 and sys.argv[6] == "--stop-after" else None
    tus = client.TusClient(endpoint, headers={"Authorization": f"Bearer {token}"})
    uploader = tus.uploader(
        path,
        chunk_size=int(chunk),
        store_url=True,
        url_storage=filestorage.FileStorage(storage),
        metadata={"filename": os.path.basename(path)},
        retries=0,
    )
    if stop_after is not None:
        for _ in range(stop_after):
            uploader.upload_chunk()
        print(f"url {uploader.url}", flush=True)
        print(f"offset {uploader.offset}", flush=True)
        os._exit(9)
    uploader.upload()
    print(f"url {uploader.url}", flush=True)
    print(f"offset {uploader.offset}", flush=True)


if __name__ == "__main__":
    main()
