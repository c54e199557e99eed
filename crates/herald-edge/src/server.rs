//! The HTTP/1.1 accept loop: bounded request heads, a header read timeout against slow
//! clients, a cap on open client sockets, client addresses (behind trusted proxies too) for
//! the handlers, and graceful shutdown of open requests.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

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

/// What every connection task of the client port shares.
pub(crate) struct ConnCtx {
    pub(crate) router: Router,
    /// `GET /poll` as the router answers it, for the raw poll path.
    pub(crate) poll: crate::PollEndpoint,
    /// Cancelled when the node stops accepting: connections finish their request and close.
    pub(crate) stop: CancellationToken,
    pub(crate) admission: Arc<Admission>,
    builder: http1::Builder,
    /// Largest request head.
    pub(crate) max_head: usize,
    /// Time to send a request head; also how long a keep-alive connection may sit idle.
    pub(crate) head_timeout: Duration,
}

/// Serves a connection with hyper (HTTP/1.1 keep-alive, WebSocket upgrades), from its first
/// byte or, through [`Rewind`], from a request whose head was already read elsewhere.
pub(crate) async fn serve_hyper(
    io: Rewind<Counted>,
    peer: SocketAddr,
    ctx: &Arc<ConnCtx>,
    kill: CancellationToken,
) {
    let conn_kill = crate::ConnKill(kill.clone());
    let shared = ctx.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let router = shared.router.clone();
        let client = shared.admission.request_client(peer, req.headers());
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
    let conn = ctx
        .builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        // Stuck writing to a client that stopped reading: drop the connection.
        () = kill.cancelled() => Ok(()),
        () = ctx.stop.cancelled() => {
            // Finish the request in flight (SSE streams and held polls end when
            // drained), then close instead of keeping the connection alive.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        let metrics = &ctx.admission.metrics;
        if error.is_timeout() {
            metrics.refuse("header_timeout");
        } else if error.is_parse_too_large() {
            metrics.refuse("request_head_too_large");
        }
        tracing::debug!(%error, "http connection ended with an error");
    }
}
