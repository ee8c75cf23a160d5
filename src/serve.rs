//! The HTTP server loop. hyper is driven directly (rather than through `axum::serve`) so that
//! slow and greedy clients are bounded: a client must send a request's headers within the
//! header timeout (slowloris connections are closed), and one address may hold only so many
//! connections at once. Shutdown is graceful: in-flight requests finish.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// What one client may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to send a request's headers, from the connection's start or its previous request.
    pub header_timeout: Duration,
    /// Open connections per client address; more are closed as they arrive.
    pub per_address: usize,
}

/// Open connections per address; a [`Slot`] gives its place back when dropped.
#[derive(Default)]
struct Open(Mutex<HashMap<IpAddr, usize>>);

struct Slot {
    open: Arc<Open>,
    ip: IpAddr,
}

impl Open {
    fn take(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<Slot> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            open: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits (at most 30 s) for the
/// connections in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let open = Arc::new(Open::default());
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.header_timeout));
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = open.take(addr.ip(), limits.per_address) else {
            tracing::warn!(address = %addr.ip(), "connection refused: too many open from this address");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = connected(router.clone(), addr);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let mut stream = stream;
            if request_line_too_long(&stream, limits.header_timeout).await {
                refuse_long_request_line(&mut stream).await;
                return;
            }
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open 30 s after shutdown began; closing them");
    }
    Ok(())
}

/// Whether the first request line of a connection runs past [`crate::fhir::MAX_URI_BYTES`]:
/// hyper refuses lines over 64 KiB itself, with an empty 414 or 431, so such a request is
/// answered here instead, with an OperationOutcome. Looks without reading (`peek`), for at most
/// the header timeout.
async fn request_line_too_long(stream: &tokio::net::TcpStream, within: Duration) -> bool {
    let limit = crate::fhir::MAX_URI_BYTES + 64;
    let mut buf = vec![0u8; limit + 1];
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = 0;
    loop {
        let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await else {
            return false;
        };
        if n == 0 || buf[..n].windows(2).any(|w| w == b"\r\n") {
            return false;
        }
        if n > limit {
            return true;
        }
        if n == seen {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen = n;
    }
}

/// Reads the rest of an over-long request head (up to 4 MiB or 2 s), then answers 414 with an
/// OperationOutcome and closes.
async fn refuse_long_request_line(stream: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    let mut read = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while read < 4 * 1024 * 1024 {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                read += n;
                tail.extend_from_slice(&buf[..n]);
                if tail.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
                let keep = tail.len().saturating_sub(3);
                tail.drain(..keep);
            }
            _ => break,
        }
    }
    // The same OperationOutcome the router's 414 carries.
    let (_, issues) =
        crate::error::FhirError::UriTooLong(crate::fhir::MAX_URI_BYTES).client_response();
    let body = crate::error::outcome(&issues, "error").to_string();
    let head = format!(
        "HTTP/1.1 414 URI Too Long\r\ncontent-type: application/fhir+json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The router as a hyper service for one connection, with the peer's address in each request
/// (`ConnectInfo`, as `axum::serve` provides it).
fn connected(
    router: Router,
    addr: SocketAddr,
) -> hyper_util::service::TowerToHyperService<
    impl tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future = impl Send,
        > + Clone,
> {
    use tower::ServiceExt;
    let service = router.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(addr));
        req
    });
    hyper_util::service::TowerToHyperService::new(service)
}
