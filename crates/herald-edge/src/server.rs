//! The HTTP/1.1 accept loop: bounded request heads, a header read timeout against slow
//! clients, a cap on open client sockets, client addresses (behind trusted proxies too) for
//! the handlers, and graceful shutdown of open requests.

use std::{sync::Arc, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    EdgeInner,
    conn::{ConnCtx, serve_hyper},
    limits::{
        Admission, ConnRate, Counted, RATE_LIMITED, SocketGate, TOO_MANY_CONNECTIONS, Throttled,
        write_refusal,
    },
    rawhttp::{self, Kind, Rewind, Sniff},
    rawpoll, rawsse,
};

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    poll: crate::PollEndpoint,
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
    let ctx = Arc::new(ConnCtx {
        router,
        poll,
        stop: stop.clone(),
        admission: admission.clone(),
        builder,
        max_head: config.max_request_head,
        head_timeout: config.header_read_timeout,
    });
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
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let kill = CancellationToken::new();
            let deadline = tokio::time::Instant::now() + ctx.head_timeout;
            // Each path is boxed: a connection's task holds only the state of its own path
            // (an idle SSE stream or held poll does not pay for hyper's connection future).
            match rawhttp::sniff(&stream, deadline).await {
                Sniff::Raw(Kind::Sse) => {
                    let conn = rawsse::Conn { stream, slot, peer };
                    let admission = &ctx.admission;
                    let router = ctx.router.clone();
                    Box::pin(rawsse::serve(
                        conn,
                        router,
                        kill,
                        ctx.max_head,
                        deadline,
                        admission,
                    ))
                    .await;
                }
                Sniff::Raw(_) => {
                    let conn = rawsse::Conn { stream, slot, peer };
                    Box::pin(rawpoll::serve(conn, &ctx, kill, deadline)).await;
                }
                Sniff::Gone => {
                    if tokio::time::Instant::now() >= deadline {
                        ctx.admission.metrics.refuse("header_timeout");
                    }
                }
                Sniff::Other => {
                    let io = Rewind::new(Vec::new(), Counted::new(stream, slot));
                    Box::pin(serve_hyper(io, peer, &ctx, kill)).await;
                }
            }
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}
