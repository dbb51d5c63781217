//! [`TestCluster`]: a real nanokube API server and its controllers, in-process, on a free
//! loopback port, with an in-memory store and a temporary data directory; what Go's
//! envtest gives operator authors, without downloading anything.
//!
//! ```
//! # #[tokio::main] async fn main() {
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//!
//! let cluster = nanokube::testing::TestCluster::start().await.unwrap();
//! let cms: Api<ConfigMap> = Api::default_namespaced(cluster.client());
//! let mut cm = ConfigMap::default();
//! cm.metadata.name = Some("hello".into());
//! let created = cms.create(&PostParams::default(), &cm).await.unwrap();
//! assert!(created.metadata.resource_version.is_some());
//! // Dropping the cluster stops it and removes its files.
//! # }
//! ```

use std::path::{Path, PathBuf};

use crate::{Cluster, ClusterConfig};

/// A running in-process cluster for tests. Dropping it stops the server, its
/// controllers and its store, and removes its temporary directory.
pub struct TestCluster {
    cluster: Option<Cluster>,
    client: kube::Client,
    config: kube::Config,
    kubeconfig: PathBuf,
    // Dropped last: the files outlive the tasks that use them.
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Start a cluster with an in-memory store (nothing is fsynced: tests want speed, not
    /// durability) and return once it is ready. The host's Service listeners are off and
    /// the cluster DNS forwards nowhere (many test clusters share the machine); pods'
    /// Service traffic and DNS work as ever.
    pub async fn start() -> Result<TestCluster, String> {
        Self::start_with(|_| {}).await
    }

    /// Start with adjusted configuration (the data dir, port and store are set first).
    pub async fn start_with(adjust: impl FnOnce(&mut ClusterConfig)) -> Result<TestCluster, String> {
        let dir = tempfile::Builder::new().prefix("nanokube-test-").tempdir().map_err(|e| e.to_string())?;
        let mut cfg = ClusterConfig::new(dir.path().join("data"));
        cfg.secure_port = 0;
        cfg.in_memory = true;
        cfg.fsync = false;
        // Test clusters run side by side: none opens the host's Service addresses, and
        // none asks a resolver off the machine (pods' Service traffic and DNS still work).
        cfg.service_proxy = false;
        cfg.dns_upstreams = Some(Vec::new());
        adjust(&mut cfg);
        let cluster = Cluster::start(cfg).await?;
        let kubeconfig = cluster.kubeconfig.clone();
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).map_err(|e| e.to_string())?;
        let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.map_err(|e| e.to_string())?;
        let client = kube::Client::try_from(config.clone()).map_err(|e| e.to_string())?;
        Ok(TestCluster { cluster: Some(cluster), client, config, kubeconfig, _dir: dir })
    }

    /// A kube client authenticated as the cluster admin (`system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The kube configuration behind [`client`](Self::client).
    pub fn config(&self) -> &kube::Config {
        &self.config
    }

    /// The admin kubeconfig file (for kubectl or other tools).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.cluster.as_ref().expect("running").server_url
    }

    /// The server's in-process API: what its own controllers write through (defaults,
    /// validation and admission included).
    pub fn registry(&self) -> std::sync::Arc<nanokube_apiserver::registry::Registry> {
        self.cluster.as_ref().expect("running").api.registry.clone()
    }

    /// Stop the cluster and wait for its tasks to end.
    pub async fn shutdown(mut self) {
        if let Some(c) = self.cluster.take() {
            c.shutdown().await;
        }
    }
}
