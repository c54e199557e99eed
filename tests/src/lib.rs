//! A library of test helpers for Herald's end-to-end tests (`tests/tests/*.rs`).
//!
//! Everything here drives the real thing: [`Node`] spawns the `herald serve` binary built by
//! cargo as a child process on free local ports, and the clients speak to it over real
//! sockets — [`WsClient`] (WebSocket), [`SseClient`] (Server-Sent Events), [`poll`] /
//! [`get`] (HTTP), [`Publisher`] (gRPC) and [`metrics`] (the admin port). Every wait has a
//! timeout, so a broken server fails a test instead of hanging it.
//!
//! The binary must be built first: `cargo build -p herald` (`cargo test --workspace` builds
//! it too). Configuration goes to the child through its environment only; the test process's
//! own environment is never changed.

pub mod cluster;
pub mod harden;
pub mod http1;
pub mod observe;
pub mod resume;

use std::{
    fs::File,
    future::Future,
    io::Read,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    pin::Pin,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use herald_proto::v1::{PublishRequest, herald_client::HeraldClient};
use serde_json::Value;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message as WsMessage, protocol::CloseFrame},
};

pub use reqwest::StatusCode;
pub use tokio_tungstenite::tungstenite::Message;

/// How long any single expected event may take before a test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a node may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `fut` with a timeout; panics naming `what` when it runs out.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Re-evaluates `check` every 50 ms until it returns `Some`, for state that is only
/// observable by asking (metrics, process memory). Panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A unique channel name for one test (`prefix` plus process id and a counter).
pub fn channel(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Parses a decimal cursor; panics on anything else.
pub fn cursor(v: &str) -> u64 {
    v.parse()
        .unwrap_or_else(|_| panic!("cursor {v:?} is not a decimal u64"))
}

/// Percent-encodes a query parameter value.
pub fn encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `channel=a&channel=b[&since=C]`.
pub fn query(channels: &[&str], since: Option<&str>) -> String {
    let mut parts: Vec<String> = channels
        .iter()
        .map(|c| format!("channel={}", encode(c)))
        .collect();
    if let Some(s) = since {
        parts.push(format!("since={}", encode(s)));
    }
    parts.join("&")
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// Path of the `herald` binary next to the running test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/herald`), or `HERALD_BIN` when set
/// (a measurement run against a release build).
pub fn herald_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("HERALD_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable is not under target/<profile>/deps");
    let bin = profile_dir.join(format!("herald{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the herald binary is missing at {}: run `cargo build -p herald` first \
         (`cargo test --workspace` builds it too)",
        bin.display()
    );
    bin
}

/// A running `herald serve` child process on free local ports; killed when dropped.
///
/// Its stderr and stdout go to a temporary log file that is printed when the node is dropped
/// during a panic (a failing test), or on demand with [`Node::log`].
pub struct Node {
    child: Child,
    exited: Option<ExitStatus>,
    /// Client address (`/ws`, `/sse`, `/poll`).
    pub http: SocketAddr,
    /// gRPC control-plane address.
    pub grpc: SocketAddr,
    /// HTTP/JSON API address (`/api/v1/...`).
    pub api: SocketAddr,
    /// Admin address (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node with the default settings plus `extra_env` (e.g.
    /// `("HERALD_HISTORY_SIZE", "3")`) and waits until `/readyz` answers 200.
    pub async fn start(extra_env: &[(&str, &str)]) -> Node {
        let bin = herald_binary();
        let mut last_log = String::new();
        // Free ports can be taken by someone else between our probe and the child's bind:
        // try again with new ports when the child exits early.
        for _attempt in 0..3 {
            let log_dir = tempfile::tempdir().expect("temp dir for the node log");
            let log_path = log_dir.path().join("herald.log");
            let log = File::create(&log_path).expect("creating the node log");
            let (http, grpc, api, admin) = (free_port(), free_port(), free_port(), free_port());
            let mut cmd = Command::new(&bin);
            cmd.arg("serve")
                .env("HERALD_HTTP_ADDR", http.to_string())
                .env("HERALD_GRPC_ADDR", grpc.to_string())
                .env("HERALD_API_ADDR", api.to_string())
                .env("HERALD_ADMIN_ADDR", admin.to_string())
                .env("HERALD_NODE_ID", "e2e")
                .env("HERALD_LOG", "info,herald_edge=debug")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("cloning the log handle"))
                .stderr(log);
            for (k, v) in extra_env {
                cmd.env(k, v);
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
            let mut node = Node {
                child,
                exited: None,
                http,
                grpc,
                api,
                admin,
                log_path,
                _log_dir: log_dir,
            };
            if node.wait_ready().await {
                return node;
            }
            last_log = node.log();
            if !last_log.contains("cannot listen") {
                break;
            }
        }
        panic!("herald did not become ready within {READY_TIMEOUT:?}; its log:\n{last_log}");
    }

    /// Polls `/readyz` until 200; false if the child exits or the wait times out.
    async fn wait_ready(&mut self) -> bool {
        let client = http_client();
        let url = format!("http://{}/readyz", self.admin);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if self.try_exit_status().is_some() {
                return false;
            }
            if let Ok(r) = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status() == StatusCode::OK
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        false
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://<client address>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `http://<HTTP/JSON API address>`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// `http://<admin address>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// `ws://<client address>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// Everything the node logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Sends SIGTERM (via the `kill` command: no unsafe code in tests).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the node process in bytes (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading /proc/<pid>/status of the node");
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kb * 1024
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- herald node log (http {}, grpc {}, admin {}) -----\n{}\n----- end of node log -----",
                self.http,
                self.grpc,
                self.admin,
                self.log()
            );
        }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("building the HTTP client")
}

/// A plain HTTP GET of `url` with extra `headers`: status, headers and the body parsed as JSON
/// (`Value::Null` when the body is not JSON).
pub async fn get(
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    within(TIMEOUT, &format!("GET {url}"), async {
        let mut req = http_client().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, headers, json)
    })
    .await
}

/// A plain HTTP POST of `body` to `url` with extra `headers`: status and the body parsed as
/// JSON (`Value::Null` when it is not JSON).
pub async fn post(url: &str, headers: &[(&str, &str)], body: &str) -> (StatusCode, Value) {
    within(TIMEOUT, &format!("POST {url}"), async {
        let mut req = http_client()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("POST {url} body: {e}"));
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    })
    .await
}

/// `GET /poll?<query>`: status and JSON body. Waits up to [`TIMEOUT`] plus any `wait`.
pub async fn poll(node: &Node, query: &str) -> (StatusCode, Value) {
    let url = format!("{}/poll?{query}", node.http_url());
    let limit = TIMEOUT + Duration::from_secs(60);
    within(limit, &format!("GET {url}"), async {
        let resp = http_client()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
        let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "GET {url}: body is not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, json)
    })
    .await
}

/// Asserts a 4xx JSON error `{"error":{"code":code,"message":...}}` and returns the message.
pub fn assert_error(status: StatusCode, body: &Value, code: &str, context: &str) -> String {
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{context}: status (body {body})"
    );
    assert_eq!(body["error"]["code"], code, "{context}: body {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !message.is_empty(),
        "{context}: empty error message: {body}"
    );
    message.to_owned()
}

/// The admin `/metrics` text.
pub async fn metrics(node: &Node) -> String {
    let url = format!("{}/metrics", node.admin_url());
    let (status, text) = within(TIMEOUT, "GET /metrics", async {
        let r = http_client().get(&url).send().await.expect("GET /metrics");
        (r.status(), r.text().await.expect("metrics body"))
    })
    .await;
    assert_eq!(status, StatusCode::OK, "GET /metrics");
    text
}

/// The value of the sample `series` (exactly as exposed, e.g.
/// `herald_connections{protocol="websocket"}`) in a metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// The current value of `series` on the node; panics if the series is missing.
pub async fn metric_value(node: &Node, series: &str) -> f64 {
    let text = metrics(node).await;
    metric(&text, series).unwrap_or_else(|| panic!("metric {series} missing from:\n{text}"))
}

/// A message as clients see it, checked for shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    /// Channel name.
    pub channel: String,
    /// The cursor (`id`), as a number.
    pub id: u64,
    /// The JSON data.
    pub data: Value,
}

impl Msg {
    /// Parses `{"channel":..,"id":..,"data":..,"ts":..}` (extra `type` allowed).
    pub fn from_json(v: &Value) -> Msg {
        let channel = v["channel"]
            .as_str()
            .unwrap_or_else(|| panic!("message without channel: {v}"))
            .to_owned();
        let id = cursor(
            v["id"]
                .as_str()
                .unwrap_or_else(|| panic!("message id is not a string: {v}")),
        );
        assert!(v["ts"].is_u64(), "message ts is not a unix ms number: {v}");
        assert!(v.get("data").is_some(), "message without data: {v}");
        Msg {
            channel,
            id,
            data: v["data"].clone(),
        }
    }
}

/// What a publish produced: the expected message.
pub fn expected(channel: &str, cursor_str: &str, data: &Value) -> Msg {
    Msg {
        channel: channel.to_owned(),
        id: cursor(cursor_str),
        data: data.clone(),
    }
}

/// Asserts `got` equals `want` exactly (same messages, same order), and that the ids are
/// strictly increasing.
pub fn assert_messages(got: &[Msg], want: &[Msg], context: &str) {
    for w in got.windows(2) {
        assert!(
            w[0].id < w[1].id,
            "{context}: cursors not strictly increasing: {} then {}",
            w[0].id,
            w[1].id
        );
    }
    assert_eq!(got, want, "{context}: delivered messages differ");
}

/// A gRPC publisher (`herald.v1.Herald`).
pub struct Publisher {
    client: HeraldClient<tonic::transport::Channel>,
}

impl Publisher {
    /// Connects to the node's gRPC port.
    pub async fn connect(node: &Node) -> Publisher {
        let url = format!("http://{}", node.grpc);
        let client = within(TIMEOUT, "gRPC connect", HeraldClient::connect(url))
            .await
            .expect("connecting the gRPC client");
        Publisher { client }
    }

    /// Publishes raw `data` bytes; the cursor or the gRPC status.
    pub async fn try_publish(
        &mut self,
        channel: &str,
        data: impl Into<Bytes>,
    ) -> Result<String, tonic::Status> {
        let req = PublishRequest {
            channel: channel.to_owned(),
            data: data.into(),
            idempotency_key: String::new(),
        };
        within(TIMEOUT, "gRPC Publish", self.client.publish(req))
            .await
            .map(|r| r.into_inner().cursor)
    }

    /// Publishes `data` as JSON to `channel`; returns the cursor (a decimal string).
    pub async fn publish(&mut self, channel: &str, data: &Value) -> String {
        let cursor_str = self
            .try_publish(channel, data.to_string())
            .await
            .unwrap_or_else(|s| panic!("publish to {channel}: {s:?}"));
        cursor(&cursor_str);
        cursor_str
    }

    /// Publishes `data` to `channel` and returns the message clients should see.
    pub async fn publish_msg(&mut self, channel: &str, data: Value) -> Msg {
        let c = self.publish(channel, &data).await;
        expected(channel, &c, &data)
    }
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client of `/ws`.
pub struct WsClient {
    ws: Ws,
}

/// How a WebSocket ended, as the client saw it.
#[derive(Debug)]
pub enum WsEnd {
    /// A close frame with this code and reason.
    Close(u16, String),
    /// A close frame without a code.
    CloseNoCode,
    /// The stream ended without a close frame.
    Eof,
    /// A read error (e.g. connection reset).
    Error(String),
}

impl WsClient {
    /// Connects to `/ws?<query>` (`query` may be empty).
    pub async fn connect(node: &Node, query: &str) -> WsClient {
        let url = if query.is_empty() {
            node.ws_url()
        } else {
            format!("{}?{query}", node.ws_url())
        };
        WsClient::connect_url(&url).await
    }

    /// Connects to a full `ws://` URL.
    pub async fn connect_url(url: &str) -> WsClient {
        let (ws, resp) = within(
            TIMEOUT,
            "WebSocket handshake",
            tokio_tungstenite::connect_async(url),
        )
        .await
        .unwrap_or_else(|e| panic!("WebSocket connect {url}: {e}"));
        assert_eq!(resp.status(), 101, "WebSocket upgrade status");
        WsClient { ws }
    }

    /// Connects to a full `ws://` URL with extra handshake `headers`; a refused handshake
    /// gives its HTTP status and JSON body.
    pub async fn try_connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, (u16, Value)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url
            .into_client_request()
            .unwrap_or_else(|e| panic!("WebSocket request {url}: {e}"));
        for (k, v) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .unwrap_or_else(|e| panic!("header name {k}: {e}"));
            let value = tungstenite::http::HeaderValue::from_str(v)
                .unwrap_or_else(|e| panic!("header value {v}: {e}"));
            req.headers_mut().insert(name, value);
        }
        match within(
            TIMEOUT,
            "WebSocket handshake",
            tokio_tungstenite::connect_async(req),
        )
        .await
        {
            Ok((ws, _)) => Ok(WsClient { ws }),
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err((resp.status().as_u16(), body))
            }
            Err(e) => panic!("WebSocket connect {url}: {e}"),
        }
    }

    /// Connects to `/ws` over a socket whose kernel receive buffer is set to about
    /// `recv_buffer` bytes before connecting, so a client that stops reading pushes back on
    /// the server quickly.
    pub async fn connect_small_buffer(node: &Node, recv_buffer: usize) -> WsClient {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket
            .set_recv_buffer_size(recv_buffer)
            .expect("setting SO_RCVBUF");
        socket
            .connect_timeout(&node.http.into(), TIMEOUT)
            .expect("connecting to the node");
        socket.set_nonblocking(true).expect("nonblocking socket");
        let tcp = tokio::net::TcpStream::from_std(socket.into()).expect("tokio socket");
        let (ws, resp): (Ws, _) = within(
            TIMEOUT,
            "WebSocket handshake",
            tokio_tungstenite::client_async(node.ws_url(), MaybeTlsStream::Plain(tcp)),
        )
        .await
        .expect("WebSocket handshake");
        assert_eq!(resp.status(), 101, "WebSocket upgrade status");
        WsClient { ws }
    }

    /// Sends a text frame with `v` as JSON.
    pub async fn send_json(&mut self, v: Value) {
        self.send(WsMessage::text(v.to_string())).await;
    }

    /// Sends any frame.
    pub async fn send(&mut self, m: WsMessage) {
        within(TIMEOUT, "WebSocket send", self.ws.send(m))
            .await
            .expect("WebSocket send");
    }

    /// Like [`WsClient::send`], but returns the error instead of panicking.
    pub async fn try_send(&mut self, m: WsMessage) -> Result<(), tungstenite::Error> {
        within(TIMEOUT, "WebSocket send", self.ws.send(m)).await
    }

    /// The next text frame parsed as JSON, skipping pings and pongs. Panics on timeout, close
    /// or error.
    pub async fn next_json(&mut self) -> Value {
        within(TIMEOUT, "a WebSocket frame", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(WsMessage::Text(t))) => {
                        return serde_json::from_str(t.as_str()).unwrap_or_else(|e| {
                            panic!("server sent a non-JSON text frame ({e}): {t}")
                        });
                    }
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        })
        .await
    }

    /// The next text frame parsed as JSON, skipping pings and pongs; `None` once the
    /// connection ends (close frame, error or end of stream). Panics on timeout.
    pub async fn next_json_or_end(&mut self) -> Option<Value> {
        within(TIMEOUT, "a WebSocket frame", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(WsMessage::Text(t))) => {
                        return Some(serde_json::from_str(t.as_str()).unwrap_or_else(|e| {
                            panic!("server sent a non-JSON text frame ({e}): {t}")
                        }));
                    }
                    Some(Ok(WsMessage::Close(_)) | Err(_)) | None => return None,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await
    }

    /// The next frame, which must have `"type": ty`.
    pub async fn expect_type(&mut self, ty: &str) -> Value {
        let v = self.next_json().await;
        assert_eq!(v["type"], ty, "expected a {ty:?} frame, got {v}");
        v
    }

    /// The next `message` frame, checked and parsed.
    pub async fn next_msg(&mut self) -> Msg {
        Msg::from_json(&self.expect_type("message").await)
    }

    /// The next `n` message frames.
    pub async fn next_msgs(&mut self, n: usize) -> Vec<Msg> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_msg().await);
        }
        out
    }

    /// Sends a subscribe command and returns the `subscribed` frame.
    pub async fn subscribe(&mut self, channels: &[&str], since: Option<&str>) -> Value {
        let mut cmd = serde_json::json!({"op": "subscribe", "channels": channels});
        if let Some(s) = since {
            cmd["since"] = s.into();
        }
        self.send_json(cmd).await;
        let v = self.expect_type("subscribed").await;
        let mut names: Vec<&str> = v["channels"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        names.sort_unstable();
        let mut want = channels.to_vec();
        want.sort_unstable();
        assert_eq!(names, want, "subscribed frame names the channels: {v}");
        v
    }

    /// Sends `{"op":"ping"}` and expects `pong` as the next frame.
    pub async fn ping(&mut self) {
        self.send_json(serde_json::json!({"op": "ping"})).await;
        self.expect_type("pong").await;
    }

    /// Reads until the connection ends, skipping pings, pongs and (collected) text frames;
    /// returns the text frames seen and how it ended.
    pub async fn read_to_end(&mut self, limit: Duration) -> (Vec<Value>, WsEnd) {
        let mut texts = Vec::new();
        let end = within(limit, "the WebSocket to close", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(WsMessage::Text(t))) => {
                        texts.push(serde_json::from_str(t.as_str()).unwrap_or(Value::Null))
                    }
                    Some(Ok(WsMessage::Close(Some(CloseFrame { code, reason })))) => {
                        return WsEnd::Close(code.into(), reason.to_string());
                    }
                    Some(Ok(WsMessage::Close(None))) => return WsEnd::CloseNoCode,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return WsEnd::Error(e.to_string()),
                    None => return WsEnd::Eof,
                }
            }
        })
        .await;
        (texts, end)
    }

    /// Closes the connection politely (best effort).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    /// `event:` (`message` when absent).
    pub event: String,
    /// `id:`, if any.
    pub id: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

impl SseEvent {
    /// `data` parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
}

/// A streaming client of `/sse`, parsing the body into events.
pub struct SseClient {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: Vec<u8>,
    current: SseEvent,
    has_data: bool,
    /// The last `retry:` value, in milliseconds.
    pub retry: Option<u64>,
    /// Comment lines (heartbeats) seen.
    pub comments: usize,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The `id:` of the last dispatched event that had one: what a browser's `EventSource`
    /// sends back as `Last-Event-ID`.
    pub last_id: Option<String>,
}

impl SseClient {
    /// Opens `/sse?<query>` with extra request `headers` (e.g. `Last-Event-ID`); the response
    /// must be 200 `text/event-stream`.
    pub async fn connect(node: &Node, query: &str, headers: &[(&str, &str)]) -> SseClient {
        let url = format!("{}/sse?{query}", node.http_url());
        let resp = within(TIMEOUT, "the SSE response head", async {
            let mut req = http_client()
                .get(&url)
                .header("accept", "text/event-stream");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.send().await
        })
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status(), StatusCode::OK, "GET {url}");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");
        SseClient {
            headers: resp.headers().clone(),
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
            current: SseEvent::default(),
            has_data: false,
            retry: None,
            comments: 0,
            last_id: None,
        }
    }

    /// The next event, or `None` when the stream ended. Panics on timeout.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        within(TIMEOUT, "an SSE event", self.read_event()).await
    }

    async fn read_event(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8(line).expect("SSE stream is UTF-8");
                if let Some(ev) = self.line(&line) {
                    return Some(ev);
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => panic!("SSE stream failed: {e}"),
                None => return None,
            }
        }
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let mut ev = std::mem::take(&mut self.current);
            let dispatch = std::mem::take(&mut self.has_data) || !ev.event.is_empty();
            if !dispatch {
                return None;
            }
            if ev.event.is_empty() {
                ev.event = "message".into();
            }
            if ev.id.is_some() {
                self.last_id = ev.id.clone();
            }
            return Some(ev);
        }
        if line.starts_with(':') {
            self.comments += 1;
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.current.event = value.to_owned(),
            "id" => self.current.id = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "retry" => self.retry = value.parse().ok(),
            _ => {}
        }
        None
    }

    /// The next event, which must be named `name`.
    pub async fn expect_event(&mut self, name: &str) -> SseEvent {
        let ev = self
            .next_event()
            .await
            .unwrap_or_else(|| panic!("SSE stream ended while expecting {name:?}"));
        assert_eq!(ev.event, name, "expected SSE event {name:?}, got {ev:?}");
        ev
    }

    /// The next `message` event, checked (it carries an `id:`, the stream's position after
    /// it) and parsed.
    pub async fn next_msg(&mut self) -> Msg {
        let ev = self.expect_event("message").await;
        let m = Msg::from_json(&ev.json());
        assert!(
            ev.id.is_some(),
            "SSE message events carry an id line: {ev:?}"
        );
        m
    }

    /// The next `n` message events.
    pub async fn next_msgs(&mut self, n: usize) -> Vec<Msg> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_msg().await);
        }
        out
    }
}

/// Parses the `messages` of a poll reply.
pub fn poll_msgs(body: &Value) -> Vec<Msg> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("poll reply without messages: {body}"))
        .iter()
        .map(Msg::from_json)
        .collect()
}

/// The `cursor` of a poll reply.
pub fn poll_cursor(body: &Value) -> String {
    let c = body["cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("poll reply without a string cursor: {body}"))
        .to_owned();
    cursor(&c);
    c
}

/// A running `hook_backend` process (the scripted application backend of the hook tests,
/// `tests/src/bin/hook_backend.rs`): its HTTP and gRPC addresses; killed on drop.
pub struct HookBackend {
    /// The process (its stdin is piped: closing it stops the backend).
    pub child: std::process::Child,
    /// `host:port` of its HTTP hook endpoint (and `/calls`).
    pub http: String,
    /// `host:port` of its gRPC hook endpoint.
    pub grpc: String,
}

impl HookBackend {
    /// Starts `bin` (the test's `env!("CARGO_BIN_EXE_hook_backend")`) on free ports.
    pub fn start(bin: &str) -> HookBackend {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin)
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawning hook_backend");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("hook_backend's stdout"))
            .read_line(&mut line)
            .expect("reading hook_backend's address line");
        let addrs: Value = serde_json::from_str(&line).expect("hook_backend prints one JSON line");
        HookBackend {
            http: addrs["http"].as_str().expect("http address").to_owned(),
            grpc: addrs["grpc"].as_str().expect("grpc address").to_owned(),
            child,
        }
    }

    /// The calls it received, oldest first (`GET /calls`).
    pub async fn calls(&self) -> Vec<Value> {
        let (_, _, body) = get(&format!("http://{}/calls", self.http), &[]).await;
        body.as_array().cloned().unwrap_or_default()
    }

    /// Forgets the calls received so far (`DELETE /calls`).
    pub async fn forget(&self) {
        http_client()
            .delete(format!("http://{}/calls", self.http))
            .send()
            .await
            .expect("DELETE /calls");
    }
}

impl Drop for HookBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
