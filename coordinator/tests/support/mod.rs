//! An in-process agent sidecar for coordinator tests: `kanister_agent::service::serve` on
//! 127.0.0.1:0, with a bearer token.

use std::time::Duration;

use kanister_agent::service::{self, ServeConfig};
use zeroize::Zeroizing;

/// A running agent; `stop` ends it and checks that it ended cleanly.
pub struct Agent {
    /// Its URL.
    pub endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), service::ServeError>>,
}

impl Agent {
    /// Starts an agent requiring `token`.
    pub async fn start(token: &str) -> Agent {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let config = ServeConfig {
            token: Some(Zeroizing::new(token.to_string())),
            progress_interval: Duration::from_millis(20),
            ..ServeConfig::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service::serve(listener, config, async {
            let _ = rx.await;
        }));
        Agent { endpoint, stop: Some(tx), task }
    }

    /// Stops the agent.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("the agent stops in time")
            .unwrap()
            .expect("the agent ends cleanly");
    }
}
