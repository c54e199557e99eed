//! Client subcommands: gRPC ones share [`GrpcArgs`] (endpoint, API key, CA); `subscribe`
//! talks to the HTTP port through `herald-client`.

pub(crate) mod publish;
pub(crate) mod query;
pub(crate) mod subscribe;
pub(crate) mod token;
pub(crate) mod users;

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use herald_proto::v1::herald_client::HeraldClient;
use tonic::{
    Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

/// Where the gRPC API is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub(crate) struct GrpcArgs {
    /// gRPC endpoint of any node (https:// for TLS).
    #[arg(
        long,
        env = "HERALD_GRPC_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) grpc: String,
    /// API key, sent as `authorization: Bearer <key>`.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// PEM CA certificate to trust for an https:// endpoint.
    #[arg(long, env = "HERALD_GRPC_CA")]
    pub(crate) grpc_ca: Option<PathBuf>,
}

/// Adds the API key to every call.
#[derive(Clone)]
pub(crate) struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A connected gRPC client.
pub(crate) type Client = HeraldClient<InterceptedService<Channel, Auth>>;

impl GrpcArgs {
    /// Connects to the endpoint.
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        let mut endpoint = Endpoint::from_shared(self.grpc.clone())
            .with_context(|| format!("--grpc {}: not a URL", self.grpc))?
            .connect_timeout(std::time::Duration::from_secs(5));
        if self.grpc.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.grpc_ca {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("reading --grpc-ca {}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.grpc))?;
        let auth = match &self.api_key {
            Some(k) => Some(
                format!("Bearer {k}")
                    .parse()
                    .context("--api-key holds characters not allowed in a header")?,
            ),
            None => None,
        };
        Ok(HeraldClient::with_interceptor(channel, Auth(auth)).max_decoding_message_size(64 << 20))
    }
}

/// A failed call as a readable error: `INVALID_ARGUMENT: channel "a b": ...`.
pub(crate) fn status(s: Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", herald_control::code_name(s.code()), s.message())
}
