//! The HTTP/1.1 accept loop: bounded request heads, a header read timeout against slow
//! clients, peer addresses for the handlers, and graceful shutdown of open requests.

use std::{convert::Infallible, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::{EdgeInner, limits::ConnRate, rawsse};

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
    edge: &EdgeInner,
) {
    let config = &edge.config;
    let rate = ConnRate::new(config.connection_rate_per_ip);
    let tasks = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_request_head.max(8192))
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if let Some(rate) = &rate
            && !rate.admit(peer.ip())
        {
            edge.metrics.refuse("rate_limited");
            tasks.spawn(async move {
                let mut stream = stream;
                let _ = crate::limits::write_refusal(
                    &mut stream,
                    http::StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many new connections from your address; retry later",
                )
                .await;
            });
            continue;
        }
        let router = router.clone();
        let stop = stop.clone();
        let metrics = edge.metrics.clone();
        let builder = builder.clone();
        let (max_head, head_timeout) = (config.max_request_head, config.header_read_timeout);
        tasks.spawn(async move {
            let kill = CancellationToken::new();
            let deadline = tokio::time::Instant::now() + head_timeout;
            match rawsse::sniff(&stream, deadline).await {
                rawsse::Sniff::Sse => {
                    rawsse::serve(stream, peer, router, kill, max_head, deadline, &metrics).await;
                    return;
                }
                rawsse::Sniff::Gone => {
                    if tokio::time::Instant::now() >= deadline {
                        metrics.refuse("header_timeout");
                    }
                    return;
                }
                rawsse::Sniff::Other => {}
            }
            let conn_kill = crate::ConnKill(kill.clone());
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(conn_kill.clone());
                let router = router.clone();
                async move {
                    Ok::<_, Infallible>(router.oneshot(req).await.unwrap_or_else(|e| match e {}))
                }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                // Stuck writing to a client that stopped reading: drop the connection.
                () = kill.cancelled() => Ok(()),
                () = stop.cancelled() => {
                    // Finish the request in flight (SSE streams and held polls end when
                    // drained), then close instead of keeping the connection alive.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(error) = result {
                if error.is_timeout() {
                    metrics.refuse("header_timeout");
                } else if error.is_parse_too_large() {
                    metrics.refuse("request_head_too_large");
                }
                tracing::debug!(%error, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}
