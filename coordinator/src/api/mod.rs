//! The coordinator's gRPC API (`kanister.coordinator.v1`), the one kanctl speaks.
//!
//! - [`service`]: [`CoordinatorApi`], the service: it acts on the ActionSet, Blueprint, Profile
//!   and Secret objects through the [`Cluster`] interface. The ActionSet custom resource stays
//!   the source of truth: the API creates, patches (`spec.cancel`) and deletes it, and derives
//!   every answer (watch included) from what the cluster holds.
//! - [`probe`]: the Profile check that writes, reads and deletes a probe object.
//! - [`snapshots`]: `ListSnapshots`' answer from what the Profile's repository holds, tied
//!   back to the ActionSets and artifacts that produced it.
//! - [`serve`]: the server, with optional TLS and a bearer token, until a shutdown future.
//!
//! With a [`crate::engine::Engine`] attached ([`CoordinatorApi::with_engine`]) the API also
//! hands new and cancelled ActionSets to it at once, which is how an in-process coordinator on
//! a [`crate::cluster::local::LocalCluster`] runs them; on Kubernetes the controller notices
//! the change instead.
//!
//! # Guarantees
//! - Secret values (credentials of `CreateProfile`, the token) are never logged nor put in an
//!   error message.
//! - The token is compared in constant time.
//! - `WatchActionSet` ends with the ActionSet's final form; resumed with the revision last seen,
//!   it sends only what changed since, so a client that reconnects misses no final state.

pub mod probe;
pub mod service;
pub mod snapshots;

use std::future::Future;
use std::sync::Arc;

pub(crate) use kanister_profile::error_chain;
use kanister_proto::coordinator::v1::coordinator_service_server::CoordinatorServiceServer;
use tokio::net::TcpListener;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use zeroize::Zeroizing;

use crate::cluster::Cluster;
pub use service::CoordinatorApi;

/// Errors of the API, mapped to a `tonic::Status` in one place ([`From<Error> for Status`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names the field and the fix.
    #[error("{0}")]
    InvalidArgument(String),
    /// Something the request refers to is missing or in the wrong state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// Something the call needs (a Profile's store) failed; a retry may help.
    #[error("{0}")]
    Unavailable(String),
    /// The cluster failed.
    #[error("cluster request failed: {0}")]
    Cluster(#[from] crate::cluster::Error),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use crate::cluster::Error as C;
        match e {
            Error::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            Error::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            Error::NotFound(m) => tonic::Status::not_found(m),
            Error::AlreadyExists(m) => tonic::Status::already_exists(m),
            Error::Unavailable(m) => tonic::Status::unavailable(m),
            Error::Cluster(C::NotFound(o)) => tonic::Status::not_found(format!("{o} not found")),
            Error::Cluster(C::Rejected { object, message }) if message.contains("already exists") => {
                tonic::Status::already_exists(format!("{object} already exists"))
            }
            Error::Cluster(c @ C::Rejected { .. }) => tonic::Status::invalid_argument(c.to_string()),
            Error::Cluster(c @ C::Timeout { .. }) => tonic::Status::deadline_exceeded(c.to_string()),
            Error::Cluster(c) => tonic::Status::unavailable(c.to_string()),
        }
    }
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the server is reached and protected.
#[derive(Default)]
pub struct ServeConfig {
    /// TLS certificate chain and key (PEM); `None`: plain HTTP/2.
    pub tls: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
    /// The bearer token every call must carry; `None`: no token.
    pub token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig").field("tls", &self.tls.is_some()).field("token", &self.token.is_some()).finish()
    }
}

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS certificate or key is unusable, or the server failed.
    #[error("the coordinator API server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Compares two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves `api` on `listener` until `shutdown` resolves.
pub async fn serve<C: Cluster>(
    listener: TcpListener,
    mut api: CoordinatorApi<C>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let token = config.token.map(Arc::new);
    let check = move |req: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
        let Some(token) = &token else { return Ok(req) };
        let sent = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        let sent = sent.strip_prefix("Bearer ").unwrap_or("");
        if constant_time_eq(sent.as_bytes(), token.as_bytes()) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated(
                "missing or wrong token: set KANCTL_TOKEN or --token-file to the coordinator's token",
            ))
        }
    };
    let mut builder = Server::builder();
    if let Some((cert, key)) = &config.tls {
        builder = builder.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key.as_slice())))?;
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let stopping = tokio_util::sync::CancellationToken::new();
    api.stopping = stopping.clone();
    let stopper = tokio::spawn({
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    });
    let served = builder
        .add_service(CoordinatorServiceServer::with_interceptor(api, check))
        .serve_with_incoming_shutdown(incoming, stopping.cancelled_owned())
        .await;
    stopper.abort();
    served?;
    Ok(())
}
