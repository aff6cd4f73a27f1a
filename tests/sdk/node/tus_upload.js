// A tus upload with tus-js-client (npm), a client nobody here wrote, in Node.
//
// usage: node tus_upload.js ENDPOINT TOKEN FILE MODE
//   MODE plain:     5 MiB chunks (or the file's size), retry delays 0, 200, 500 ms
//   MODE create:    uploadDataDuringCreation (the first chunk rides on the POST)
//   MODE deferred:  uploadLengthDeferred (the length is sent with the last PATCH)
// CHUNK (env, bytes) sets the chunk size. Prints "url URL" and "done OFFSET", or "error MESSAGE"
// and exits 1.
const fs = require("fs");
const tus = require("tus-js-client");

const [endpoint, token, file, mode] = process.argv.slice(2);
const data = fs.readFileSync(file);
const chunkSize = Number(process.env.CHUNK || 5 * 1024 * 1024);
const options = {
  endpoint,
  headers: { Authorization: `Bearer ${token}` },
  chunkSize,
  retryDelays: [0, 200, 500, 1000, 2000],
  metadata: { filename: "document.pdf", filetype: "application/pdf" },
  uploadDataDuringCreation: mode === "create",
  uploadLengthDeferred: mode === "deferred",
  onError(err) {
    console.log(`error ${err.message}`);
    process.exit(1);
  },
  onShouldRetry(err, attempt) {
    const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
    console.log(`retry ${attempt} status ${status}`);
    return !(status >= 400 && status < 500 && status !== 409 && status !== 423);
  },
  onSuccess() {
    console.log(`url ${upload.url}`);
    console.log(`done ${data.length}`);
  },
};
const upload = new tus.Upload(data, options);
upload.start();
