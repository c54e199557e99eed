//! The gRPC hook contract (`herald.proxy.v1.HeraldProxy`, proto/herald/proxy/v1/proxy.proto):
//! one lazily connected tonic channel shared by every call, the same answers as HTTP.

use std::collections::HashMap;

use herald_proto::proxy::v1::{
    self as pb, connect_response, herald_proxy_client::HeraldProxyClient, publish_response,
    rpc_response, subscribe_response,
};
use serde_json::value::RawValue;
use tonic::{
    Code, Status,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

use crate::{
    config::{HookConfig, HookConfigError, MAX_ANSWER_BYTES},
    {
        ClientContext, ConnectAnswer, ConnectCall, Decision, HookError, PublishAnswer, PublishCall,
        Refusal, RpcAnswer, RpcCall, SubscribeCall,
    },
};

/// The shared channel (HTTP/2, multiplexed; tonic reconnects it by itself).
pub(crate) struct GrpcHooks {
    client: HeraldProxyClient<Channel>,
}

/// The fields every request carries.
struct Common {
    client: String,
    remote_addr: String,
    protocol: String,
    user: Option<String>,
    headers: HashMap<String, String>,
}

impl Common {
    fn new(ctx: &ClientContext, config: &HookConfig) -> Self {
        Self {
            client: ctx.client.clone(),
            remote_addr: ctx.remote_addr.map(|a| a.to_string()).unwrap_or_default(),
            protocol: ctx.protocol.to_owned(),
            user: ctx.user.clone(),
            headers: ctx
                .wire_headers(|n| config.forwards(n))
                .into_iter()
                .collect(),
        }
    }
}

impl GrpcHooks {
    pub(crate) fn new(uri: &http::Uri, config: &HookConfig) -> Result<Self, HookConfigError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(HookConfigError::NoRuntime);
        }
        let channel = Endpoint::from(uri.clone())
            .connect_timeout(config.timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let client = HeraldProxyClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES);
        Ok(Self { client })
    }

    fn request<T>(&self, config: &HookConfig, ctx: &ClientContext, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(config.timeout);
        if let Some(tp) = ctx.traceparent.as_deref()
            && let Ok(v) = MetadataValue::try_from(tp)
        {
            req.metadata_mut().insert("traceparent", v);
        }
        req
    }

    pub(crate) async fn connect(
        &self,
        config: &HookConfig,
        req: &ConnectCall,
    ) -> Result<ConnectAnswer, HookError> {
        let c = Common::new(&req.ctx, config);
        let msg = pb::ConnectRequest {
            client: c.client,
            remote_addr: c.remote_addr,
            protocol: c.protocol,
            user: c.user,
            headers: c.headers,
            token: req.token.clone(),
            channels: req.channels.clone(),
        };
        let answer = self
            .client
            .clone()
            .connect(self.request(config, &req.ctx, msg))
            .await
            .map_err(status)?
            .into_inner();
        match answer.answer {
            Some(connect_response::Answer::Allow(a)) => {
                let info = match a.info {
                    Some(bytes) => Some(
                        serde_json::from_slice::<serde_json::Value>(&bytes)
                            .map_err(|e| HookError::BadAnswer(format!("info is not JSON: {e}")))?,
                    ),
                    None => None,
                };
                Ok(ConnectAnswer::Allow {
                    user: a.user,
                    info: info.filter(|v| !v.is_null()),
                })
            }
            Some(connect_response::Answer::Refuse(r)) => Ok(ConnectAnswer::Refuse(refusal(r))),
            None => Err(no_result()),
        }
    }

    pub(crate) async fn subscribe(
        &self,
        config: &HookConfig,
        req: &SubscribeCall,
    ) -> Result<Decision, HookError> {
        let c = Common::new(&req.ctx, config);
        let msg = pb::SubscribeRequest {
            client: c.client,
            remote_addr: c.remote_addr,
            protocol: c.protocol,
            user: c.user,
            headers: c.headers,
            channel: req.channel.clone(),
        };
        let answer = self
            .client
            .clone()
            .subscribe(self.request(config, &req.ctx, msg))
            .await
            .map_err(status)?
            .into_inner();
        match answer.answer {
            Some(subscribe_response::Answer::Allow(_)) => Ok(Decision::Allow),
            Some(subscribe_response::Answer::Refuse(r)) => Ok(Decision::Refuse(refusal(r))),
            None => Err(no_result()),
        }
    }

    pub(crate) async fn publish(
        &self,
        config: &HookConfig,
        req: &PublishCall,
    ) -> Result<PublishAnswer, HookError> {
        let c = Common::new(&req.ctx, config);
        let msg = pb::PublishRequest {
            client: c.client,
            remote_addr: c.remote_addr,
            protocol: c.protocol,
            user: c.user,
            headers: c.headers,
            channel: req.channel.clone(),
            data: req.data.get().to_owned().into_bytes().into(),
        };
        let answer = self
            .client
            .clone()
            .publish(self.request(config, &req.ctx, msg))
            .await
            .map_err(status)?
            .into_inner();
        match answer.answer {
            Some(publish_response::Answer::Allow(a)) => Ok(PublishAnswer::Allow {
                data: a.data.map(|d| json(&d, "data")).transpose()?,
            }),
            Some(publish_response::Answer::Published(_)) => Ok(PublishAnswer::Published),
            Some(publish_response::Answer::Refuse(r)) => Ok(PublishAnswer::Refuse(refusal(r))),
            None => Err(no_result()),
        }
    }

    pub(crate) async fn rpc(
        &self,
        config: &HookConfig,
        req: &RpcCall,
    ) -> Result<RpcAnswer, HookError> {
        let c = Common::new(&req.ctx, config);
        let msg = pb::RpcRequest {
            client: c.client,
            remote_addr: c.remote_addr,
            protocol: c.protocol,
            user: c.user,
            headers: c.headers,
            method: req.method.clone(),
            data: req.data.get().to_owned().into_bytes().into(),
        };
        let answer = self
            .client
            .clone()
            .rpc(self.request(config, &req.ctx, msg))
            .await
            .map_err(status)?
            .into_inner();
        match answer.answer {
            Some(rpc_response::Answer::Result(d)) => Ok(RpcAnswer::Result(json(&d, "result")?)),
            Some(rpc_response::Answer::Error(r)) => Ok(RpcAnswer::Error(refusal(r))),
            None => Err(no_result()),
        }
    }
}

fn refusal(r: pb::Refusal) -> Refusal {
    Refusal::new(Some(&r.code), Some(&r.reason))
}

fn no_result() -> HookError {
    HookError::BadAnswer("the answer sets no branch of its oneof".into())
}

/// JSON bytes from the backend, checked.
fn json(bytes: &[u8], field: &str) -> Result<Box<RawValue>, HookError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| HookError::BadAnswer(format!("{field} is not UTF-8")))?;
    RawValue::from_string(text.to_owned())
        .map_err(|e| HookError::BadAnswer(format!("{field} is not JSON: {e}")))
}

/// A status is never an answer: unavailable-like ones mean the backend is down, the rest
/// that it answered wrongly.
fn status(s: Status) -> HookError {
    let msg = format!("gRPC {:?}: {}", s.code(), s.message());
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded => HookError::Unavailable(msg),
        _ => HookError::BadAnswer(msg),
    }
}
