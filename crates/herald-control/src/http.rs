//! The HTTP/JSON API (`/api/v1/...`): the unary `herald.v1.Herald` methods for callers without
//! gRPC tooling (`curl`, webhooks, scripts).
//!
//! There is no second copy of any rule here. Each request becomes the protobuf request of
//! its method, carrying the `Authorization` header as gRPC metadata, and goes through the
//! same [`Herald`] method of [`HeraldService`] a gRPC call reaches: API keys, validation,
//! idempotency, defaults and errors are the gRPC service's. This module only translates:
//! JSON (or a query string) in, JSON out, and a [`tonic::Status`] to an HTTP status with a
//! JSON body `{"error":{"code":"invalid_argument","message":"..."}}` ([`http_status`]).
//!
//! [`ROUTES`] is the one list of endpoints: the router is built from it, and the tests hold
//! the OpenAPI document (`openapi.json` in this crate, served at [`OPENAPI_PATH`]) to it.

use std::time::{Duration, Instant};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{MethodFilter, MethodRouter},
};
use herald_proto::v1::{
    self, BroadcastRequest, ChannelsRequest, DisconnectRequest, DrainNodeRequest, HistoryRequest,
    PresenceRequest, RevokeTokenRequest, RevokeUserRequest, StatsRequest, UserActionResponse,
    UserChannelRequest, broadcast_result::Outcome, herald_server::Herald,
};
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, metadata::MetadataValue};

use crate::{HeraldService, HttpCall};

/// One endpoint of the API, named after the gRPC method it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `Publish`.
    Publish,
    /// `Broadcast`.
    Broadcast,
    /// `History`.
    History,
    /// `Channels`.
    Channels,
    /// `Stats`.
    Stats,
    /// `Presence`.
    Presence,
    /// `PresenceStats`.
    PresenceStats,
    /// `Connections`.
    Connections,
    /// `Disconnect`.
    Disconnect,
    /// `Subscribe`.
    Subscribe,
    /// `Unsubscribe`.
    Unsubscribe,
    /// `RevokeToken`.
    RevokeToken,
    /// `RevokeUser`.
    RevokeUser,
    /// `DrainNode`.
    Drain,
    /// The OpenAPI document itself (no API key needed, like gRPC reflection).
    OpenApi,
}

impl Endpoint {
    /// The gRPC method behind it (the `method` label of its metrics).
    pub fn method(self) -> &'static str {
        match self {
            Self::Publish => "Publish",
            Self::Broadcast => "Broadcast",
            Self::History => "History",
            Self::Channels => "Channels",
            Self::Stats => "Stats",
            Self::Presence => "Presence",
            Self::PresenceStats => "PresenceStats",
            Self::Connections => "Connections",
            Self::Disconnect => "Disconnect",
            Self::Subscribe => "Subscribe",
            Self::Unsubscribe => "Unsubscribe",
            Self::RevokeToken => "RevokeToken",
            Self::RevokeUser => "RevokeUser",
            Self::Drain => "DrainNode",
            Self::OpenApi => "OpenApi",
        }
    }
}

/// One path of the API and the HTTP methods it answers.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The path, e.g. `/api/v1/publish`.
    pub path: &'static str,
    /// The methods served (`GET` also answers `HEAD`). Others get 405.
    pub methods: &'static [&'static str],
    /// What it runs.
    pub endpoint: Endpoint,
}

/// Reads answer `GET` (query string) and `POST` (JSON body); actions only `POST`.
const READ: &[&str] = &["GET", "POST"];
const ACTION: &[&str] = &["POST"];

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// The OpenAPI 3 document of this API (`crates/herald-control/openapi.json`).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Every route the API serves; the router is built from this list and nothing else.
pub const ROUTES: &[Route] = &[
    route("/api/v1/publish", ACTION, Endpoint::Publish),
    route("/api/v1/broadcast", ACTION, Endpoint::Broadcast),
    route("/api/v1/history", READ, Endpoint::History),
    route("/api/v1/channels", READ, Endpoint::Channels),
    route("/api/v1/stats", READ, Endpoint::Stats),
    route("/api/v1/presence", READ, Endpoint::Presence),
    route("/api/v1/presence_stats", READ, Endpoint::PresenceStats),
    route("/api/v1/connections", READ, Endpoint::Connections),
    route("/api/v1/disconnect", ACTION, Endpoint::Disconnect),
    route("/api/v1/subscribe", ACTION, Endpoint::Subscribe),
    route("/api/v1/unsubscribe", ACTION, Endpoint::Unsubscribe),
    route("/api/v1/revoke_token", ACTION, Endpoint::RevokeToken),
    route("/api/v1/revoke_user", ACTION, Endpoint::RevokeUser),
    route("/api/v1/drain", ACTION, Endpoint::Drain),
    route(OPENAPI_PATH, &["GET"], Endpoint::OpenApi),
];

const fn route(path: &'static str, methods: &'static [&'static str], endpoint: Endpoint) -> Route {
    Route {
        path,
        methods,
        endpoint,
    }
}

/// Connections the HTTP/JSON API holds open at once; more are closed as they arrive.
pub const MAX_API_CONNECTIONS: usize = 4096;

/// How long a caller may take to send its request body once the headers are in.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP status of a gRPC status code (the error table of docs/http-api.md).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 "client closed request": the caller went away; it never sees the answer.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The lower-snake name of a gRPC code, as the `code` of a JSON error (`invalid_argument`).
pub fn code_string(code: Code) -> String {
    crate::code_name(code).to_ascii_lowercase()
}

/// `{"error":{"code":"...","message":"..."}}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The gRPC status code name, lower snake case.
    pub code: String,
    /// What was wrong, naming the field.
    pub message: String,
}

/// An error answer with a given HTTP status and gRPC code.
pub(crate) fn error(status: StatusCode, code: Code, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code_string(code),
            message: message.into(),
        },
    };
    let mut response = (status, Json(body)).into_response();
    if code == Code::Unauthenticated {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"herald\""),
        );
    }
    response
}

/// The answer to a status from the service.
pub(crate) fn status_response(s: &Status) -> Response {
    error(http_status(s.code()), s.code(), s.message())
}

/// Shared state of the router.
#[derive(Clone)]
struct Api {
    service: HeraldService,
}

/// Largest request body: the same bound as a gRPC message (twice the message limit, at
/// least 4 MiB), so a request that fits one transport fits the other.
pub fn body_limit(service: &HeraldService) -> usize {
    crate::decode_limit(&service.config)
}

/// The router of the API over `service`.
pub fn router(service: HeraldService) -> Router {
    let limit = body_limit(&service);
    let mut router = Router::new();
    for r in ROUTES {
        let endpoint = r.endpoint;
        let mut methods: MethodRouter<Api> = MethodRouter::new();
        for m in r.methods {
            let filter = match *m {
                "GET" => MethodFilter::GET,
                _ => MethodFilter::POST,
            };
            methods = methods.on(filter, move |State(api): State<Api>, req: Request| {
                handle(api, endpoint, req)
            });
        }
        let allow = r.methods.join(", ");
        let path = r.path;
        methods = methods.fallback(move |method: Method| async move {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                format!("{method} {path} is not served: use {allow}"),
            );
            if let Ok(v) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, v);
            }
            response
        });
        router = router.route(r.path, methods);
    }
    router
        .fallback(|method: Method, uri: Uri| async move {
            error(
                StatusCode::NOT_FOUND,
                Code::NotFound,
                format!(
                    "no endpoint {method} {}: the API lives under /api/v1/ (see {OPENAPI_PATH})",
                    uri.path()
                ),
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Api { service })
}

/// Serves the API on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    service: HeraldService,
    stop: CancellationToken,
    header_timeout: Duration,
) -> std::io::Result<()> {
    use hyper_util::{rt::TokioIo, service::TowerToHyperService};
    let app = router(service);
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A client has `header_timeout` to send its request head (slowloris), as on the client
    // port; the body has BODY_READ_TIMEOUT.
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_API_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::debug!(%error, "accept failed on the HTTP API port");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Past the bound, a new connection is closed at once: the API is for backends, not
        // for crowds, and every open connection holds a descriptor and a task.
        let Ok(permit) = open.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        // Nagle off, as for gRPC: a JSON answer must not wait for the caller's delayed ACK.
        let _ = stream.set_nodelay(true);
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    // Requests in flight finish (each is bounded by its own timeouts), then the port closes.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

/// Where a request's fields come from.
enum Input {
    /// `GET`: the query string.
    Query(Uri),
    /// `POST`: a JSON body (empty: every field unset).
    Body(Bytes),
}

impl Input {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, Refusal> {
        match self {
            Input::Query(uri) => Query::<T>::try_from_uri(uri)
                .map(|Query(v)| v)
                .map_err(|e| bad_request(e.body_text())),
            Input::Body(b) if b.iter().all(u8::is_ascii_whitespace) => {
                serde_json::from_str("{}").map_err(|e| bad_request(e.to_string()))
            }
            // Through axum's `Json`, whose errors name the field (`limit: invalid type`).
            Input::Body(b) => Json::<T>::from_bytes(b).map(|Json(v)| v).map_err(|e| {
                bad_request(format!(
                    "request body: {} (send one JSON object)",
                    e.body_text()
                ))
            }),
        }
    }
}

fn bad_request(message: String) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, Code::InvalidArgument, message)
}

/// Whether a `Content-Type` is JSON (`application/json`, `application/*+json`, any
/// parameters).
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A `tonic::Request` carrying the caller's API key and trace context, marked as an HTTP
/// call.
pub(crate) fn grpc_request<T>(message: T, headers: &HeaderMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for name in ["authorization", "traceparent"] {
        if let Some(v) = headers.get(name) {
            let value = MetadataValue::try_from(v.as_bytes())
                .unwrap_or_else(|_| MetadataValue::from_static("malformed"));
            request.metadata_mut().insert(name, value);
        }
    }
    request.extensions_mut().insert(HttpCall);
    request
}

/// Runs one request of the API exactly as the HTTP/JSON API does (key check, body rules,
/// parsing, the gRPC method, the error mapping): the admin console's calls come through here
/// with the operator's key put in `Authorization` from its session.
pub(crate) async fn call(service: HeraldService, endpoint: Endpoint, req: Request) -> Response {
    handle(Api { service }, endpoint, req).await
}

async fn handle(api: Api, endpoint: Endpoint, req: Request) -> Response {
    if endpoint == Endpoint::OpenApi {
        return ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response();
    }
    let start = Instant::now();
    let headers = req.headers().clone();
    // The key first, so that callers without one learn nothing else (the service checks it
    // again, with the same function).
    let checked = api
        .service
        .config
        .api_keys
        .check(grpc_request((), &headers).metadata());
    let answer = match checked {
        Err(s) => Err(refuse(http_status(s.code()), s.code(), s.message())),
        Ok(()) => match read(&api, req).await {
            Ok(input) => dispatch(&api.service, endpoint, &headers, &input).await,
            Err(refused) => Err(refused),
        },
    };
    match answer {
        Ok(response) => response,
        Err(refused) => {
            // Refused before the service ran (key, media type, size, JSON): counted here, as
            // the service counts what it answers.
            let r: Result<(), Status> = Err(Status::new(refused.code, ""));
            api.service.record_api(endpoint.method(), "http", start, &r);
            error(refused.status, refused.code, refused.message)
        }
    }
}

/// A request refused by this module before the service ran.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: Code,
    message: String,
}

fn refuse(status: StatusCode, code: Code, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

/// The request's fields: the query string of a `GET`, the JSON body of a `POST`.
async fn read(api: &Api, req: Request) -> Result<Input, Refusal> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return Ok(Input::Query(req.uri().clone()));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?").to_owned());
    if let Some(ct) = &content_type
        && !is_json(ct)
    {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidArgument,
            format!("Content-Type {ct:?}: send a JSON object with Content-Type: application/json"),
        ));
    }
    let limit = body_limit(&api.service);
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(req, &())).await {
        Err(_) => {
            return Err(refuse(
                StatusCode::REQUEST_TIMEOUT,
                Code::DeadlineExceeded,
                format!(
                    "the request body took longer than {}s to arrive",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            ));
        }
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::OutOfRange,
                format!(
                    "request body is larger than {limit} bytes, the most this API reads (message data is limited separately)"
                ),
            ));
        }
        Ok(Err(rejection)) => return Err(bad_request(rejection.body_text())),
        Ok(Ok(body)) => body,
    };
    if content_type.is_none() && !body.iter().all(u8::is_ascii_whitespace) {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidArgument,
            "no Content-Type: send a JSON object with Content-Type: application/json",
        ));
    }
    Ok(Input::Body(body))
}

/// Parses the input as the endpoint's request, runs the gRPC method, and answers with its
/// JSON or its status (`Err`: the input could not be parsed; the service did not run).
async fn dispatch(
    service: &HeraldService,
    endpoint: Endpoint,
    headers: &HeaderMap,
    input: &Input,
) -> Result<Response, Refusal> {
    fn reply<R, J: Serialize>(
        result: Result<tonic::Response<R>, Status>,
        map: impl FnOnce(R) -> Result<J, Status>,
    ) -> Result<Response, Refusal> {
        Ok(match result.and_then(|r| map(r.into_inner())) {
            Ok(j) => Json(j).into_response(),
            Err(s) => status_response(&s),
        })
    }
    let h = headers;
    match endpoint {
        Endpoint::Publish => {
            let b: PublishBody = input.parse()?;
            let r = service
                .publish(grpc_request(
                    v1::PublishRequest {
                        channel: b.channel,
                        data: raw_bytes(b.data),
                        idempotency_key: b.idempotency_key,
                    },
                    h,
                ))
                .await;
            reply(r, |r| {
                Ok(PublishReply {
                    cursor: r.cursor,
                    duplicate: r.duplicate,
                })
            })
        }
        Endpoint::Broadcast => {
            let b: BroadcastBody = input.parse()?;
            let r = service
                .broadcast(grpc_request(
                    BroadcastRequest {
                        channels: b.channels,
                        data: raw_bytes(b.data),
                        idempotency_key: b.idempotency_key,
                    },
                    h,
                ))
                .await;
            reply(r, |r| {
                Ok(BroadcastReply {
                    results: r
                        .results
                        .into_iter()
                        .map(|x| {
                            let (cursor, error) = match x.outcome {
                                Some(Outcome::Cursor(c)) => (Some(c), None),
                                Some(Outcome::Error(e)) => (None, Some(e)),
                                None => (None, None),
                            };
                            BroadcastItem {
                                channel: x.channel,
                                cursor,
                                error,
                                duplicate: x.duplicate,
                            }
                        })
                        .collect(),
                })
            })
        }
        Endpoint::History => {
            let b: HistoryBody = input.parse()?;
            let r = service
                .history(grpc_request(
                    HistoryRequest {
                        channel: b.channel,
                        since: b.since,
                        limit: b.limit,
                    },
                    h,
                ))
                .await;
            reply(r, |r| {
                let messages = r
                    .messages
                    .into_iter()
                    .map(|m| {
                        Ok(HistoryItem {
                            cursor: m.cursor,
                            data: json_of(m.data.to_vec())?,
                            ts: m.ts,
                        })
                    })
                    .collect::<Result<Vec<_>, Status>>()?;
                Ok(HistoryReply {
                    messages,
                    gap: r.gap,
                    cursor: r.cursor,
                })
            })
        }
        Endpoint::Channels => {
            let b: ChannelsBody = input.parse()?;
            let r = service
                .channels(grpc_request(
                    ChannelsRequest {
                        pattern: b.pattern,
                        limit: b.limit,
                    },
                    h,
                ))
                .await;
            reply(r, |r| {
                Ok(ChannelsReply {
                    channels: r
                        .channels
                        .into_iter()
                        .map(|c| ChannelItem {
                            channel: c.channel,
                            subscribers: c.subscribers,
                        })
                        .collect(),
                    truncated: r.truncated,
                    missing_nodes: r.missing_nodes,
                })
            })
        }
        Endpoint::Stats => {
            let Empty {} = input.parse()?;
            let r = service.stats(grpc_request(StatsRequest {}, h)).await;
            reply(r, |r| Ok(StatsReply::from(r)))
        }
        Endpoint::Presence => {
            let b: ChannelBody = input.parse()?;
            let r = service
                .presence(grpc_request(PresenceRequest { channel: b.channel }, h))
                .await;
            reply(r, presence_reply)
        }
        Endpoint::Connections => {
            let b: UserBody = input.parse()?;
            let r = service
                .connections(grpc_request(v1::ConnectionsRequest { user: b.user }, h))
                .await;
            reply(r, presence_reply)
        }
        Endpoint::PresenceStats => {
            let b: ChannelBody = input.parse()?;
            let r = service
                .presence_stats(grpc_request(PresenceRequest { channel: b.channel }, h))
                .await;
            reply(r, |r| {
                Ok(PresenceStatsReply {
                    clients: r.clients,
                    users: r.users,
                    missing_nodes: r.missing_nodes,
                })
            })
        }
        Endpoint::Disconnect => {
            let b: DisconnectBody = input.parse()?;
            let r = service
                .disconnect(grpc_request(
                    DisconnectRequest {
                        user: b.user,
                        reconnect: b.reconnect,
                        reason: b.reason,
                    },
                    h,
                ))
                .await;
            reply(r, user_action)
        }
        Endpoint::Subscribe | Endpoint::Unsubscribe => {
            let b: UserChannelBody = input.parse()?;
            let req = grpc_request(
                UserChannelRequest {
                    user: b.user,
                    channel: b.channel,
                },
                h,
            );
            let r = if endpoint == Endpoint::Subscribe {
                service.subscribe(req).await
            } else {
                service.unsubscribe(req).await
            };
            reply(r, user_action)
        }
        Endpoint::RevokeToken => {
            let b: RevokeTokenBody = input.parse()?;
            let r = service
                .revoke_token(grpc_request(
                    RevokeTokenRequest {
                        jti: b.jti,
                        until: b.until,
                    },
                    h,
                ))
                .await;
            reply(r, user_action)
        }
        Endpoint::RevokeUser => {
            let b: RevokeUserBody = input.parse()?;
            let r = service
                .revoke_user(grpc_request(
                    RevokeUserRequest {
                        user: b.user,
                        issued_before: b.issued_before,
                        until: b.until,
                    },
                    h,
                ))
                .await;
            reply(r, user_action)
        }
        Endpoint::Drain => {
            let b: DrainBody = input.parse()?;
            let r = service
                .drain_node(grpc_request(
                    DrainNodeRequest {
                        node_id: b.node_id,
                        rate: b.rate,
                    },
                    h,
                ))
                .await;
            reply(r, |r| {
                Ok(DrainReply {
                    connections: r.connections,
                })
            })
        }
        Endpoint::OpenApi => Ok(OPENAPI_JSON.into_response()),
    }
}

fn user_action(r: UserActionResponse) -> Result<UserActionReply, Status> {
    Ok(UserActionReply {
        connections: r.connections,
        missing_nodes: r.missing_nodes,
    })
}

/// Stored JSON (validated when published) as a raw JSON value, byte for byte.
fn json_of(bytes: Vec<u8>) -> Result<Box<RawValue>, Status> {
    String::from_utf8(bytes)
        .map_err(|e| e.to_string())
        .and_then(|s| RawValue::from_string(s).map_err(|e| e.to_string()))
        .map_err(|e| Status::internal(format!("stored data is not JSON: {e}")))
}

/// The bytes of a raw JSON value (empty when the field was absent: the service then says
/// what `data` must be, as it does for an empty gRPC `data`).
fn raw_bytes(data: Option<Box<RawValue>>) -> bytes::Bytes {
    data.map(|d| bytes::Bytes::from(String::from(Box::<str>::from(d))))
        .unwrap_or_default()
}

/// `data` as it was sent, including `null` (which `Option` alone would take for absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

// Request bodies: the proto messages' fields, snake_case; unset means the proto3 default.

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct PublishBody {
    channel: String,
    #[serde(deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    idempotency_key: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct BroadcastBody {
    channels: Vec<String>,
    #[serde(deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    idempotency_key: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct HistoryBody {
    channel: String,
    since: String,
    limit: u32,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ChannelsBody {
    pattern: String,
    limit: u32,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ChannelBody {
    channel: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct UserBody {
    user: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct DisconnectBody {
    user: String,
    reconnect: bool,
    reason: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct UserChannelBody {
    user: String,
    channel: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RevokeTokenBody {
    jti: String,
    until: u64,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RevokeUserBody {
    user: String,
    issued_before: u64,
    until: u64,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct DrainBody {
    node_id: String,
    rate: u32,
}

// Answers: the proto messages' fields; `data` and presence `info` as JSON values.

#[derive(Serialize)]
struct PublishReply {
    cursor: String,
    duplicate: bool,
}

#[derive(Serialize)]
struct BroadcastReply {
    results: Vec<BroadcastItem>,
}

#[derive(Serialize)]
struct BroadcastItem {
    channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    duplicate: bool,
}

#[derive(Serialize)]
struct HistoryReply {
    messages: Vec<HistoryItem>,
    gap: bool,
    cursor: String,
}

#[derive(Serialize)]
struct HistoryItem {
    cursor: String,
    data: Box<RawValue>,
    ts: u64,
}

#[derive(Serialize)]
struct ChannelsReply {
    channels: Vec<ChannelItem>,
    truncated: bool,
    missing_nodes: Vec<String>,
}

#[derive(Serialize)]
struct ChannelItem {
    channel: String,
    subscribers: u64,
}

/// `Stats` as JSON (also each event of the console's stats stream).
#[derive(Serialize)]
pub(crate) struct StatsReply {
    nodes: Vec<NodeItem>,
    totals: TotalsItem,
}

#[derive(Serialize, Default)]
struct Counts {
    websocket: u64,
    sse: u64,
    longpoll: u64,
    poll: u64,
}

impl From<Option<v1::ProtocolCounts>> for Counts {
    fn from(c: Option<v1::ProtocolCounts>) -> Self {
        let c = c.unwrap_or_default();
        Self {
            websocket: c.websocket,
            sse: c.sse,
            longpoll: c.longpoll,
            poll: c.poll,
        }
    }
}

#[derive(Serialize)]
struct NodeItem {
    node_id: String,
    version: String,
    uptime_seconds: u64,
    connections: Counts,
    subscriptions: u64,
    channels: u64,
    draining: bool,
}

#[derive(Serialize)]
struct TotalsItem {
    nodes: u64,
    connections: Counts,
    subscriptions: u64,
    node_channels: u64,
}

impl From<v1::StatsResponse> for StatsReply {
    fn from(r: v1::StatsResponse) -> Self {
        let t = r.totals.unwrap_or_default();
        Self {
            nodes: r
                .nodes
                .into_iter()
                .map(|n| NodeItem {
                    node_id: n.node_id,
                    version: n.version,
                    uptime_seconds: n.uptime_seconds,
                    connections: n.connections.into(),
                    subscriptions: n.subscriptions,
                    channels: n.channels,
                    draining: n.draining,
                })
                .collect(),
            totals: TotalsItem {
                nodes: t.nodes,
                connections: t.connections.into(),
                subscriptions: t.subscriptions,
                node_channels: t.node_channels,
            },
        }
    }
}

/// The JSON form of a `PresenceResponse` (`Presence` and `Connections`).
fn presence_reply(r: v1::PresenceResponse) -> Result<PresenceReply, Status> {
    let clients = r
        .clients
        .into_iter()
        .map(|c| {
            Ok(PresenceItem {
                client: c.client,
                user: c.user,
                info: match c.info.as_str() {
                    "" => None,
                    _ => Some(json_of(c.info.into_bytes())?),
                },
                node: c.node,
                protocol: c.protocol,
                since_unix_ms: c.since_unix_ms,
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(PresenceReply {
        clients,
        missing_nodes: r.missing_nodes,
    })
}

#[derive(Serialize)]
struct PresenceReply {
    clients: Vec<PresenceItem>,
    missing_nodes: Vec<String>,
}

#[derive(Serialize)]
struct PresenceItem {
    client: String,
    user: String,
    /// The token's `info` claim; `null` when it had none.
    info: Option<Box<RawValue>>,
    node: String,
    protocol: String,
    since_unix_ms: u64,
}

#[derive(Serialize)]
struct PresenceStatsReply {
    clients: u64,
    users: u64,
    missing_nodes: Vec<String>,
}

#[derive(Serialize)]
struct UserActionReply {
    connections: u64,
    missing_nodes: Vec<String>,
}

#[derive(Serialize)]
struct DrainReply {
    connections: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The router is built from [`ROUTES`] alone; the OpenAPI document must name exactly
    /// those paths and methods, and every operation must document its errors.
    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let mut documented = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                documented.insert((path.clone(), method.to_ascii_uppercase()));
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.contains_key("200"), "{method} {path}: no 200");
                if path != OPENAPI_PATH {
                    for code in ["400", "401"] {
                        assert!(responses.contains_key(code), "{method} {path}: no {code}");
                    }
                }
                if method == "post" {
                    for code in ["413", "415"] {
                        assert!(responses.contains_key(code), "{method} {path}: no {code}");
                    }
                }
            }
        }
        let served: BTreeSet<_> = ROUTES
            .iter()
            .flat_map(|r| {
                r.methods
                    .iter()
                    .map(|m| (r.path.to_owned(), (*m).to_owned()))
            })
            .collect();
        assert_eq!(served, documented);
        // Every `$ref` resolves.
        let text = OPENAPI_JSON;
        for part in text.split("\"$ref\": \"#/").skip(1) {
            let target = part.split('"').next().unwrap();
            let mut node = &doc;
            for key in target.split('/') {
                node = &node[key];
            }
            assert!(!node.is_null(), "dangling $ref {target}");
        }
    }

    #[test]
    fn routes_name_distinct_paths_and_known_methods() {
        let paths: BTreeSet<_> = ROUTES.iter().map(|r| r.path).collect();
        assert_eq!(paths.len(), ROUTES.len());
        for r in ROUTES {
            assert!(r.path.starts_with("/api/v1/"), "{}", r.path);
            for m in r.methods {
                assert!(["GET", "POST"].contains(m), "{} {m}", r.path);
            }
        }
        let methods: BTreeSet<_> = ROUTES
            .iter()
            .filter(|r| r.endpoint != Endpoint::OpenApi)
            .map(|r| r.endpoint.method())
            .collect();
        let exported: BTreeSet<_> = herald_telemetry::HTTP_API_METHODS.into_iter().collect();
        assert_eq!(
            methods, exported,
            "metrics are pre-registered for every method"
        );
    }

    #[test]
    fn status_codes_map_to_http() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::CONFLICT);
        assert_eq!(
            http_status(Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        assert_eq!(code_string(Code::FailedPrecondition), "failed_precondition");
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            "json",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }
}
