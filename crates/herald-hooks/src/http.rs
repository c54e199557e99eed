//! The HTTP/JSON hook contract: `POST {base}/{hook}` with a JSON body, a JSON answer read up
//! to [`MAX_ANSWER_BYTES`]. The wire structs here are the one definition of its field names
//! (docs/hooks.md lists them).

use std::{collections::BTreeMap, error::Error as _};

use http::header::{CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::{
    Hook,
    config::{HookConfig, HookConfigError, MAX_ANSWER_BYTES},
    {
        ClientContext, ConnectAnswer, ConnectCall, Decision, HookError, PublishAnswer, PublishCall,
        Refusal, RpcAnswer, RpcCall, SubscribeCall,
    },
};

/// One keep-alive client per [`crate::Hooks`], and the base URL without a trailing slash.
pub(crate) struct HttpHooks {
    client: reqwest::Client,
    base: String,
}

/// The fields every request body carries.
#[derive(Serialize)]
struct Common<'a> {
    client: &'a str,
    remote_addr: Option<String>,
    protocol: &'a str,
    user: Option<&'a str>,
    headers: BTreeMap<String, String>,
}

impl<'a> Common<'a> {
    fn new(ctx: &'a ClientContext, config: &HookConfig) -> Self {
        Self {
            client: &ctx.client,
            remote_addr: ctx.remote_addr.map(|a| a.to_string()),
            protocol: ctx.protocol,
            user: ctx.user.as_deref(),
            headers: ctx.wire_headers(|n| config.forwards(n)),
        }
    }
}

#[derive(Serialize)]
struct ConnectBody<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    token: Option<&'a str>,
    channels: &'a [String],
}

#[derive(Serialize)]
struct ChannelBody<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    channel: &'a str,
}

#[derive(Serialize)]
struct PublishBody<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    channel: &'a str,
    data: &'a RawValue,
}

#[derive(Serialize)]
struct RpcBody<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    method: &'a str,
    data: &'a RawValue,
}

/// `{"allow":true,...}` / `{"allow":false,"code":..,"reason":..}` / `{"published":true}`.
/// Unknown fields are ignored (room for later versions).
#[derive(Deserialize)]
struct DecisionWire {
    allow: Option<bool>,
    published: Option<bool>,
    user: Option<String>,
    info: Option<serde_json::Value>,
    data: Option<Box<RawValue>>,
    code: Option<String>,
    reason: Option<String>,
}

impl DecisionWire {
    fn refusal(&self) -> Refusal {
        Refusal::new(self.code.as_deref(), self.reason.as_deref())
    }

    /// `allow` must be present and, for hooks other than publish, `published` absent.
    fn allow(&self) -> Result<bool, HookError> {
        self.allow
            .ok_or_else(|| HookError::BadAnswer("the answer has no boolean \"allow\"".into()))
    }
}

/// `{"result":<JSON>}` or `{"error":{"code":..,"reason":..}}`.
#[derive(Deserialize)]
struct RpcWire {
    /// `Some` whenever the field is present, even `null` (a null result is a result).
    #[serde(default, deserialize_with = "present")]
    result: Option<Box<RawValue>>,
    error: Option<ErrorWire>,
}

#[derive(Deserialize)]
struct ErrorWire {
    code: Option<String>,
    reason: Option<String>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl HttpHooks {
    pub(crate) fn new(base: &http::Uri, config: &HookConfig) -> Result<Self, HookConfigError> {
        let client = reqwest::Client::builder()
            // Hooks go to the application's own backend: never through an environment proxy,
            // never following redirects (a 3xx is a bad answer).
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(config.max_concurrent)
            .build()
            .map_err(|e| HookConfigError::Client(e.to_string()))?;
        Ok(Self {
            client,
            base: base.to_string().trim_end_matches('/').to_owned(),
        })
    }

    pub(crate) async fn connect(
        &self,
        config: &HookConfig,
        req: &ConnectCall,
    ) -> Result<ConnectAnswer, HookError> {
        let body = ConnectBody {
            common: Common::new(&req.ctx, config),
            token: req.token.as_deref(),
            channels: &req.channels,
        };
        let w: DecisionWire = self.post(Hook::Connect, &req.ctx, &body).await?;
        if w.published.is_some() || w.data.is_some() {
            return Err(bad_field("connect", "published/data"));
        }
        Ok(if w.allow()? {
            ConnectAnswer::Allow {
                user: w.user,
                info: w.info.filter(|v| !v.is_null()),
            }
        } else {
            ConnectAnswer::Refuse(w.refusal())
        })
    }

    pub(crate) async fn subscribe(
        &self,
        config: &HookConfig,
        req: &SubscribeCall,
    ) -> Result<Decision, HookError> {
        let body = ChannelBody {
            common: Common::new(&req.ctx, config),
            channel: &req.channel,
        };
        let w: DecisionWire = self.post(Hook::Subscribe, &req.ctx, &body).await?;
        if w.published.is_some() || w.data.is_some() {
            return Err(bad_field("subscribe", "published/data"));
        }
        Ok(if w.allow()? {
            Decision::Allow
        } else {
            Decision::Refuse(w.refusal())
        })
    }

    pub(crate) async fn publish(
        &self,
        config: &HookConfig,
        req: &PublishCall,
    ) -> Result<PublishAnswer, HookError> {
        let body = PublishBody {
            common: Common::new(&req.ctx, config),
            channel: &req.channel,
            data: &req.data,
        };
        let w: DecisionWire = self.post(Hook::Publish, &req.ctx, &body).await?;
        match (w.published, w.allow) {
            (Some(true), None) if w.data.is_none() => Ok(PublishAnswer::Published),
            (Some(true), _) => Err(HookError::BadAnswer(
                "\"published\":true with \"allow\" or \"data\" is contradictory".into(),
            )),
            (_, Some(true)) => Ok(PublishAnswer::Allow { data: w.data }),
            (_, Some(false)) => Ok(PublishAnswer::Refuse(w.refusal())),
            (_, None) => Err(HookError::BadAnswer(
                "the answer has neither \"allow\" nor \"published\":true".into(),
            )),
        }
    }

    pub(crate) async fn rpc(
        &self,
        config: &HookConfig,
        req: &RpcCall,
    ) -> Result<RpcAnswer, HookError> {
        let body = RpcBody {
            common: Common::new(&req.ctx, config),
            method: &req.method,
            data: &req.data,
        };
        let w: RpcWire = self.post(Hook::Rpc, &req.ctx, &body).await?;
        match (w.result, w.error) {
            (Some(result), None) => Ok(RpcAnswer::Result(result)),
            (None, Some(e)) => Ok(RpcAnswer::Error(Refusal::new(
                e.code.as_deref(),
                e.reason.as_deref(),
            ))),
            (Some(_), Some(_)) => Err(HookError::BadAnswer(
                "an RPC answer has both \"result\" and \"error\"".into(),
            )),
            (None, None) => Err(HookError::BadAnswer(
                "an RPC answer has neither \"result\" nor \"error\"".into(),
            )),
        }
    }

    /// Sends one call and parses its answer; the caller bounds it with the timeout.
    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        hook: Hook,
        ctx: &ClientContext,
        body: &impl Serialize,
    ) -> Result<T, HookError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| HookError::BadAnswer(format!("encoding the request: {e}")))?;
        let mut req = self
            .client
            .post(format!("{}/{}", self.base, hook.as_str()))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if let Some(tp) = ctx.traceparent.as_deref()
            && let Ok(v) = HeaderValue::from_str(tp)
        {
            req = req.header("traceparent", v);
        }
        let mut resp = req.send().await.map_err(unavailable)?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(HookError::Unavailable(format!("HTTP {status}")));
        }
        if !status.is_success() {
            return Err(HookError::BadAnswer(format!("HTTP {status}")));
        }
        let too_large =
            || HookError::BadAnswer(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut answer = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unavailable)? {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_large());
            }
            answer.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&answer).map_err(|e| HookError::BadAnswer(format!("{e}")))
    }
}

fn bad_field(hook: &str, field: &str) -> HookError {
    HookError::BadAnswer(format!("a {hook} answer has no {field}"))
}

/// A transport failure, with its causes (reqwest's own message is only "error sending request").
fn unavailable(e: reqwest::Error) -> HookError {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    HookError::Unavailable(msg)
}
