//! A scripted application backend serving both hook contracts (HTTP/JSON and gRPC), for tests
//! of Herald's side (feature `testing`). The e2e crate's `hook_backend` binary runs it as a
//! process.
//!
//! It is written against the wire contracts only (JSON field names as literals, the proto's
//! server trait), not against this crate's client types, so a field misnamed in the client
//! fails the tests instead of agreeing with itself.
//!
//! # Script (the same over HTTP and gRPC)
//!
//! Keywords are looked for as substrings. **connect** looks in the token, every forwarded
//! header value and the user; **subscribe** and **publish** in the channel; **rpc** in the
//! method.
//!
//! | keyword | answer |
//! |---|---|
//! | `refuse` | refuse: code `forbidden_by_app` (rpc: `rpc_refused`), reason `refused by backend` |
//! | `slow` | sleeps [`SLOW`] (30 s), then allows |
//! | `garbage` | not an answer: HTTP 200 `not json{`; gRPC status `INTERNAL` |
//! | `huge` | an answer over 64 KiB (HTTP: 100 KiB JSON; gRPC: a refusal with a 100 KiB reason) |
//! | `status503` | HTTP 503; gRPC status `UNAVAILABLE` |
//!
//! Otherwise: **connect** with `as:NAME` in the token or a header allows as user `NAME` with
//! info `{"via":"backend"}`, else allows as the given user or `anon-backend`. **subscribe**
//! allows. **publish** to a channel containing `self` answers "published by the app"; data
//! that is an object with `"modify":true` is allowed with the same object plus
//! `"modified_by":"backend"`; else allowed unchanged. **rpc** `echo` answers its data as the
//! result, any other method the error `unknown_method`.
//!
//! Every call is recorded (the last [`MAX_CALLS`]) as a JSON object: `transport`, `hook`,
//! `client`, `user`, `protocol`, `remote_addr`, `headers`, `traceparent`, `token`,
//! `channels`, `channel`, `method`, `data`. [`Backend::calls`] returns them;
//! `GET /calls` on the HTTP port serves them as a JSON array, `DELETE /calls` clears them.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, to_bytes},
    extract::{Request, State},
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use herald_proto::proxy::v1::{
    self as pb, connect_response, herald_proxy_server::HeraldProxy,
    herald_proxy_server::HeraldProxyServer, publish_response, rpc_response, subscribe_response,
};
use serde_json::{Map, Value, json};
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::{Status, transport::server::TcpIncoming};

/// How many calls are remembered.
pub const MAX_CALLS: usize = 1000;

/// How long `slow` sleeps.
pub const SLOW: Duration = Duration::from_secs(30);

/// Size of the `huge` answers.
const HUGE: usize = 100 * 1024;

/// The calls received, oldest first.
type Calls = Arc<Mutex<VecDeque<Value>>>;

/// A running backend; its servers stop when it is dropped.
pub struct Backend {
    http: SocketAddr,
    grpc: SocketAddr,
    calls: Calls,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Backend {
    /// Binds both listeners (port 0 picks a free one) and serves them on the current runtime.
    pub async fn start(http: SocketAddr, grpc: SocketAddr) -> std::io::Result<Backend> {
        let http_listener = TcpListener::bind(http).await?;
        let grpc_listener = TcpListener::bind(grpc).await?;
        let calls: Calls = Arc::default();
        let http = http_listener.local_addr()?;
        let grpc = grpc_listener.local_addr()?;
        let router = Router::new()
            .route("/calls", get(list_calls).delete(clear_calls))
            .fallback(http_hook)
            .with_state(calls.clone());
        let http_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, router).await {
                eprintln!("hook backend: HTTP server failed: {e}");
            }
        });
        let service = HeraldProxyServer::new(GrpcBackend {
            calls: calls.clone(),
        });
        let grpc_task = tokio::spawn(async move {
            let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("hook backend: gRPC server failed: {e}");
            }
        });
        Ok(Backend {
            http,
            grpc,
            calls,
            tasks: vec![http_task, grpc_task],
        })
    }

    /// The HTTP listener's address (hooks at `http://{addr}/{hook}`, any base path).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The gRPC listener's address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// Every call received (the last [`MAX_CALLS`]), oldest first.
    pub fn calls(&self) -> Vec<Value> {
        snapshot(&self.calls)
    }
}

fn snapshot(calls: &Calls) -> Vec<Value> {
    calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}

fn record(calls: &Calls, call: &Call) {
    let mut c = calls.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() == MAX_CALLS {
        c.pop_front();
    }
    c.push_back(json!({
        "transport": call.transport,
        "hook": call.hook,
        "client": call.client,
        "user": call.user,
        "protocol": call.protocol,
        "remote_addr": call.remote_addr,
        "headers": call.headers,
        "traceparent": call.traceparent,
        "token": call.token,
        "channels": call.channels,
        "channel": call.channel,
        "method": call.method,
        "data": call.data,
    }));
}

/// A call as received, whatever the transport.
#[derive(Default)]
struct Call {
    transport: &'static str,
    hook: String,
    client: String,
    user: Option<String>,
    protocol: String,
    remote_addr: Option<String>,
    headers: Map<String, Value>,
    traceparent: Option<String>,
    token: Option<String>,
    channels: Vec<String>,
    channel: Option<String>,
    method: Option<String>,
    data: Option<Value>,
}

/// What the script answers.
enum Reply {
    /// Allow; connect: with this user and info; publish: with replaced data.
    Allow {
        user: Option<String>,
        info: Option<Value>,
        data: Option<Value>,
    },
    Refuse {
        code: &'static str,
        reason: String,
    },
    Published,
    RpcResult(Value),
    Garbage,
    Huge,
    Unavailable,
}

const ALLOW: Reply = Reply::Allow {
    user: None,
    info: None,
    data: None,
};

/// The script (module docs).
async fn decide(call: &Call) -> Reply {
    let mut haystacks: Vec<&str> = Vec::new();
    match call.hook.as_str() {
        "connect" => {
            haystacks.extend(call.token.as_deref());
            haystacks.extend(call.headers.values().filter_map(Value::as_str));
            haystacks.extend(call.user.as_deref());
        }
        "subscribe" | "publish" => haystacks.extend(call.channel.as_deref()),
        "rpc" => haystacks.extend(call.method.as_deref()),
        _ => {}
    }
    let has = |k: &str| haystacks.iter().any(|h| h.contains(k));
    if has("refuse") {
        let code = if call.hook == "rpc" {
            "rpc_refused"
        } else {
            "forbidden_by_app"
        };
        return Reply::Refuse {
            code,
            reason: "refused by backend".into(),
        };
    }
    if has("garbage") {
        return Reply::Garbage;
    }
    if has("huge") {
        return Reply::Huge;
    }
    if has("status503") {
        return Reply::Unavailable;
    }
    if has("slow") {
        tokio::time::sleep(SLOW).await;
        return ALLOW;
    }
    match call.hook.as_str() {
        "connect" => {
            let named = haystacks.iter().find_map(|h| {
                let rest = &h[h.find("as:")? + 3..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || "_-.@".contains(c)))
                    .unwrap_or(rest.len());
                (end > 0).then(|| rest[..end].to_owned())
            });
            match named {
                Some(user) => Reply::Allow {
                    user: Some(user),
                    info: Some(json!({"via": "backend"})),
                    data: None,
                },
                None => Reply::Allow {
                    user: Some(call.user.clone().unwrap_or_else(|| "anon-backend".into())),
                    info: None,
                    data: None,
                },
            }
        }
        "publish" => {
            if has("self") {
                return Reply::Published;
            }
            match &call.data {
                Some(Value::Object(o)) if o.get("modify") == Some(&Value::Bool(true)) => {
                    let mut o = o.clone();
                    o.insert("modified_by".into(), "backend".into());
                    Reply::Allow {
                        user: None,
                        info: None,
                        data: Some(Value::Object(o)),
                    }
                }
                _ => ALLOW,
            }
        }
        "rpc" => match call.method.as_deref() {
            Some("echo") => Reply::RpcResult(call.data.clone().unwrap_or(Value::Null)),
            other => Reply::Refuse {
                code: "unknown_method",
                reason: format!("unknown method {:?}", other.unwrap_or_default()),
            },
        },
        _ => ALLOW,
    }
}

// ---- HTTP ----------------------------------------------------------------------------------

async fn list_calls(State(calls): State<Calls>) -> Response {
    axum::Json(snapshot(&calls)).into_response()
}

async fn clear_calls(State(calls): State<Calls>) -> StatusCode {
    calls.lock().unwrap_or_else(|e| e.into_inner()).clear();
    StatusCode::NO_CONTENT
}

async fn http_hook(State(calls): State<Calls>, req: Request) -> Response {
    let hook = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    if req.method() != Method::POST || !["connect", "subscribe", "publish", "rpc"].contains(&&*hook)
    {
        return (StatusCode::NOT_FOUND, "no such hook").into_response();
    }
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Ok(body) = to_bytes(req.into_body(), 1 << 20).await else {
        return (StatusCode::BAD_REQUEST, "body too large").into_response();
    };
    let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not a JSON object").into_response();
    };
    let s = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_owned);
    let call = Call {
        transport: "http",
        client: s("client").unwrap_or_default(),
        user: s("user"),
        protocol: s("protocol").unwrap_or_default(),
        remote_addr: s("remote_addr"),
        headers: b
            .get("headers")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        traceparent,
        token: s("token"),
        channels: b
            .get("channels")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        channel: s("channel"),
        method: s("method"),
        data: b.get("data").cloned(),
        hook,
    };
    record(&calls, &call);
    let answer = match decide(&call).await {
        Reply::Allow { user, info, data } => {
            let mut o = Map::new();
            o.insert("allow".into(), true.into());
            if let Some(u) = user {
                o.insert("user".into(), u.into());
            }
            if let Some(i) = info {
                o.insert("info".into(), i);
            }
            if let Some(d) = data {
                o.insert("data".into(), d);
            }
            Value::Object(o)
        }
        Reply::Refuse { code, reason } if call.hook == "rpc" => {
            json!({"error": {"code": code, "reason": reason}})
        }
        Reply::Refuse { code, reason } => json!({"allow": false, "code": code, "reason": reason}),
        Reply::Published => json!({"published": true}),
        Reply::RpcResult(v) => json!({"result": v}),
        Reply::Garbage => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "not json{",
            )
                .into_response();
        }
        Reply::Huge => json!({"allow": true, "pad": "x".repeat(HUGE)}),
        Reply::Unavailable => {
            return (StatusCode::SERVICE_UNAVAILABLE, "backend down").into_response();
        }
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(answer.to_string()))
        .unwrap_or_default()
}

// ---- gRPC ----------------------------------------------------------------------------------

struct GrpcBackend {
    calls: Calls,
}

fn grpc_call<T>(
    hook: &str,
    req: &tonic::Request<T>,
    client: &str,
    remote_addr: &str,
    protocol: &str,
    user: &Option<String>,
    headers: &std::collections::HashMap<String, String>,
) -> Call {
    Call {
        transport: "grpc",
        hook: hook.into(),
        client: client.into(),
        user: user.clone(),
        protocol: protocol.into(),
        remote_addr: (!remote_addr.is_empty()).then(|| remote_addr.to_owned()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
        traceparent: req
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ..Call::default()
    }
}

/// JSON from the wire; not JSON is recorded as a string (the test then sees what came).
fn json_bytes(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into()))
}

fn refusal(code: &str, reason: String) -> pb::Refusal {
    pb::Refusal {
        code: code.into(),
        reason,
    }
}

/// The replies every hook shares; `Ok(None)`: the hook-specific ones.
fn common_reply(reply: &Reply) -> Result<Option<pb::Refusal>, Status> {
    match reply {
        Reply::Garbage => Err(Status::internal("garbage")),
        Reply::Unavailable => Err(Status::unavailable("backend down")),
        Reply::Huge => Ok(Some(refusal("huge", "x".repeat(HUGE)))),
        Reply::Refuse { code, reason } => Ok(Some(refusal(code, reason.clone()))),
        _ => Ok(None),
    }
}

#[tonic::async_trait]
impl HeraldProxy for GrpcBackend {
    async fn connect(
        &self,
        req: tonic::Request<pb::ConnectRequest>,
    ) -> Result<tonic::Response<pb::ConnectResponse>, Status> {
        let m = req.get_ref();
        let mut call = grpc_call(
            "connect",
            &req,
            &m.client,
            &m.remote_addr,
            &m.protocol,
            &m.user,
            &m.headers,
        );
        call.token = m.token.clone();
        call.channels = m.channels.clone();
        record(&self.calls, &call);
        let reply = decide(&call).await;
        let result = match common_reply(&reply)? {
            Some(r) => connect_response::Answer::Refuse(r),
            None => match reply {
                Reply::Allow { user, info, .. } => {
                    connect_response::Answer::Allow(pb::ConnectAllow {
                        user,
                        info: info.map(|i| i.to_string().into_bytes().into()),
                    })
                }
                _ => return Err(Status::internal("script: no connect answer")),
            },
        };
        Ok(tonic::Response::new(pb::ConnectResponse {
            answer: Some(result),
        }))
    }

    async fn subscribe(
        &self,
        req: tonic::Request<pb::SubscribeRequest>,
    ) -> Result<tonic::Response<pb::SubscribeResponse>, Status> {
        let m = req.get_ref();
        let mut call = grpc_call(
            "subscribe",
            &req,
            &m.client,
            &m.remote_addr,
            &m.protocol,
            &m.user,
            &m.headers,
        );
        call.channel = Some(m.channel.clone());
        record(&self.calls, &call);
        let reply = decide(&call).await;
        let result = match common_reply(&reply)? {
            Some(r) => subscribe_response::Answer::Refuse(r),
            None => subscribe_response::Answer::Allow(pb::Allow {}),
        };
        Ok(tonic::Response::new(pb::SubscribeResponse {
            answer: Some(result),
        }))
    }

    async fn publish(
        &self,
        req: tonic::Request<pb::PublishRequest>,
    ) -> Result<tonic::Response<pb::PublishResponse>, Status> {
        let m = req.get_ref();
        let mut call = grpc_call(
            "publish",
            &req,
            &m.client,
            &m.remote_addr,
            &m.protocol,
            &m.user,
            &m.headers,
        );
        call.channel = Some(m.channel.clone());
        call.data = Some(json_bytes(&m.data));
        record(&self.calls, &call);
        let reply = decide(&call).await;
        let result = match common_reply(&reply)? {
            Some(r) => publish_response::Answer::Refuse(r),
            None => match reply {
                Reply::Published => publish_response::Answer::Published(pb::Published {}),
                Reply::Allow { data, .. } => publish_response::Answer::Allow(pb::PublishAllow {
                    data: data.map(|d| d.to_string().into_bytes().into()),
                }),
                _ => return Err(Status::internal("script: no publish answer")),
            },
        };
        Ok(tonic::Response::new(pb::PublishResponse {
            answer: Some(result),
        }))
    }

    async fn rpc(
        &self,
        req: tonic::Request<pb::RpcRequest>,
    ) -> Result<tonic::Response<pb::RpcResponse>, Status> {
        let m = req.get_ref();
        let mut call = grpc_call(
            "rpc",
            &req,
            &m.client,
            &m.remote_addr,
            &m.protocol,
            &m.user,
            &m.headers,
        );
        call.method = Some(m.method.clone());
        call.data = Some(json_bytes(&m.data));
        record(&self.calls, &call);
        let reply = decide(&call).await;
        let result = match common_reply(&reply)? {
            Some(r) => rpc_response::Answer::Error(r),
            None => match reply {
                Reply::RpcResult(v) => {
                    rpc_response::Answer::Result(v.to_string().into_bytes().into())
                }
                _ => return Err(Status::internal("script: no rpc answer")),
            },
        };
        Ok(tonic::Response::new(pb::RpcResponse {
            answer: Some(result),
        }))
    }
}
