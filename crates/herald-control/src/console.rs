//! The admin console (`/console` on the admin port): a single page, embedded in the binary,
//! behind a login with an API key, whose JSON calls are the HTTP/JSON API's own requests.
//!
//! There is no second copy of any rule here. `/console/api/<name>` is `/api/v1/<name>` of
//! [`crate::http::ROUTES`], run by [`crate::http::call`] with the operator's key (held in the
//! server-side session, never sent back to the page) put in `Authorization`: API keys,
//! validation, limits and errors are the gRPC service's, and the answers are the API's JSON,
//! errors included. This module adds only what a browser needs: the login (itself a `Stats`
//! call with the key), the session cookie, the CSRF guard, the live stats stream (`WatchStats`
//! as server-sent events) and a log line per action naming the key's fingerprint.
//!
//! Guard, in this order, on every `/console/api/...` request: a cross-site `Origin` or
//! `Sec-Fetch-Site` is refused (403); a `POST` without `X-Herald-Console: 1` is refused (403);
//! then a request without a live session is refused (401) — except the login itself, and
//! every request when the console is open (`HERALD_CONSOLE=insecure` without any key).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{FromRequest, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{any, get},
};
use futures_util::StreamExt;
use herald_core::BrokerState;
use herald_proto::v1::{StatsRequest, WatchStatsRequest, herald_server::Herald};
use tonic::Code;

use crate::{
    HeraldService,
    http::{self, Endpoint},
};

/// The page, its script and its style (`crates/herald-control/console/`).
const INDEX_HTML: &str = include_str!("../console/index.html");
const CONSOLE_JS: &str = include_str!("../console/console.js");
const CONSOLE_CSS: &str = include_str!("../console/console.css");

/// The session cookie's name.
pub const COOKIE: &str = "herald_console";
/// The header every state-changing console request must carry (value `1`): a cross-site form
/// or `fetch` cannot set it without a CORS preflight, which the console never answers.
pub const CSRF_HEADER: &str = "x-herald-console";
/// Most sessions held; the least recently used one is dropped to make room.
pub const MAX_SESSIONS: usize = 1000;
/// A session unused this long ends.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after login, used or not.
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// A refused login is answered after this delay (slows guessing; keys are long anyway).
const LOGIN_REFUSED_DELAY: Duration = Duration::from_millis(300);
/// Interval of the stats stream (`WatchStats.interval_ms`): one sparkline point per second.
pub const STATS_INTERVAL_MS: u32 = 1000;

/// `HERALD_CONSOLE`: whether the node serves the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsoleMode {
    /// Served behind the login when API keys are configured; not served without keys.
    #[default]
    Auto,
    /// Never served.
    Off,
    /// Like `Auto`, and also served without keys: then open to anyone reaching the admin
    /// port, with no login (logged as a warning at start-up).
    Insecure,
}

/// How the console is reached, once it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleAccess {
    /// Log in with one of the API keys.
    Login,
    /// No key is configured and `HERALD_CONSOLE=insecure`: no login.
    Open,
}

impl ConsoleMode {
    /// Whether and how the console is served with these keys (`None`: not served).
    pub fn access(self, keys: &crate::ApiKeys) -> Option<ConsoleAccess> {
        match (self, keys.is_open()) {
            (Self::Off, _) | (Self::Auto, true) => None,
            (Self::Auto | Self::Insecure, false) => Some(ConsoleAccess::Login),
            (Self::Insecure, true) => Some(ConsoleAccess::Open),
        }
    }

    /// Logs what the mode means for this node (loudly when the console is open or disabled
    /// for want of a key); returns [`ConsoleMode::access`].
    pub fn announce(
        self,
        keys: &crate::ApiKeys,
        admin: std::net::SocketAddr,
    ) -> Option<ConsoleAccess> {
        let access = self.access(keys);
        match (self, access) {
            (Self::Off, _) => tracing::info!("admin console off (HERALD_CONSOLE=off)"),
            (_, None) => tracing::warn!(
                "CONSOLE DISABLED: no API key configured, and the console logs in with one; set HERALD_API_KEYS (or HERALD_CONSOLE=insecure to serve it without login, HERALD_CONSOLE=off to silence this)"
            ),
            (_, Some(ConsoleAccess::Open)) => tracing::warn!(
                %admin,
                "CONSOLE OPEN WITHOUT LOGIN (HERALD_CONSOLE=insecure and no API key): anyone who reaches the admin port can publish, disconnect users and drain nodes from http://{admin}/console/"
            ),
            (_, Some(ConsoleAccess::Login)) => {
                tracing::info!(%admin, "admin console at /console/ (login with an API key)")
            }
        }
        access
    }
}

/// What the console router needs beside the service.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// Login, or open.
    pub access: ConsoleAccess,
    /// This node's id (the page marks it among the cluster's nodes).
    pub node_id: String,
    /// The client port (`HERALD_HTTP_ADDR`): the page's live tail subscribes there, on the
    /// host name it was loaded from.
    pub client_port: u16,
}

/// One logged-in operator.
#[derive(Clone)]
struct Session {
    /// The API key it logged in with: put in `Authorization` of each call, never sent out.
    key: String,
    /// The key's fingerprint for logs and the page (first 12 hex digits of its SHA-256).
    key_id: String,
    /// Login time, for [`SESSION_MAX`].
    created: Instant,
    /// Last use, for [`SESSION_IDLE`] and the least-recently-used eviction.
    last: Instant,
}

/// Sessions by id (64 hex digits of 256 random bits), at most [`MAX_SESSIONS`].
#[derive(Default)]
struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create(&self, key: String, key_id: String) -> Result<String, ()> {
        let mut id = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
            .map_err(|_| ())?;
        let id = hex(&id);
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| alive(s, now));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                key,
                key_id,
                created: now,
                last: now,
            },
        );
        Ok(id)
    }

    /// The live session of this id, touched.
    fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.lock();
        match map.get_mut(id) {
            Some(s) if alive(s, now) => {
                s.last = now;
                Some(s.clone())
            }
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Whether the id still names a live session (not touched: the stats stream asks).
    fn is_live(&self, id: &str) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|s| alive(s, Instant::now()))
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.duration_since(s.last) < SESSION_IDLE && now.duration_since(s.created) < SESSION_MAX
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key's fingerprint: the first 12 hex digits of its SHA-256
/// (`printf %s "$KEY" | sha256sum | cut -c1-12`).
pub fn key_id(key: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    hex(&d.as_ref()[..6])
}

/// Shared state of the router.
#[derive(Clone)]
struct Console {
    service: HeraldService,
    options: Arc<ConsoleOptions>,
    sessions: Arc<Sessions>,
}

/// The console's routes (`/console`, `/console/`, its assets and `/console/api/...`), to be
/// merged into the admin router.
pub fn router(service: HeraldService, options: ConsoleOptions) -> Router {
    let state = Console {
        service,
        options: Arc::new(options),
        sessions: Arc::default(),
    };
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route(
            "/console/",
            get(|| asset("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/console/console.js",
            get(|| asset("text/javascript; charset=utf-8", CONSOLE_JS)),
        )
        .route(
            "/console/console.css",
            get(|| asset("text/css; charset=utf-8", CONSOLE_CSS)),
        )
        .route("/console/api", any(api))
        .route("/console/api/{*rest}", any(api))
        .with_state(state)
}

/// A static file of the page: public code, the same in every binary, no data.
async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// What the guard found out about a request.
struct Caller {
    /// The session id (`None` when the console is open).
    session: Option<String>,
    /// The key to call with (`None` when the console is open).
    key: Option<String>,
    /// Who, for the logs: the key's fingerprint, or `open`.
    key_id: String,
}

fn refuse(status: StatusCode, code: Code, message: &str) -> Response {
    http::error(status, code, message)
}

/// A request the guard refuses: its status, code and message (made a [`Response`] by
/// [`Refused::response`]).
#[derive(Debug, Clone, Copy)]
struct Refused(StatusCode, Code, &'static str);

impl Refused {
    fn response(self) -> Response {
        refuse(self.0, self.1, self.2)
    }
}

/// Refuses requests from another site (`Origin` whose host is not `Host`, or
/// `Sec-Fetch-Site` other than `same-origin` / `none`) and state changes without the CSRF
/// header.
fn csrf(method: &Method, headers: &HeaderMap) -> Result<(), Refused> {
    let cross = || {
        Refused(
            StatusCode::FORBIDDEN,
            Code::PermissionDenied,
            "cross-site request refused: the console answers only its own page",
        )
    };
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Err(cross());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin.to_str().ok().and_then(|o| {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
        });
        if host.is_none() || origin_host != host {
            return Err(cross());
        }
    }
    if method != Method::GET
        && method != Method::HEAD
        && headers.get(CSRF_HEADER).map(HeaderValue::as_bytes) != Some(b"1")
    {
        return Err(Refused(
            StatusCode::FORBIDDEN,
            Code::PermissionDenied,
            "missing header X-Herald-Console: 1 (every console request that changes something carries it)",
        ));
    }
    Ok(())
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

fn authenticate(c: &Console, headers: &HeaderMap) -> Result<Caller, Refused> {
    if c.options.access == ConsoleAccess::Open {
        return Ok(Caller {
            session: None,
            key: None,
            key_id: "open".to_owned(),
        });
    }
    let unauthenticated = || {
        Refused(
            StatusCode::UNAUTHORIZED,
            Code::Unauthenticated,
            "not logged in: log in to the console with an API key",
        )
    };
    let id = cookie_value(headers).ok_or_else(unauthenticated)?;
    let s = c.sessions.get(&id).ok_or_else(unauthenticated)?;
    Ok(Caller {
        session: Some(id),
        key: Some(s.key),
        key_id: s.key_id,
    })
}

/// `Set-Cookie` for a session id (empty with `Max-Age=0`: delete). `Secure` when the page
/// came over https through a proxy (`X-Forwarded-Proto: https`) or its `Origin` is https.
fn set_cookie(id: &str, max_age: u64, headers: &HeaderMap) -> HeaderValue {
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
        || headers
            .get(header::ORIGIN)
            .is_some_and(|v| v.as_bytes().starts_with(b"https://"));
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("herald_console=; Max-Age=0"))
}

async fn api(State(c): State<Console>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let name = path
        .strip_prefix("/console/api")
        .unwrap_or("")
        .trim_start_matches('/')
        .to_owned();
    let (method, headers) = (req.method().clone(), req.headers().clone());
    if let Err(refused) = csrf(&method, &headers) {
        tracing::warn!(%method, path, "console: request refused (cross-site or no CSRF header)");
        return refused.response();
    }
    if name == "login" {
        return if method == Method::POST {
            login(&c, req).await
        } else {
            not_allowed(&method, &path, "POST")
        };
    }
    let caller = match authenticate(&c, &headers) {
        Ok(caller) => caller,
        Err(refused) => return refused.response(),
    };
    match name.as_str() {
        "logout" if method == Method::POST => {
            if let Some(id) = &caller.session {
                c.sessions.remove(id);
            }
            tracing::info!(key = %caller.key_id, "console logout");
            let mut r = axum::Json(serde_json::json!({"ok": true})).into_response();
            r.headers_mut()
                .insert(header::SET_COOKIE, set_cookie("", 0, &headers));
            r
        }
        "session" if method == Method::GET => axum::Json(serde_json::json!({
            "key_id": caller.key_id,
            "open": c.options.access == ConsoleAccess::Open,
            "node_id": c.options.node_id,
            "client_port": c.options.client_port,
            "max_message_bytes": c.service.config.max_message_bytes,
        }))
        .into_response(),
        "stats/stream" if method == Method::GET => stats_stream(c, caller).await,
        _ => forward(c, caller, &name, req).await,
    }
}

fn not_allowed(method: &Method, path: &str, allow: &'static str) -> Response {
    let mut r = refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unimplemented,
        &format!("{method} {path} is not served: use {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    key: String,
}

/// `POST /console/api/login {"key": "..."}`: a `Stats` call with the key decides; on success a
/// session and its cookie.
async fn login(c: &Console, req: Request) -> Response {
    let headers = req.headers().clone();
    let body = match Bytes::from_request(req, &()).await {
        Ok(b) if b.len() <= 4096 => b,
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                "send {\"key\": \"<API key>\"} (at most 4 KiB)",
            );
        }
    };
    let Ok(LoginBody { key }) = serde_json::from_slice::<LoginBody>(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            "send {\"key\": \"<API key>\"}",
        );
    };
    let key = key.trim().to_owned();
    if c.options.access == ConsoleAccess::Open {
        return axum::Json(serde_json::json!({"key_id": "open", "open": true})).into_response();
    }
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}")) {
        h.insert(header::AUTHORIZATION, v);
    }
    let id = key_id(&key);
    // The service's own check, through one of its methods: a key it refuses is refused here.
    if let Err(status) = c
        .service
        .stats(http::grpc_request(StatsRequest {}, &h))
        .await
    {
        tracing::warn!(key = %id, code = ?status.code(), "console login refused");
        tokio::time::sleep(LOGIN_REFUSED_DELAY).await;
        return http::status_response(&status);
    }
    let Ok(session) = c.sessions.create(key, id.clone()) else {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Internal,
            "no randomness for a session id",
        );
    };
    tracing::info!(key = %id, "console login");
    let mut r = axum::Json(serde_json::json!({"key_id": id, "open": false})).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&session, SESSION_MAX.as_secs(), &headers),
    );
    r
}

/// The caller's `Authorization`, as the HTTP/JSON API expects it.
fn authorization(caller: &Caller) -> Option<HeaderValue> {
    caller
        .key
        .as_ref()
        .and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok())
}

/// `/console/api/<name>`: the API's `/api/v1/<name>` with the session's key. Actions (`POST`)
/// are logged with the key's fingerprint, what they named and how they ended.
async fn forward(c: Console, caller: Caller, name: &str, req: Request) -> Response {
    let api_path = format!("/api/v1/{name}");
    let Some(route) = http::ROUTES
        .iter()
        .find(|r| r.path == api_path && r.endpoint != Endpoint::OpenApi)
    else {
        return refuse(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            &format!("no console endpoint /console/api/{name}"),
        );
    };
    let method = req.method().clone();
    if !route.methods.iter().any(|m| *m == method.as_str()) {
        let allow = if route.methods.contains(&"GET") {
            "GET, POST"
        } else {
            "POST"
        };
        return not_allowed(&method, req.uri().path(), allow);
    }
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(header::AUTHORIZATION);
    if let Some(v) = authorization(&caller) {
        parts.headers.insert(header::AUTHORIZATION, v);
    }
    if method == Method::GET {
        return http::call(c.service, route.endpoint, Request::from_parts(parts, body)).await;
    }
    // An action: read the body (the API's own limit) to log what it names, then hand it on.
    let limit = http::body_limit(&c.service);
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::OutOfRange,
                &format!(
                    "request body is larger than {limit} bytes, the most this API reads (message data is limited separately)"
                ),
            );
        }
    };
    let target = target_of(&bytes);
    let method_name = route.endpoint.method();
    let response = http::call(
        c.service,
        route.endpoint,
        Request::from_parts(parts, Body::from(bytes)),
    )
    .await;
    tracing::info!(
        key = %caller.key_id,
        action = method_name,
        target,
        status = response.status().as_u16(),
        "console action"
    );
    response
}

/// What an action names, for its log line: the `channel`, `channels`, `user`, `node_id` and
/// `jti` fields of its body (never `data`).
fn target_of(body: &[u8]) -> String {
    let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    let mut parts = Vec::new();
    for k in ["node_id", "user", "channel", "jti"] {
        if let Some(v) = o.get(k).and_then(|v| v.as_str()) {
            let v: String = v.chars().take(128).collect();
            parts.push(format!("{k}={v:?}"));
        }
    }
    if let Some(serde_json::Value::Array(a)) = o.get("channels") {
        parts.push(format!("channels={}", a.len()));
    }
    parts.join(" ")
}

/// `GET /console/api/stats/stream`: `WatchStats` (every [`STATS_INTERVAL_MS`] and on change)
/// as server-sent events, each with this node's own counters (deliveries, publishes, broker
/// link) for the sparklines. Ends when the session ends or the page goes away.
async fn stats_stream(c: Console, caller: Caller) -> Response {
    let mut h = HeaderMap::new();
    if let Some(v) = authorization(&caller) {
        h.insert(header::AUTHORIZATION, v);
    }
    let request = http::grpc_request(
        WatchStatsRequest {
            interval_ms: STATS_INTERVAL_MS,
        },
        &h,
    );
    let stream = match c.service.watch_stats(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return http::status_response(&s),
    };
    let (service, sessions, session) = (c.service.clone(), c.sessions.clone(), caller.session);
    let node_id = c.options.node_id.clone();
    let events = stream
        .take_while(move |_| {
            let live = session.as_ref().is_none_or(|id| sessions.is_live(id));
            async move { live }
        })
        .map(move |item| {
            let event = match item {
                Ok(stats) => {
                    let m = &service.metrics;
                    let delivered = |p: &str| m.messages_delivered.with_label_values(&[p]).get();
                    let broker = *service.broker.state().borrow() == BrokerState::Connected;
                    let ts = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0);
                    let body = serde_json::json!({
                        "stats": http::StatsReply::from(stats),
                        "local": {
                            "node_id": node_id,
                            "broker": if broker { "connected" } else { "disconnected" },
                            "broker_kind": service.broker.kind(),
                            "published": m.messages_published.get(),
                            "delivered": {
                                "websocket": delivered("websocket"),
                                "sse": delivered("sse"),
                                "longpoll": delivered("longpoll"),
                                "poll": delivered("poll"),
                            },
                            "ts": ts,
                        },
                    });
                    format!("event: stats\ndata: {body}\n\n")
                }
                Err(s) => format!(
                    "event: failed\ndata: {}\n\n",
                    serde_json::json!({"error": {"code": http::code_string(s.code()), "message": s.message()}})
                ),
            };
            Ok::<_, std::convert::Infallible>(Bytes::from(event))
        });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_need_keys_unless_insecure() {
        let none = crate::ApiKeys::default();
        let keys = crate::ApiKeys::new(["0123456789abcdef".to_owned()]);
        assert_eq!(ConsoleMode::Auto.access(&none), None);
        assert_eq!(ConsoleMode::Auto.access(&keys), Some(ConsoleAccess::Login));
        assert_eq!(ConsoleMode::Off.access(&keys), None);
        assert_eq!(
            ConsoleMode::Insecure.access(&none),
            Some(ConsoleAccess::Open)
        );
        assert_eq!(
            ConsoleMode::Insecure.access(&keys),
            Some(ConsoleAccess::Login)
        );
    }

    #[test]
    fn csrf_rules() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        let host = ("host", "127.0.0.1:9464");
        assert!(csrf(&Method::GET, &h(&[host])).is_ok());
        assert!(
            csrf(
                &Method::GET,
                &h(&[host, ("origin", "http://127.0.0.1:9464")])
            )
            .is_ok()
        );
        assert!(csrf(&Method::GET, &h(&[host, ("origin", "http://evil.example")])).is_err());
        assert!(csrf(&Method::GET, &h(&[host, ("sec-fetch-site", "cross-site")])).is_err());
        assert!(csrf(&Method::GET, &h(&[host, ("sec-fetch-site", "same-site")])).is_err());
        assert!(csrf(&Method::POST, &h(&[host])).is_err());
        assert!(csrf(&Method::POST, &h(&[host, (CSRF_HEADER, "1")])).is_ok());
        assert!(
            csrf(
                &Method::POST,
                &h(&[host, (CSRF_HEADER, "1"), ("origin", "null")])
            )
            .is_err()
        );
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = Sessions::default();
        let id = s.create("k".into(), key_id("k")).unwrap();
        assert_eq!(id.len(), 64);
        assert!(s.get(&id).is_some());
        assert!(s.get("nope").is_none());
        s.remove(&id);
        assert!(s.get(&id).is_none());
        let ids: Vec<_> = (0..MAX_SESSIONS + 5)
            .map(|_| s.create("k".into(), "x".into()).unwrap())
            .collect();
        assert_eq!(s.lock().len(), MAX_SESSIONS);
        assert!(s.get(ids.last().unwrap()).is_some());
        let old = Instant::now() - SESSION_IDLE - Duration::from_secs(1);
        if let Some(x) = s.lock().get_mut(ids.last().unwrap()) {
            x.last = old;
        }
        assert!(s.get(ids.last().unwrap()).is_none(), "idle sessions end");
    }

    #[test]
    fn key_ids_are_short_sha256_prefixes() {
        // printf %s abc | sha256sum
        assert_eq!(key_id("abc"), "ba7816bf8f01");
    }

    #[test]
    fn cookies_are_strict_and_http_only() {
        let c = set_cookie("ab", 60, &HeaderMap::new());
        let c = c.to_str().unwrap();
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/console")
        );
        assert!(!c.contains("Secure"));
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(
            set_cookie("ab", 60, &h)
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
    }

    #[test]
    fn action_targets_never_include_data() {
        assert_eq!(
            target_of(br#"{"channel":"a","data":{"secret":1}}"#),
            "channel=\"a\""
        );
        assert_eq!(target_of(br#"{"node_id":"n2"}"#), "node_id=\"n2\"");
        assert_eq!(target_of(b"not json"), "");
    }
}
