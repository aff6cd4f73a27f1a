//! The floor for a proxy built on the same libraries: hyper's HTTP/1.1 server and pooled client on
//! one single-threaded runtime per core, as the gateway runs them, with nothing else (no routing,
//! no limits, no pacing, no timeouts). The passthrough comparison runs it beside the gateway and
//! nginx, so what the gateway adds and what the libraries cost are told apart.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use http_body_util::{BodyExt, Empty, combinators::UnsyncBoxBody};
use hyper::{Request, Response, Uri, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};

type ProxyBody = UnsyncBoxBody<bytes::Bytes, hyper::Error>;

/// Set in the child's environment: the upstream it proxies to.
const ROLE: &str = "CHUNKGATE_BENCH_HYPER_FLOOR";

/// A bare proxy to `upstream` in a child process (this benchmark's own binary run again).
pub struct HyperFloor {
    pub child: Child,
    pub url: String,
}

impl HyperFloor {
    pub fn start(upstream: &str) -> HyperFloor {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, upstream)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("listening on ").expect("the floor proxy's address").to_owned();
        HyperFloor { child, url }
    }
}

impl Drop for HyperFloor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In the child: serves until killed. Returns only when this process is not the child.
pub fn serve_if_asked() {
    let Ok(upstream) = std::env::var(ROLE) else { return };
    let upstream: Uri = upstream.parse().expect("an upstream URL");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    println!("listening on http://{}", listener.local_addr().unwrap());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loops: Vec<_> = (0..threads)
        .map(|_| {
            let (listener, upstream) = (listener.try_clone().unwrap(), upstream.clone());
            std::thread::spawn(move || event_loop(listener, upstream))
        })
        .collect();
    for l in loops {
        let _ = l.join();
    }
    std::process::exit(0);
}

fn event_loop(listener: std::net::TcpListener, upstream: Uri) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let client: Client<_, ProxyBody> = Client::builder(TokioExecutor::new()).build_http();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (client, upstream) = (client.clone(), upstream.clone());
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let mut uri = upstream.into_parts();
                        uri.path_and_query = parts.uri.path_and_query().cloned();
                        parts.uri = Uri::from_parts(uri).unwrap();
                        parts.headers.remove(hyper::header::HOST);
                        let answer = match client.request(Request::from_parts(parts, body.boxed_unsync())).await {
                            Ok(answer) => answer.map(|b| b.boxed_unsync()),
                            Err(_) => {
                                let empty = Empty::new().map_err(|never| match never {}).boxed_unsync();
                                Response::builder().status(502).body(empty).unwrap()
                            }
                        };
                        Ok::<_, hyper::Error>(answer)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
}
