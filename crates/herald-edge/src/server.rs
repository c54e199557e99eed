//! The HTTP/1.1 accept loop: bounded request heads, a header read timeout against slow
//! clients, a cap on open client sockets, client addresses (behind trusted proxies too) for
//! the handlers, and graceful shutdown of open requests.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::{
    EdgeInner,
    limits::{
        Admission, ConnRate, Counted, RATE_LIMITED, SocketGate, TOO_MANY_CONNECTIONS, Throttled,
        refusal_response, write_refusal,
    },
    rawsse,
};

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
    edge: &EdgeInner,
) {
    let config = &edge.config;
    let admission = Arc::new(Admission {
        rate: ConnRate::new(config.connection_rate_per_ip),
        proxies: config.trusted_proxies.clone(),
        metrics: edge.metrics.clone(),
    });
    let gate = SocketGate::new(config.max_client_sockets);
    let accept_failures = Throttled::new();
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
                    if let Some(failures) = accept_failures.hit() {
                        tracing::warn!(
                            %error, failures, open_client_sockets = gate.open(),
                            "accept failed on the client port (counted since the last such line); \
                             if descriptors ran out, lower HERALD_MAX_CONNECTIONS or raise HERALD_FD_RESERVE"
                        );
                    }
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if !admission.admit_peer(peer.ip()) {
            // Answered while few refusals are in flight, like those over the socket cap.
            if let Some(answering) = gate.start_refusal() {
                tasks.spawn(async move {
                    let mut stream = stream;
                    let (status, code, message) = RATE_LIMITED;
                    let _ = write_refusal(&mut stream, status, code, message).await;
                    drop(answering);
                });
            }
            continue;
        }
        let Some(slot) = gate.try_open() else {
            edge.metrics.refuse("too_many_connections");
            if let Some(refused) = gate.full.hit() {
                tracing::warn!(
                    open_client_sockets = gate.open(),
                    limit = gate.max(),
                    refused,
                    "client connection limit reached: new connections get 503 too_many_connections \
                     (count since the last such line); the limit comes from the descriptor limit \
                     and HERALD_MAX_CONNECTIONS"
                );
            }
            // Answer while few answers are in flight (each holds a descriptor for at most a
            // second); past that, close at once so refusals cannot use up the reserve.
            if let Some(answering) = gate.start_refusal() {
                tasks.spawn(async move {
                    let mut stream = stream;
                    let (status, code, message) = TOO_MANY_CONNECTIONS;
                    let _ = write_refusal(&mut stream, status, code, message).await;
                    drop(answering);
                });
            }
            continue;
        };
        let router = router.clone();
        let stop = stop.clone();
        let metrics = edge.metrics.clone();
        let admission = admission.clone();
        let builder = builder.clone();
        let (max_head, head_timeout) = (config.max_request_head, config.header_read_timeout);
        tasks.spawn(async move {
            let kill = CancellationToken::new();
            let deadline = tokio::time::Instant::now() + head_timeout;
            match rawsse::sniff(&stream, deadline).await {
                rawsse::Sniff::Sse => {
                    let conn = rawsse::Conn { stream, slot, peer };
                    rawsse::serve(conn, router, kill, max_head, deadline, &admission).await;
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
                let router = router.clone();
                let client = admission.request_client(peer, req.headers());
                req.extensions_mut().insert(conn_kill.clone());
                async move {
                    let response = match client {
                        Ok(client) => {
                            req.extensions_mut().insert(ConnectInfo(client));
                            router.oneshot(req).await.unwrap_or_else(|e| match e {})
                        }
                        // From a trusted proxy: refuse this client's request and keep the
                        // connection, which carries other clients too.
                        Err(_) => {
                            let (status, code, message) = RATE_LIMITED;
                            refusal_response(status, code, message)
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = builder
                .serve_connection(TokioIo::new(Counted::new(stream, slot)), service)
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
