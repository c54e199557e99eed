//! Static assets on the client port: the browser SDK at `/herald.js` (embedded at build time
//! from `clients/js/herald.js`), a demo page at `/` and a chat example at `/chat`; and the switch that refuses
//! transports listed in [`crate::EdgeConfig::disabled_transports`].

use std::sync::Arc;

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::EdgeInner;

/// The SDK, as shipped in `clients/js/herald.js`.
const HERALD_JS: &str = include_str!("../../../clients/js/herald.js");
/// The demo page, `clients/js/demo.html`.
const DEMO_HTML: &str = include_str!("../../../clients/js/demo.html");
/// The chat example, `clients/js/chat.html`: client publishes (docs/sdk.md).
const CHAT_HTML: &str = include_str!("../../../clients/js/chat.html");

pub(crate) fn routes() -> Router<Arc<EdgeInner>> {
    Router::new()
        .route("/herald.js", get(sdk))
        .route("/", get(demo))
        .route("/demo", get(demo))
        .route("/chat", get(chat))
}

async fn sdk() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        HERALD_JS,
    )
        .into_response()
}

async fn demo() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DEMO_HTML,
    )
        .into_response()
}

async fn chat() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CHAT_HTML,
    )
        .into_response()
}

/// Which transport a request uses, by path (and `wait` for `/poll`).
fn transport_of(path: &str, query: Option<&str>) -> Option<&'static str> {
    match path {
        "/ws" => Some("websocket"),
        "/sse" => Some("sse"),
        "/poll" => {
            let long = query.unwrap_or("").split('&').any(|kv| {
                kv.strip_prefix("wait=")
                    .is_some_and(|v| !v.is_empty() && v != "0")
            });
            Some(if long { "longpoll" } else { "poll" })
        }
        _ => None,
    }
}

/// Middleware: answers 403 JSON for a transport this node has disabled.
pub(crate) async fn refuse_disabled(
    State(edge): State<Arc<EdgeInner>>,
    req: Request,
    next: Next,
) -> Response {
    match disabled(&edge, req.uri()) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

/// The 403 JSON answer to a request for a transport this node has disabled, if it is one.
pub(crate) fn disabled(edge: &EdgeInner, uri: &axum::http::Uri) -> Option<Response> {
    let disabled = &edge.config.disabled_transports;
    if !disabled.is_empty()
        && let Some(t) = transport_of(uri.path(), uri.query())
        && disabled.iter().any(|d| d == t)
    {
        let body = serde_json::json!({"error": {"code": "transport_disabled",
            "message": format!("the {t} transport is disabled on this node")}});
        return Some(
            (
                StatusCode::FORBIDDEN,
                [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
                axum::Json(body),
            )
                .into_response(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::transport_of;

    #[test]
    fn transports_by_path() {
        assert_eq!(transport_of("/ws", None), Some("websocket"));
        assert_eq!(transport_of("/sse", Some("channel=a")), Some("sse"));
        assert_eq!(
            transport_of("/poll", Some("channel=a&wait=0")),
            Some("poll")
        );
        assert_eq!(
            transport_of("/poll", Some("wait=25&channel=a")),
            Some("longpoll")
        );
        assert_eq!(transport_of("/herald.js", None), None);
    }
}
