//! Connection settings (flags, environment, config file) and the gRPC client.
//!
//! Precedence: a flag, then its environment variable, then the config file
//! (`--config`/`KANCTL_CONFIG`, else `$XDG_CONFIG_HOME/kanctl/config.yaml` or
//! `~/.config/kanctl/config.yaml` when it exists), then the default. The token comes from
//! `KANCTL_TOKEN` or a file (`--token-file`, `tokenFile`), never from a command-line argument.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
pub use kanister_profile::error_chain;
use kanister_proto::coordinator::v1::coordinator_service_client::CoordinatorServiceClient;
use serde::Deserialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use zeroize::Zeroizing;

use super::{Error, Result};

/// The default address of the coordinator's API.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:7434";

/// How to reach the coordinator.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct ConnectionArgs {
    /// Address of the coordinator's API (`http://host:port`, or `https://` with TLS)
    /// [default: http://127.0.0.1:7434].
    #[arg(long, env = "KANCTL_COORDINATOR", global = true)]
    pub coordinator: Option<String>,
    /// File holding the coordinator's token (or set KANCTL_TOKEN).
    #[arg(long, env = "KANCTL_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the coordinator's certificate (https only).
    #[arg(long, env = "KANCTL_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Config file (YAML with `coordinator`, `tokenFile`, `caCert`).
    #[arg(long, env = "KANCTL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// How long to wait for the connection.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub connect_timeout: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    coordinator: Option<String>,
    token_file: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
}

/// Resolved connection settings.
#[derive(Clone)]
pub struct Connection {
    /// The address.
    pub address: String,
    /// The token. Secret.
    pub token: Option<Zeroizing<String>>,
    /// The CA certificate (PEM).
    pub ca_pem: Option<Vec<u8>>,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.address)
            .field("token", &self.token.is_some())
            .field("ca", &self.ca_pem.is_some())
            .finish()
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Usage(format!("{what}: cannot read {}: {e}", path.display())))
}

impl Connection {
    /// Resolves the settings from the flags (already merged with their environment variables),
    /// `KANCTL_TOKEN` (`env_token`) and the config file.
    pub fn resolve(args: &ConnectionArgs, env_token: Option<String>) -> Result<Self> {
        let default_config = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .map(|d| d.join("kanctl/config.yaml"))
            .filter(|p| p.is_file());
        let file = match args.config.clone().or(default_config) {
            Some(p) => {
                let text = read("--config", &p)?;
                serde_norway::from_slice::<ConfigFile>(&text)
                    .map_err(|e| Error::Usage(format!("--config: {} does not parse: {e}", p.display())))?
            }
            None => ConfigFile::default(),
        };
        let address = args.coordinator.clone().or(file.coordinator).unwrap_or_else(|| DEFAULT_ADDRESS.into());
        let token = match (env_token.filter(|t| !t.is_empty()), args.token_file.clone().or(file.token_file)) {
            (Some(t), _) => Some(Zeroizing::new(t)),
            (None, Some(p)) => {
                let bytes = Zeroizing::new(read("--token-file", &p)?);
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| Error::Usage(format!("--token-file: {} is not UTF-8", p.display())))?;
                Some(Zeroizing::new(text.trim().to_string()))
            }
            (None, None) => None,
        };
        let ca_pem = args.ca_cert.clone().or(file.ca_cert).map(|p| read("--ca-cert", &p)).transpose()?;
        Ok(Connection { address, token, ca_pem, connect_timeout: args.connect_timeout })
    }

    /// Connects (eagerly, so that an unreachable coordinator is reported at once).
    pub async fn connect(&self) -> Result<Client> {
        let unreachable = |cause: String| Error::Unreachable { address: self.address.clone(), cause };
        let mut endpoint = Endpoint::from_shared(self.address.clone()).map_err(|e| {
            Error::Usage(format!("--coordinator: {:?} is not a URL ({e}): write http://host:port", self.address))
        })?;
        endpoint = endpoint.connect_timeout(self.connect_timeout).tcp_nodelay(true);
        if self.address.starts_with("https://") {
            let Some(ca) = &self.ca_pem else {
                return Err(Error::Usage(
                    "--ca-cert is required with an https:// coordinator: give the CA that signed its certificate"
                        .into(),
                ));
            };
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
                .map_err(|e| Error::Usage(format!("--ca-cert: {e}")))?;
        }
        let channel = endpoint.connect().await.map_err(|e| unreachable(error_chain(&e)))?;
        Ok(CoordinatorServiceClient::with_interceptor(channel, Auth(self.token.clone())))
    }
}

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone)]
pub struct Auth(Option<Zeroizing<String>>);

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Auth").field(&self.0.is_some()).finish()
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            let v = format!("Bearer {}", t.as_str())
                .parse()
                .map_err(|_| tonic::Status::invalid_argument("the token holds characters not allowed in a header"))?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

/// The client kanctl uses.
pub type Client = CoordinatorServiceClient<InterceptedService<Channel, Auth>>;
