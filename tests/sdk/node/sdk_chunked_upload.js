// Drives a chunked upload with the official DocuSign Node SDK (docusign-esign), unmodified, against a base URL.
//
// Usage: node sdk_chunked_upload.js BASE_URL ACCOUNT_ID TOKEN [--keep]
//
// Creates an upload with part 0, adds parts 1 and 2, checks that a second PUT of part 1 is refused,
// reads the upload back with its checksum, commits it and (unless --keep) deletes it. Prints one JSON
// line describing what the SDK saw; exits non-zero on any surprise.
//
// Mirrors ../sdk_chunked_upload.py. The SDK (v10) uses axios: a refused call rejects with the axios
// error, whose err.response.status / err.response.data hold the HTTP status and the parsed JSON body.

"use strict";

const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const { ApiClient, EnvelopesApi, ChunkedUploadRequest } = require("docusign-esign");

function part(data) {
  return ChunkedUploadRequest.constructFromObject({ chunkedUploadId: "", data: data.toString("base64") });
}

async function main() {
  const [base, account, token] = process.argv.slice(2, 5);
  if (!token) {
    console.error("usage: node sdk_chunked_upload.js BASE_URL ACCOUNT_ID TOKEN [--keep]");
    process.exit(2);
  }
  const keep = process.argv.slice(5).includes("--keep");
  const client = new ApiClient({ basePath: base });
  client.addDefaultHeader("Authorization", `Bearer ${token}`);
  const api = new EnvelopesApi(client);

  const parts = [70_000, 65_536, 1_234].map((n) => crypto.randomBytes(n));
  const created = await api.createChunkedUpload(account, { chunkedUploadRequest: part(parts[0]) });
  const uploadId = created.chunkedUploadId;
  assert.equal(String(created.committed).toLowerCase(), "false");
  assert.deepEqual(created.chunkedUploadParts.map((p) => [p.sequence, p.size]), [["0", String(parts[0].length)]]);

  for (const seq of [1, 2]) {
    await api.updateChunkedUploadPart(account, uploadId, String(seq), { chunkedUploadRequest: part(parts[seq]) });
  }

  let refused;
  try {
    await api.updateChunkedUploadPart(account, uploadId, "1", { chunkedUploadRequest: part(Buffer.from("again")) });
  } catch (err) {
    if (!err.response) throw err;
    refused = { status: err.response.status, errorCode: (err.response.data || {}).errorCode };
  }
  if (!refused) throw new Error("a second PUT of part 1 was accepted");

  const got = await api.getChunkedUpload(account, uploadId, { include: "checksum" });
  const expected = crypto.createHash("sha256").update(Buffer.concat(parts)).digest("hex");
  assert.equal(got.checksum, expected);
  assert.equal(got.totalSize, String(parts.reduce((n, p) => n + p.length, 0)));

  const committed = await api.updateChunkedUpload(account, uploadId, { action: "commit" });
  assert.equal(String(committed.committed).toLowerCase(), "true");

  if (!keep) {
    await api.deleteChunkedUpload(account, uploadId);
  }

  console.log(JSON.stringify({
    upload_id: uploadId,
    sha256: expected,
    parts: committed.chunkedUploadParts.length,
    refused_duplicate: refused,
    deleted: !keep,
  }));
}

main().then(
  () => process.exit(0),
  (err) => {
    const res = err && err.response;
    console.error(res ? `HTTP ${res.status} from ${err.config.method.toUpperCase()} ${err.config.url}: ${JSON.stringify(res.data)}` : (err && err.stack) || err);
    process.exit(1);
  },
);
