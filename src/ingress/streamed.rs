//! The streamed upload: one request carries the whole document, and drives one upload through the
//! pipeline's stages as its body arrives. Part 0 opens the upload; parts 1..n are fed with up to
//! `max_in_flight` at once; the finish verifies (the client's `Content-Digest`, the upstream's
//! checksum) and commits, but only while the client is still there to hear of it; any failure after
//! open aborts, deleting the upstream upload. The client's answer is made here.

use std::{sync::Arc, time::Duration};

use http::{HeaderValue, Request, Response};
use tokio::{sync::watch, task::JoinSet, time::Instant};
use tracing::Instrument;

use crate::{
    body::{Body, RequestBody},
    error::{Cleanup, GatewayError},
    pipeline::{
        calls::Abort,
        chunker::{ChunkError, Chunker},
        presence::{self, Client},
        stages::{Checked, Opened},
        uploads::{Admitted, Destination, Uploads},
    },
    policy::callers::Caller,
    telemetry,
    upstream::{Answer, Upstream, resource::hex},
};

/// Admits the upload, then runs it in a task of its own, so that a client going away cannot stop
/// its cleanup, and answers the client.
pub async fn handle(
    uploads: &Uploads,
    upstream: Arc<Upstream>,
    req: Request<RequestBody>,
    to: Destination<'_>,
    caller: Caller,
) -> Response<Body> {
    let dialect = upstream.dialect;
    // Dropped with this future: when the client leaves before the answer, hyper drops it.
    let (present, client) = presence::pair();
    let admitted = match uploads.admit(upstream, req.headers(), to, caller).await {
        Ok(admitted) => admitted,
        Err(err) => {
            metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => err.code()).increment(1);
            tracing::info!(code = err.code(), "upload refused before any upstream call");
            // (The body, dropped with the request, is drained over HTTP/2: see `RequestBody`.)
            return err.response(dialect);
        }
    };
    let request_id = req.headers().get(crate::upstream::client::REQUEST_ID).and_then(|v| v.to_str().ok());
    let span = tracing::info_span!(
        "upload",
        request_id,
        account = %to.account,
        upload_id = tracing::field::Empty,
        bytes = tracing::field::Empty,
    );
    let idle = Duration::from_millis(uploads.config.client_idle_timeout_ms);
    let answer = drive(admitted, uploads, req.into_body(), client, idle, span, Hooks::default()).await;
    drop(present);
    answer
}

/// Runs an admitted upload whose document is `body` to its answer, in a task of its own (so that
/// a client going away cannot stop its cleanup). `client` says whether anyone still waits for the
/// answer; `idle` is how long the body may send nothing. The streamed request and the tus spool
/// both come this way.
pub async fn drive<B: DocumentBody>(
    admitted: Admitted,
    uploads: &Uploads,
    body: B,
    client: Client,
    idle: Duration,
    span: tracing::Span,
    hooks: Hooks,
) -> Response<Body> {
    let dialect = admitted.upload.dialect();
    let Hooks { opened, resume } = hooks;
    let driver = Driver { admitted, cancel: uploads.cancellation(), client, began: Instant::now(), opened, resume };
    let counted = uploads.drivers.enter();
    let task = tokio::spawn(
        async move {
            let _counted = counted;
            let chunker = Chunker::new(body, idle).expect_len(driver.admitted.declared);
            driver.run(chunker).await
        }
        .instrument(span),
    );
    task.await.unwrap_or_else(|err| {
        tracing::error!(error = %err, "the upload task failed");
        GatewayError::Internal(err.to_string()).response(dialect)
    })
}

/// What an ingress that outlives its requests (tus) asks of an upload's run.
#[derive(Default)]
pub struct Hooks {
    /// Told the upstream upload's id once create has answered (kept, to delete the upload after
    /// a crash).
    pub opened: Option<tokio::sync::oneshot::Sender<String>>,
    /// An upload an earlier run created and fed: adopted (reconciled with a GET of its parts)
    /// and continued, else deleted and a new one opened.
    pub resume: Option<String>,
}

/// A document's body as the chunker reads it: a request's, or a spool's.
pub trait DocumentBody: http_body::Body<Data = bytes::Bytes, Error: Send> + Unpin + Send + 'static {}
impl<B: http_body::Body<Data = bytes::Bytes, Error: Send> + Unpin + Send + 'static> DocumentBody for B {}

/// One streamed upload on its way: the upload and what its request asked, the drain's cancel
/// switch, and the client.
struct Driver {
    admitted: Admitted,
    cancel: watch::Receiver<bool>,
    client: Client,
    /// When the request reached the gateway.
    began: Instant,
    /// Told the upstream upload's id once create has answered (the tus ingress keeps it, to
    /// delete the upload after a crash).
    opened: Option<tokio::sync::oneshot::Sender<String>>,
    /// An upload an earlier run created and fed (it died): adopted and continued if the
    /// upstream still holds it whole, else deleted and a new one opened.
    resume: Option<String>,
}

/// Resolves when `cancel` turns true; never when its sender is gone.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

// === impl Driver ===

impl Driver {
    async fn run<B: DocumentBody>(mut self, mut chunker: Chunker<B>) -> Response<Body> {
        // Until create announces the upload's expiry, the body is bounded by the lifetime assumed.
        chunker.set_deadline(self.admitted.upload.assumed_body_deadline(self.began), self.began);
        let adopted = match self.resume.take() {
            Some(id) => self.admitted.upload.adopt(&id).await,
            None => None,
        };
        let opened = match adopted {
            Some(opened) => {
                // Its first bytes are upstream already: read (and hashed) past, not sent again.
                let (bytes, parts) = (self.admitted.upload.state.bytes, self.admitted.upload.state.next_seq);
                if let Err(err) = chunker.skip(bytes).await {
                    return self.aborted(client_error(err).into()).await;
                }
                tracing::info!(bytes, parts, "an upload an earlier run left goes on from the parts the upstream holds");
                opened
            }
            None => match self.open(&mut chunker).await {
                Ok(opened) => opened,
                Err(response) => return response,
            },
        };
        if let Some(tx) = self.opened.take() {
            let _ = tx.send(self.admitted.upload.id().to_owned());
        }
        if let Some(left) = opened.too_short {
            return self.aborted(GatewayError::UploadExpiring(left).into()).await;
        }
        chunker.set_deadline(opened.body_deadline, self.began);
        let fed = tokio::select! {
            fed = feed(&mut self.admitted, &mut chunker) => fed,
            () = cancelled(&mut self.cancel) => Err(GatewayError::ShuttingDown.into()),
            () = self.client.gone() => Err(GatewayError::ClientGone.into()),
        };
        let finished = match fed {
            Ok(()) => self.finish(&mut chunker).await,
            Err(abort) => Err(abort),
        };
        match finished {
            Ok((answer, checked)) => self.succeeded(answer, checked, &mut chunker).await,
            Err(abort) => self.aborted(abort).await,
        }
    }

    /// Reads part 0 (holding its share of the memory budget) and opens the upload with it. The
    /// client's answer when it ends here: nothing exists upstream to delete.
    async fn open<B: DocumentBody>(&mut self, chunker: &mut Chunker<B>) -> Result<Opened, Response<Body>> {
        let upload = &mut self.admitted.upload;
        let dialect = upload.dialect();
        let fail = |err: GatewayError| {
            metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => err.code()).increment(1);
            tracing::warn!(code = err.code(), detail = err.detail(), "upload failed before or at create");
            err.response(dialect)
        };
        let first_size = upload.first_part_size(self.admitted.declared);
        let budget = tokio::select! {
            permit = upload.reserve(first_size) => permit,
            () = cancelled(&mut self.cancel) => return Err(fail(GatewayError::ShuttingDown)),
        };
        let part0 = tokio::select! {
            part = chunker.next_part(first_size) => part,
            () = cancelled(&mut self.cancel) => return Err(fail(GatewayError::ShuttingDown)),
        };
        let part0 = match part0 {
            Ok(Some(part)) => part,
            Ok(None) => return Err(fail(GatewayError::EmptyDocument)),
            // The body broke off because its client left (a tus upload's spool reader ends when
            // the upload is stopped: at shutdown, or when its client goes idle): not a bad body.
            Err(_) if self.client.is_gone() => return Err(fail(GatewayError::ClientGone)),
            Err(err) => return Err(fail(client_error(err))),
        };
        if self.client.is_gone() {
            return Err(fail(GatewayError::ClientGone));
        }
        let opened = upload.open(&part0).await;
        drop((budget, part0));
        opened.map_err(|abort| match abort {
            // A refusal (quota, auth) goes back as the upstream sent it.
            Abort::Upstream(answer) => {
                metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => "UPSTREAM_REFUSED").increment(1);
                tracing::warn!(status = answer.status.as_u16(), "upstream refused the create");
                (*answer).into_refusal(dialect)
            }
            Abort::Gateway(err) => fail(err),
        })
    }

    /// The integrity checks, then the commit (unless the client asked for none) while the client
    /// is still there to hear of it. Returns the upstream's final answer and what was checked.
    async fn finish<B: DocumentBody>(&mut self, chunker: &mut Chunker<B>) -> Result<(Answer, Checked), Abort> {
        let ours = hex(&chunker.sha256().await);
        // A `Content-Digest` may come in the head or, from a client that hashes as it sends, as a
        // trailer field (RFC 9530); every one given must match.
        let trailed = match chunker.trailers() {
            Some(trailers) => {
                crate::pipeline::digest::sha256_of(trailers).map_err(|()| GatewayError::BadContentDigest)?
            }
            None => Vec::new(),
        };
        for expected in self.admitted.client_digest.iter().chain(&trailed) {
            if hex(expected) != ours {
                return Err(GatewayError::DigestMismatch { expected: hex(expected), actual: ours }.into());
            }
        }
        let upload = &mut self.admitted.upload;
        let (read_back, checked) = if upload.verifies() || !self.admitted.commit {
            let (answer, checked) = upload.verify(&ours).await?;
            (Some(answer), checked)
        } else {
            (None, Checked::Skipped)
        };
        if self.client.is_gone() {
            return Err(GatewayError::ClientGone.into());
        }
        match read_back {
            Some(answer) if !self.admitted.commit => Ok((answer, checked)),
            _ => Ok((upload.commit().await?, checked)),
        }
    }

    /// The client's answer for a finished upload: the upstream's, plus the gateway's headers. If
    /// the client left during the finish, nobody will learn the upload's id: it is deleted.
    async fn succeeded<B: DocumentBody>(
        self,
        answer: Answer,
        checked: Checked,
        chunker: &mut Chunker<B>,
    ) -> Response<Body> {
        let upload = &self.admitted.upload;
        let parts = upload.state.accepted.len();
        let bytes = chunker.total();
        tracing::Span::current().record("bytes", bytes);
        if self.client.is_gone() {
            let deleted = upload.delete().await;
            tracing::warn!(deleted, "the client left before hearing of its upload; deleted it");
            metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => "CLIENT_GONE").increment(1);
            return GatewayError::ClientGone.response(upload.dialect());
        }
        let commit = self.admitted.commit;
        tracing::info!(parts, bytes, committed = commit, checked = checked.name(), "upload finished");
        if commit {
            metrics::counter!(telemetry::UPLOADS_COMMITTED).increment(1);
        }
        metrics::counter!(telemetry::UPLOAD_BYTES).increment(bytes);
        metrics::counter!(telemetry::PARTS).increment(parts as u64);
        let mut response = answer.into_response();
        let h = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(upload.id()) {
            h.insert("x-chunkgate-upload-id", v);
        }
        h.insert("x-chunkgate-parts", HeaderValue::from(parts));
        h.insert("x-chunkgate-bytes", HeaderValue::from(bytes));
        h.insert("x-chunkgate-sha256", HeaderValue::from_str(&hex(&chunker.sha256().await)).expect("hex"));
        h.insert("x-chunkgate-checksum", HeaderValue::from_static(checked.name()));
        response
    }

    /// Aborts the upload (deleting it upstream) and says so in the client's answer.
    async fn aborted(mut self, abort: Abort) -> Response<Body> {
        let upload = &mut self.admitted.upload;
        let deletion = upload.abort(&abort).await;
        let (dialect, id) = (upload.dialect(), upload.id());
        let cleanup = Cleanup { accepted: &upload.state.accepted, deletion, expires: &upload.state.expires };
        match abort {
            Abort::Gateway(err) => {
                metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => err.code()).increment(1);
                tracing::warn!(code = err.code(), detail = err.detail(), "upload failed");
                err.response_after(dialect, cleanup, id)
            }
            Abort::Upstream(answer) => {
                metrics::counter!(telemetry::UPLOADS_FAILED, "reason" => "UPSTREAM_REFUSED").increment(1);
                tracing::warn!(status = answer.status.as_u16(), "upstream refused the upload");
                let mut response = (*answer).into_refusal(dialect);
                cleanup.stamp(response.headers_mut(), id);
                response
            }
        }
    }
}

/// Feeds parts 1..n as the body arrives, with up to `max_in_flight` on the wire at once, each
/// holding its share of the memory budget (backpressure: the body is read only when a part can go).
async fn feed<B: DocumentBody>(admitted: &mut Admitted, chunker: &mut Chunker<B>) -> Result<(), Abort> {
    let declared = admitted.declared;
    let upload = &mut admitted.upload;
    let size = upload.size_parts(admitted.declared)?;
    let max_in_flight = upload.max_in_flight();
    let mut inflight: JoinSet<Result<u32, Abort>> = JoinSet::new();
    loop {
        while inflight.len() >= max_in_flight {
            upload.acknowledged(joined(inflight.join_next().await)?);
        }
        let permit = upload.reserve(size).await;
        let next = tokio::select! {
            biased;
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                upload.acknowledged(joined(Some(done))?);
                continue;
            }
            next = chunker.next_part(upload.part_bound(size)) => next.map_err(client_error)?,
        };
        let Some(part) = next else { break };
        upload.plan_part(declared).await?;
        inflight.spawn(upload.feed(part, permit)?);
    }
    while let Some(done) = inflight.join_next().await {
        upload.acknowledged(joined(Some(done))?);
    }
    Ok(())
}

fn joined(done: Option<Result<Result<u32, Abort>, tokio::task::JoinError>>) -> Result<u32, Abort> {
    match done {
        Some(Ok(result)) => result,
        Some(Err(err)) => Err(GatewayError::Internal(format!("a part task failed: {err}")).into()),
        None => Err(GatewayError::Internal("no part in flight".into()).into()),
    }
}

fn client_error(err: ChunkError) -> GatewayError {
    match err {
        ChunkError::Idle(d) => GatewayError::ClientBodyTimeout(d),
        ChunkError::Deadline(d) => GatewayError::ClientBodyDeadline(d),
        ChunkError::Broken => GatewayError::ClientBodyError,
    }
}
