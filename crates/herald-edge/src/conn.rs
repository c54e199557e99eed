//! What every connection of the client port shares ([`ConnCtx`]), and serving one with hyper
//! ([`serve_hyper`]): used by the accept loop (`server`) and by the raw paths when a request
//! of another kind arrives on their connection (`rawpoll`).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{
    limits::{Admission, Counted, RATE_LIMITED, refusal_response},
    rawhttp::Rewind,
};

/// What every connection task of the client port shares.
pub(crate) struct ConnCtx {
    pub(crate) router: Router,
    /// `GET /poll` as the router answers it, for the raw poll path.
    pub(crate) poll: crate::PollEndpoint,
    /// Cancelled when the node stops accepting: connections finish their request and close.
    pub(crate) stop: CancellationToken,
    pub(crate) admission: Arc<Admission>,
    /// hyper's HTTP/1 settings (timer, head limits, keep-alive).
    pub(crate) builder: http1::Builder,
    /// Largest request head.
    pub(crate) max_head: usize,
    /// Time to send a request head; also how long a keep-alive connection may sit idle.
    pub(crate) head_timeout: Duration,
}

/// What hyper serves a connection over (the type a WebSocket upgrade downcasts to).
pub(crate) type HyperIo = TokioIo<Rewind<Counted>>;

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
