//! nanokube: a real Kubernetes control plane in one binary.
//!
//! [`Cluster::start`] assembles the parts: certificates and kubeconfig
//! ([`nanokube_apiserver::pki`], [`nanokube_apiserver::kubeconfig`]), the store
//! ([`nanokube_store`]), the registry and API server ([`nanokube_apiserver`]) and the
//! controllers ([`nanokube_controllers`]). The `nanokube` binary's `server` command is a
//! thin wrapper around it.

pub mod agent;
pub mod bench;
pub mod client;
pub mod config;
pub mod dns;
pub mod images;
pub mod join;
pub mod proxy;
pub mod store;
#[cfg(feature = "test-cluster")]
pub mod testing;
pub mod tokens;
pub mod users;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use nanokube_apiserver::audit::AuditLog;
use nanokube_apiserver::authn::{Authenticator, StaticTokens, TokenAuthenticator};
use nanokube_apiserver::authz::{Chain, SuperuserAuthorizer};
use nanokube_apiserver::kubeconfig;
use nanokube_apiserver::pki::{self, Paths};
use nanokube_apiserver::rbac::Rbac;
use nanokube_apiserver::registry::{Registry, RegistryConfig};
use nanokube_apiserver::satoken::{ServiceAccountAuthenticator, TokenIssuer};
use nanokube_apiserver::server::{self, ApiServer};
use nanokube_controllers::leader::Elector;
use nanokube_controllers::namespaces::NamespaceController;
use nanokube_controllers::tokens::TokenController;
use nanokube_store::sqlite::{SqliteBackend, SqliteOptions};
use nanokube_store::Backend;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The cluster CIDR every pod IP comes from (kube-controller-manager's `--cluster-cidr`;
/// in 127/8, as every address here is). It is the range every pod's traffic rules
/// capture ([`nanokube_node::pods::POD_NETWORK`]).
pub const POD_CIDR: &str = nanokube_node::pods::POD_NETWORK;
/// The size of each node's block of it (`--node-cidr-mask-size`: 254 addresses, room for
/// kubelet's 110 pods).
pub const NODE_CIDR_MASK: u8 = 24;

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Address to listen on.
    pub bind_address: IpAddr,
    /// Port (0: any free port).
    pub secure_port: u16,
    /// Address clients and the `kubernetes` Endpoints use (default: the bind address).
    pub advertise_address: Option<IpAddr>,
    /// Data directory (certificates, `state.db`, `kubeconfig`).
    pub data_dir: PathBuf,
    /// Static bearer tokens (`token,user,uid,"groups"`).
    pub token_auth_file: Option<PathBuf>,
    /// Whether unauthenticated requests become `system:anonymous`.
    pub anonymous_auth: bool,
    /// Service CIDR.
    pub service_cidr: String,
    /// NodePort range.
    pub node_port_range: (u16, u16),
    /// The cluster DNS domain (kubelet's `--cluster-domain`).
    pub cluster_domain: String,
    /// Where the cluster DNS asks about names outside the cluster domain (`None`: the
    /// host's `/etc/resolv.conf`; empty: nowhere, such names fail).
    pub dns_upstreams: Option<Vec<SocketAddr>>,
    /// Load-balancer IPs for `LoadBalancer` Services.
    pub load_balancer_cidr: String,
    /// Open the host's Service listeners (ClusterIPs, node ports, load-balancer IPs, the
    /// cluster DNS address), as kube-proxy and CoreDNS serve the host; pods' traffic to
    /// Services and DNS is carried either way.
    pub service_proxy: bool,
    /// The ingress controller's HTTP and HTTPS ports on 127.0.0.1 (0: none), opened with
    /// the host's Service listeners.
    pub ingress_ports: (u16, u16),
    /// Kubeconfig file to merge a `nanokube` context into, or `None`.
    pub merge_kubeconfig: Option<PathBuf>,
    /// Keep state in memory only (no `state.db`).
    pub in_memory: bool,
    /// Store the cluster in etcd instead of the embedded SQLite file (`--etcd-servers`).
    pub etcd: Option<nanokube_store::etcd::EtcdOptions>,
    /// fsync every commit (default true).
    pub fsync: bool,
    /// Changes kept for watches (and paged lists) to resume from; older revisions answer
    /// 410 Expired, as after an etcd compaction.
    pub watch_history: usize,
    /// Most bytes of values the watch history may hold.
    pub watch_history_bytes: usize,
    /// Write one audit event per request to this file.
    pub audit_log_path: Option<PathBuf>,
    /// kube-apiserver's `--admission-control-config-file`: an `AdmissionConfiguration`
    /// (PodSecurity's defaults and exemptions).
    pub admission_control_config_file: Option<PathBuf>,
    /// Read-only requests' part of the server's concurrency, which API Priority and
    /// Fairness shares among priority levels (upstream's `--max-requests-inflight`).
    pub max_requests_inflight: u32,
    /// Mutating requests' part (upstream's `--max-mutating-requests-inflight`).
    pub max_mutating_requests_inflight: u32,
    /// Create a legacy token Secret for every ServiceAccount (the seed's `default-token-xxxxx`).
    pub legacy_service_account_token_secrets: bool,
    /// `iss` of bound service-account tokens.
    pub service_account_issuer: String,
    /// Also be a node (register a Node and keep its Lease), as `nanokube server` is by
    /// default; `false` runs a control plane only.
    pub node: bool,
    /// The Node's name (default: the host name, lowercased, as kubelet's).
    pub node_name: Option<String>,
    /// Run the scheduler (default true; `false` leaves pods unassigned, as a bare
    /// kube-apiserver does).
    pub scheduler: bool,
    /// Registry mirrors for the node's pulls (`registry=host[:port]`, `*` for all), as
    /// k3s's `registries.yaml` mirrors.
    pub registry_mirrors: Vec<(String, String)>,
    /// Registries the node speaks plain HTTP to (besides loopback ones).
    pub insecure_registries: Vec<String>,
    /// Simulated nodes (`sim-0` …) to register: their pods run without processes (see
    /// `nanokube_node::simulated`).
    pub simulated_nodes: usize,
    /// How long a pod on a simulated node takes from binding to Running.
    pub simulated_start_delay: std::time::Duration,
    /// How long a simulated node takes to confirm a pod's deletion (see
    /// `nanokube_node::simulated::SimulatedConfig::stop_delay`).
    pub simulated_stop_delay: std::time::Duration,
    /// The kubelet API's port on the advertised address (0: any free port); the Node
    /// publishes the one bound in `daemonEndpoints`.
    pub kubelet_port: u16,
    /// kubelet's hard eviction thresholds (`--eviction-hard`).
    pub eviction_hard: Vec<nanokube_node::eviction::Threshold>,
    /// How long a pressure condition outlasts its threshold.
    pub eviction_pressure_transition_period: std::time::Duration,
    /// The time the Job and CronJob controllers read (the wall clock but in tests, which
    /// move a `ManualClock` instead of waiting for schedules).
    pub controller_clock: Arc<dyn nanokube_controllers::clock::Clock>,
}

impl ClusterConfig {
    /// The defaults of `nanokube server` for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ClusterConfig {
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            secure_port: 6443,
            advertise_address: None,
            data_dir: data_dir.into(),
            token_auth_file: None,
            anonymous_auth: true,
            service_cidr: "127.96.0.0/16".into(),
            node_port_range: (30000, 32767),
            cluster_domain: "cluster.local".into(),
            dns_upstreams: None,
            load_balancer_cidr: "127.240.0.0/16".into(),
            service_proxy: true,
            ingress_ports: (80, 443),
            merge_kubeconfig: None,
            in_memory: false,
            etcd: None,
            fsync: true,
            watch_history: nanokube_store::sqlite::DEFAULT_HISTORY,
            watch_history_bytes: nanokube_store::sqlite::DEFAULT_HISTORY_BYTES,
            audit_log_path: None,
            admission_control_config_file: None,
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            legacy_service_account_token_secrets: true,
            service_account_issuer: "https://kubernetes.default.svc.cluster.local".into(),
            node: true,
            node_name: None,
            scheduler: true,
            registry_mirrors: Vec::new(),
            insecure_registries: Vec::new(),
            simulated_nodes: 0,
            simulated_start_delay: std::time::Duration::ZERO,
            simulated_stop_delay: std::time::Duration::from_secs(1),
            kubelet_port: 10250,
            eviction_hard: nanokube_node::eviction::parse_thresholds(nanokube_node::eviction::DEFAULT_HARD).unwrap_or_default(),
            eviction_pressure_transition_period: std::time::Duration::from_secs(300),
            controller_clock: Arc::new(nanokube_controllers::clock::SystemClock),
        }
    }
}

/// A running cluster.
pub struct Cluster {
    /// Where the API server listens.
    pub addr: SocketAddr,
    /// `https://host:port`.
    pub server_url: String,
    /// The admin kubeconfig written into the data directory.
    pub kubeconfig: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Files created on this start (certificates).
    pub created: Vec<PathBuf>,
    /// The API server's state.
    pub api: Arc<ApiServer>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The store, closed cleanly on shutdown.
    store: Arc<dyn Backend>,
    /// The data directory's lock, held while the cluster lives.
    _lock: std::fs::File,
}

/// Take the data directory's exclusive lock (`<dir>/lock`, holding the owner's PID): two
/// servers on one directory would write one database from two processes and overwrite
/// each other's kubeconfig. The lock is the kernel's (flock), so it goes with the process,
/// a crash included.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::io::{Read, Seek, Write};
    if dir.exists() && !dir.is_dir() {
        return Err(format!("data directory {} exists and is not a directory", dir.display()));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the data directory {}: {e}; choose a writable directory with --data-dir", dir.display()))?;
    let path = dir.join("lock");
    let mut file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut owner = String::new();
            let _ = file.read_to_string(&mut owner);
            let owner = owner.trim();
            return Err(format!(
                "data directory {} is in use by another nanokube server{}; stop it first or use another --data-dir",
                dir.display(),
                if owner.is_empty() { String::new() } else { format!(" (pid {owner})") }
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(format!("lock {}: {e}", path.display())),
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

/// Refuse to start an empty cluster beside the certificates of one that existed: a
/// missing or empty `state.db` next to a CA means the state was lost, and starting afresh
/// would hide that (and answer for a cluster that has forgotten everything).
fn check_store_present(paths: &Paths) -> Result<(), String> {
    let db = paths.state_db();
    let existed = paths.ca_crt().exists();
    let size = std::fs::metadata(&db).map(|m| m.len()).ok();
    match (existed, size) {
        (true, None) => Err(format!(
            "{} is missing, but the data directory holds a cluster's certificates: its state was lost. Restore the file, or start afresh in a new --data-dir",
            db.display()
        )),
        (true, Some(0)) => Err(format!(
            "{} is empty (0 bytes), but the data directory holds a cluster's certificates: its state was lost or truncated. Restore the file, or start afresh in a new --data-dir",
            db.display()
        )),
        _ => Ok(()),
    }
}

/// Move objects a nanokube before 0.1's key layout wrote (built-in resources of named
/// groups under `/registry/<group>/<plural>/`, Services, Endpoints, Nodes and
/// ReplicationControllers under their plural) to kube-apiserver's keys. Values are kept
/// as they are; their resourceVersions change, as after any write. Nothing happens when
/// the store holds no such key (one short list per resource).
async fn move_legacy_keys(store: &dyn Backend) -> Result<(), String> {
    for def in nanokube_api::resources::BUILTIN.iter().filter(|d| d.is_stored()) {
        let (old, new) = (def.legacy_key_prefix(), def.key_prefix());
        if old == new {
            continue;
        }
        // An old key is `<old>[<namespace>/]<name>`; new keys may share `<old>` as a
        // prefix (`/registry/services/specs/...`), but have one segment more.
        let segments = if def.namespaced { 2 } else { 1 };
        let is_old = |key: &str| key.strip_prefix(old.as_str()).is_some_and(|rest| rest.split('/').count() == segments);
        let listed = store.list(&old, None, 0);
        let mut moved = 0;
        for kv in listed.items.iter().filter(|kv| is_old(&kv.key)) {
            let rest = &kv.key[old.len()..];
            match store.create(format!("{new}{rest}"), kv.value.clone()).await {
                Ok(_) | Err(nanokube_store::StoreError::AlreadyExists) => {}
                Err(e) => return Err(e.to_string()),
            }
            store.delete(kv.key.clone(), Some(kv.mod_revision)).await.map_err(|e| e.to_string())?;
            moved += 1;
        }
        if moved > 0 {
            tracing::info!(resource = def.plural, group = def.group, moved, from = %old, to = %new, "moved objects to kube-apiserver's key layout");
        }
    }
    Ok(())
}

fn host_for_url(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

impl Cluster {
    /// Start a cluster and wait until it is ready (`/readyz` answers ok).
    pub async fn start(cfg: ClusterConfig) -> Result<Cluster, String> {
        let started = Instant::now();
        let listener = nanokube_apiserver::server::listen_async(SocketAddr::new(cfg.bind_address, cfg.secure_port))
            .map_err(|e| format!("listen on {}:{}: {e}", cfg.bind_address, cfg.secure_port))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let advertise = cfg.advertise_address.unwrap_or(if cfg.bind_address.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { cfg.bind_address });

        let paths = Paths::new(&cfg.data_dir);
        let admission = match &cfg.admission_control_config_file {
            Some(f) => nanokube_apiserver::admission::configuration::load(f)?,
            None => Default::default(),
        };
        let mut registry_cfg = RegistryConfig { service_cidr: cfg.service_cidr.clone(), node_ports: cfg.node_port_range, pod_security: admission.pod_security };
        let service_ip = nanokube_apiserver::alloc::ServiceAllocator::new(&registry_cfg.service_cidr, registry_cfg.node_ports)?.first_ip();
        let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(service_ip), advertise];
        if !cfg.bind_address.is_unspecified() {
            ips.push(cfg.bind_address);
        }
        ips.dedup();
        let dns: Vec<String> = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let lock = lock_data_dir(&cfg.data_dir)?;
        if !cfg.in_memory && cfg.etcd.is_none() {
            check_store_present(&paths)?;
        }
        let pki = pki::ensure(&paths, &ips, &dns).map_err(|e| format!("certificates in {}: {e}", cfg.data_dir.display()))?;
        tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "certificates ready");
        let tls = server::tls_config(&pki)?;

        let store: Arc<dyn Backend> = match &cfg.etcd {
            Some(etcd) => {
                let opts = nanokube_store::etcd::EtcdOptions {
                    history: cfg.watch_history,
                    history_bytes: cfg.watch_history_bytes,
                    // Events live an hour, as kube-apiserver's --event-ttl.
                    leases: vec![("/registry/events/".into(), std::time::Duration::from_secs(3600))],
                    ..etcd.clone()
                };
                Arc::new(nanokube_store::etcd::EtcdBackend::open(opts).await.map_err(|e| format!("store: {e}"))?)
            }
            None => Arc::new(
                SqliteBackend::open(SqliteOptions {
                    path: (!cfg.in_memory).then(|| paths.state_db()),
                    fsync: cfg.fsync,
                    history: cfg.watch_history,
                    history_bytes: cfg.watch_history_bytes,
                    ..Default::default()
                })
                .map_err(|e| format!("store {}: {e}", paths.state_db().display()))?,
            ),
        };
        tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "store open");
        move_legacy_keys(&*store).await.map_err(|e| format!("moving objects to kube-apiserver's key layout: {e}"))?;
        registry_cfg.service_cidr = cfg.service_cidr.clone();
        let registry = Arc::new(Registry::new(store.clone(), registry_cfg)?);
        // Custom resources are served from the first request after a restart.
        nanokube_controllers::crds::load(&registry).map_err(|e| format!("loading CustomResourceDefinitions: {e}"))?;

        let issuer = Arc::new(TokenIssuer::new(&pki.sa_key_pem, &pki.sa_pub_pem, &cfg.service_account_issuer)?);
        let mut tokens: Vec<Arc<dyn TokenAuthenticator>> = Vec::new();
        if let Some(f) = &cfg.token_auth_file {
            tokens.push(Arc::new(StaticTokens::load(f)?));
        }
        tokens.push(Arc::new(nanokube_apiserver::bootstrap_token::BootstrapTokenAuthenticator { registry: registry.clone() }));
        tokens.push(Arc::new(ServiceAccountAuthenticator { issuer: issuer.clone(), registry: registry.clone() }));
        let authn = Authenticator { tokens, anonymous: cfg.anonymous_auth };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let rbac = Rbac::start(store.clone(), shutdown_rx.clone());
        // kube-apiserver's `--authorization-mode=Node,RBAC`: kubelets by the Node
        // authorizer (its static rules are the `system:node` ClusterRole's), then RBAC.
        let node_rules = nanokube_controllers::rbac_policy::policy()
            .cluster
            .iter()
            .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "system:node")
            .map(nanokube_apiserver::rbac::Rule::list_from)
            .unwrap_or_default();
        let node_graph = nanokube_apiserver::node_authz::NodeGraph::start(store.clone(), shutdown_rx.clone());
        let node_authz = nanokube_apiserver::node_authz::NodeAuthorizer::new(node_graph, node_rules);
        let authz = Chain(vec![Box::new(SuperuserAuthorizer), Box::new(node_authz), Box::new(rbac.clone())]);
        let server_address = format!("{}:{}", host_for_url(advertise), addr.port());
        let mut api = ApiServer::new(registry.clone(), authn, Box::new(authz), rbac, server_address);
        api.tokens = Some(issuer.clone());
        api.scheduler = cfg.scheduler;
        api.flow_control = nanokube_apiserver::priority_and_fairness::FlowControl::start(
            cfg.max_requests_inflight.saturating_add(cfg.max_mutating_requests_inflight),
            store.clone(),
            shutdown_rx.clone(),
        );
        api.aggregator = Arc::new(nanokube_apiserver::aggregator::Aggregator::new(Some(nanokube_apiserver::backend::ClientIdentity {
            cert_pem: pki.front_proxy_client_pem.clone(),
            key_pem: pki.front_proxy_client_key_pem.clone(),
        })));
        if let Some(p) = &cfg.audit_log_path {
            api.audit = Some(AuditLog::open(p).map_err(|e| format!("audit log {}: {e}", p.display()))?);
        }
        // How this server calls kubelets (`nodes/proxy`): a client certificate of the
        // cluster CA, as kubeadm's `apiserver-kubelet-client`, trusting that CA only.
        {
            use base64::Engine as _;
            let (cert_pem, key_pem) =
                nanokube_apiserver::pki::issue_client_cert(&pki.ca_pem, &pki.ca_key_pem, "kube-apiserver-kubelet-client", &["system:masters".to_string()])
                    .map_err(|e| format!("kubelet client certificate: {e}"))?;
            let bundle = base64::engine::general_purpose::STANDARD.encode(&pki.ca_pem);
            let identity = nanokube_apiserver::backend::ClientIdentity { cert_pem, key_pem };
            api.kubelet_client = Some(nanokube_apiserver::backend::tls_config(&bundle, false, Some(&identity))?);
        }
        let api = Arc::new(api);

        let mut tasks = JoinSet::new();
        tasks.spawn(server::serve(api.clone(), listener, tls, shutdown_rx.clone()));

        // Two commit rounds: what needs nothing, then what needs the namespaces.
        let (namespaces, policy, priority_classes, flow_control) = tokio::join!(
            nanokube_controllers::bootstrap::ensure_namespaces(&registry),
            nanokube_controllers::rbac_policy::ensure(&registry),
            nanokube_controllers::bootstrap::ensure_priority_classes(&registry),
            // kube-apiserver's priority-and-fairness-config-producer post-start hook.
            nanokube_controllers::flowcontrol::ensure(&registry)
        );
        namespaces.map_err(|e| format!("bootstrap: {e}"))?;
        priority_classes.map_err(|e| format!("bootstrap: {e}"))?;
        policy.map_err(|e| format!("default RBAC policy: {e}"))?;
        flow_control.map_err(|e| format!("API Priority and Fairness configuration: {e}"))?;
        tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "system namespaces, priority classes and cluster RBAC policy ensured");
        tasks.spawn(nanokube_controllers::rbac_policy::run(registry.clone(), shutdown_rx.clone()));
        tasks.spawn(nanokube_controllers::flowcontrol::run(registry.clone(), shutdown_rx.clone()));
        let ns_controller = Arc::new(NamespaceController::new(registry.clone(), pki.ca_pem.clone()));
        let mut second = JoinSet::new();
        {
            let (r, ip, port) = (registry.clone(), advertise.to_string(), addr.port());
            second.spawn(async move { nanokube_controllers::bootstrap::ensure_kubernetes_service(&r, &ip, port).await });
        }
        {
            let r = registry.clone();
            second.spawn(async move { nanokube_controllers::bootstrap::ensure_default_service_cidr(&r).await });
        }
        for ns in nanokube_controllers::bootstrap::SYSTEM_NAMESPACES {
            let c = ns_controller.clone();
            second.spawn(async move { c.reconcile(ns).await });
        }
        {
            // Roles live in kube-system and kube-public; admin, edit and view (and any
            // role with an aggregationRule) are aggregated before the server reports ready.
            let r = registry.clone();
            second.spawn(async move { nanokube_controllers::rbac_policy::ensure_namespaced(&r).await });
            let r = registry.clone();
            second.spawn(async move { nanokube_controllers::rbac_aggregation::aggregate_all(&r).await });
        }
        {
            // The aggregation layer: a local APIService per served group-version before
            // ready (upstream's autoregister-completion check), and what aggregated API
            // servers trust.
            let r = registry.clone();
            second.spawn(async move { nanokube_controllers::apiservices::sync(&r).await });
            let (r, ca, front_proxy_ca) = (registry.clone(), pki.ca_pem.clone(), pki.front_proxy_ca_pem.clone());
            second.spawn(async move { nanokube_controllers::apiservices::ensure_extension_authentication(&r, &ca, &front_proxy_ca).await });
        }
        // The node's images; archives in <data-dir>/images/ are imported first (k3s's
        // air-gap directory).
        let images = if cfg.node && !cfg.in_memory { nanokube_runtime::ImageStore::open(&cfg.data_dir).ok() } else { None };
        if let Some(store) = images.clone() {
            let dir = cfg.data_dir.join("images");
            let imported = tokio::task::spawn_blocking(move || store.import_dir(&dir)).await.unwrap_or_default();
            for (file, result) in imported {
                match result {
                    Ok(names) => tracing::info!(file = %file.display(), "imported images {names:?}"),
                    Err(e) => tracing::warn!(file = %file.display(), "importing images: {e}"),
                }
            }
        }
        let node_name = cfg.node_name.clone().unwrap_or_else(nanokube_node::machine::hostname);
        // The node's network: Service proxy, load balancer and cluster DNS.
        let network = if cfg.node {
            let dns_ip: Ipv4Addr = registry.dns_service_ip().parse().map_err(|_| "the service range has no DNS address".to_string())?;
            let mut node_ips = vec![Ipv4Addr::LOCALHOST];
            if let IpAddr::V4(a) = advertise {
                if a.is_loopback() && !node_ips.contains(&a) {
                    node_ips.push(a);
                }
            }
            let network = nanokube_net::Network::new(nanokube_net::NetworkConfig {
                node: node_name.clone(),
                node_ips,
                service_cidr: cfg.service_cidr.clone(),
                dns_addr: std::net::SocketAddrV4::new(dns_ip, 53),
                cluster_domain: cfg.cluster_domain.clone(),
                dns_upstreams: cfg.dns_upstreams.clone().unwrap_or_else(nanokube_net::dns::Dns::host_resolvers),
                load_balancer_cidr: cfg.load_balancer_cidr.clone(),
                host_listeners: cfg.service_proxy,
                ingress: (cfg.ingress_ports != (0, 0)).then(|| nanokube_net::ingress::IngressConfig {
                    http: SocketAddr::from((Ipv4Addr::LOCALHOST, cfg.ingress_ports.0)),
                    https: SocketAddr::from((Ipv4Addr::LOCALHOST, cfg.ingress_ports.1)),
                }),
            })?;
            {
                let (r, addr) = (registry.clone(), network.dns.addr);
                second.spawn(async move { nanokube_net::ensure_dns_service(&r, addr).await });
            }
            tasks.spawn(network.clone().run(registry.clone(), shutdown_rx.clone()));
            Some(network)
        } else {
            None
        };
        let node_agent = cfg.node.then(|| {
            let name = node_name.clone();
            let cluster: Arc<dyn nanokube_apiserver::cluster::Cluster> =
                Arc::new(nanokube_node::in_process::InProcess { registry: registry.clone(), issuer: issuer.clone() });
            let eviction = Arc::new(nanokube_node::eviction::Manager::new(cfg.eviction_hard.clone(), cfg.eviction_pressure_transition_period));
            // Pods run when this machine can run containers; otherwise the node says why not.
            let runtime = nanokube_node::pods::runtime_for_machine(
                cluster.clone(),
                &name,
                &advertise.to_string(),
                images.clone(),
                &cfg.data_dir,
                nanokube_node::pods::Mirrors(cfg.registry_mirrors.clone()),
                cfg.insecure_registries.clone(),
                network.clone(),
            )
            .map(Arc::new);
            let (runtime, not_ready) = match runtime {
                Ok(rt) => (Some(rt), None),
                Err(why) => {
                    tracing::info!("the node will not run pods: {why}");
                    (None, Some(why))
                }
            };
            let mut kubelet_port = 0;
            if let Some(rt) = &runtime {
                api.nodes.attach(Arc::new(nanokube_node::pods::logs::Logs(rt.clone())));
                api.exec_nodes.attach(Arc::new(nanokube_node::pods::exec::Exec(rt.clone())));
                api.portforward_nodes.attach(Arc::new(nanokube_node::pods::portforward::PortForward(rt.clone())));
                let stats = nanokube_node::pods::stats::Stats::new(rt.clone());
                api.metrics_nodes.attach(stats.clone());
                tokio::spawn(stats.clone().run(shutdown_rx.clone()));
                // The kubelet API, on the node's address with a certificate of the cluster CA.
                let serving = nanokube_apiserver::server::listen_async(SocketAddr::new(advertise, cfg.kubelet_port))
                    .map_err(|e| {
                        format!("the kubelet API on {}: {e}", nanokube_apiserver::backend::join_host_port(&advertise.to_string(), i64::from(cfg.kubelet_port)))
                    })
                    .and_then(|l| {
                        let (cert, key) = nanokube_apiserver::pki::issue_serving_cert(
                            &pki.ca_pem,
                            &pki.ca_key_pem,
                            &name,
                            &[advertise, IpAddr::V4(Ipv4Addr::LOCALHOST)],
                            std::slice::from_ref(&name),
                        )
                        .map_err(|e| e.to_string())?;
                        Ok((l, server::serving_tls(&pki.ca_pem, &cert, &key)?))
                    });
                match serving {
                    Ok((listener, tls)) => {
                        kubelet_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
                        let gate = Arc::new(nanokube_node::kubelet_api::ServerGate(api.clone()));
                        let kubelet = nanokube_node::kubelet_api::KubeletApi::new(gate, cluster.clone(), rt, stats);
                        tasks.spawn(kubelet.serve(listener, tls, shutdown_rx.clone()));
                    }
                    Err(e) => tracing::warn!("not serving the kubelet API: {e}"),
                }
            }
            Arc::new(nanokube_node::NodeAgent::new(
                cluster,
                Some(registry.clone()),
                nanokube_node::NodeConfig {
                    name,
                    internal_ip: advertise.to_string(),
                    data_dir: cfg.data_dir.clone(),
                    version: nanokube_apiserver::discovery::GIT_VERSION.into(),
                    images: images.clone(),
                    not_ready,
                    kubelet_port: i32::from(kubelet_port),
                    eviction,
                    control_plane: true,
                },
                runtime,
            ))
        });
        if let Some(agent) = &node_agent {
            let agent = agent.clone();
            second.spawn(async move { agent.register().await.map_err(|e| nanokube_api::ApiError::internal(format!("registering the node: {e}"))) });
        }
        while let Some(r) = second.join_next().await {
            r.map_err(|e| e.to_string())?.map_err(|e| format!("bootstrap: {e}"))?;
        }
        tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "bootstrap objects, RBAC policy and namespace defaults ensured");
        tasks.spawn(nanokube_controllers::bootstrap::run(registry.clone(), advertise.to_string(), addr.port(), shutdown_rx.clone()));
        tasks.spawn(Arc::new(nanokube_controllers::crds::CrdController::new(registry.clone())).run(shutdown_rx.clone()));
        tasks.spawn(registry.clone().run_service_allocations(shutdown_rx.clone()));
        tasks.spawn(nanokube_controllers::apiservices::run(registry.clone(), shutdown_rx.clone()));
        tasks.spawn(nanokube_controllers::event_ttl::run(registry.clone(), shutdown_rx.clone()));
        // kube-controller-manager's controllers run while this server holds the Lease
        // `kube-system/kube-controller-manager`, the scheduler while it holds
        // `kube-system/kube-scheduler`: of servers sharing a store, one of each acts.
        let identity = leader_identity(&cfg.data_dir);
        {
            let token_controller =
                Arc::new(TokenController::new(registry.clone(), issuer.clone(), pki.ca_pem.clone(), cfg.legacy_service_account_token_secrets));
            let manager = ControllerManager {
                registry: registry.clone(),
                namespaces: ns_controller.clone(),
                tokens: token_controller,
                clock: cfg.controller_clock.clone(),
                ca: (pki.ca_pem.clone(), pki.ca_key_pem.clone()),
                api: api.clone(),
            };
            let elector = Elector::new(registry.clone(), "kube-system", "kube-controller-manager", &identity);
            tasks.spawn(elector.run(shutdown_rx.clone(), move |stop| manager.clone().run(stop)));
        }
        if cfg.scheduler {
            let scheduler = Arc::new(nanokube_controllers::scheduler::Scheduler::new(registry.clone(), &nanokube_node::machine::hostname()));
            let elector = Elector::new(registry.clone(), "kube-system", "kube-scheduler", &identity);
            tasks.spawn(elector.run(shutdown_rx.clone(), move |stop| scheduler.clone().run(stop)));
        }
        if let Some(agent) = node_agent {
            tasks.spawn(agent.run(shutdown_rx.clone()));
        }
        {
            // Simulated nodes follow pods on every Node labelled simulated, made here or by hand.
            let sim = nanokube_node::simulated::Simulator::new(
                registry.clone(),
                nanokube_node::simulated::SimulatedConfig {
                    nodes: cfg.simulated_nodes,
                    start_delay: cfg.simulated_start_delay,
                    stop_delay: cfg.simulated_stop_delay,
                    max_pods: 1100,
                    version: nanokube_apiserver::discovery::GIT_VERSION.into(),
                },
            );
            sim.register().await.map_err(|e| format!("registering the simulated nodes: {e}"))?;
            tasks.spawn(sim.run(shutdown_rx.clone()));
        }
        tasks.spawn(api.aggregator.clone().run(registry.clone(), shutdown_rx.clone()));
        // The etcd backend runs kube-apiserver's compactor itself.
        if cfg.etcd.is_none() {
            // Compact the log to what watches can still resume from, every five minutes.
            let store = store.clone();
            let mut sd = shutdown_rx.clone();
            tasks.spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(300));
                every.tick().await;
                loop {
                    tokio::select! {
                        _ = sd.changed() => return,
                        _ = every.tick() => {
                            let floor = store.oldest_watchable();
                            if let Err(e) = store.compact(floor).await {
                                tracing::warn!(error = %e, "compaction failed");
                            }
                        }
                    }
                }
            });
        }

        let server_url = format!("https://{}:{}", host_for_url(advertise), addr.port());
        let kc = kubeconfig::single("nanokube", &server_url, &pki.ca_pem, &pki.client_pem, &pki.client_key_pem);
        kubeconfig::write(&paths.kubeconfig(), &kc).map_err(|e| format!("kubeconfig: {e}"))?;
        if let Some(target) = &cfg.merge_kubeconfig {
            kubeconfig::merge_into(target, &kc).map_err(|e| {
                format!("merging the nanokube context into {}: {e} (fix that file, or start with --merge-kubeconfig=false to leave it alone)", target.display())
            })?;
        }
        api.set_ready();
        tracing::info!(elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, %server_url, "ready");
        Ok(Cluster { addr, server_url, kubeconfig: paths.kubeconfig(), data_dir: cfg.data_dir, created: pki.created, api, shutdown, tasks, store, _lock: lock })
    }

    /// Stop serving and wait for the server's tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        if let Err(e) = self.store.close().await {
            tracing::warn!(error = %e, "closing the store");
        }
    }
}

/// kube-controller-manager's controllers, started together when this server becomes the
/// leader and stopped together when it stops being one.
#[derive(Clone)]
struct ControllerManager {
    registry: Arc<nanokube_apiserver::registry::Registry>,
    namespaces: Arc<NamespaceController>,
    tokens: Arc<TokenController>,
    clock: Arc<dyn nanokube_controllers::clock::Clock>,
    /// The cluster CA (certificate and key PEM) that signs approved requests.
    ca: (String, String),
    /// The API server (the HPA reads its metrics API).
    api: Arc<ApiServer>,
}

impl ControllerManager {
    /// Run every controller until `stop`.
    async fn run(self, stop: tokio::sync::watch::Receiver<bool>) {
        use nanokube_controllers::*;
        let r = &self.registry;
        let mut set = JoinSet::new();
        set.spawn(self.namespaces.clone().run(stop.clone()));
        set.spawn(self.tokens.clone().run(stop.clone()));
        set.spawn(Arc::new(gc::GarbageCollector::new(r.clone())).run(stop.clone()));
        set.spawn(node_lifecycle::run(r.clone(), stop.clone()));
        match node_ipam::NodeIpamController::new(r.clone(), POD_CIDR, NODE_CIDR_MASK) {
            Ok(ipam) => drop(set.spawn(ipam.run(stop.clone()))),
            Err(e) => tracing::error!("node IPAM: {e}"),
        }
        set.spawn(service_cidrs::run(r.clone(), stop.clone()));
        set.spawn(taint_eviction::run(r.clone(), stop.clone()));
        set.spawn(pod_gc::run(r.clone(), stop.clone()));
        set.spawn(persistent_volumes::run(r.clone(), stop.clone()));
        for kind in [replicasets::REPLICA_SETS, replicasets::REPLICATION_CONTROLLERS] {
            set.spawn(replicasets::ReplicaController::new(r.clone(), kind).run(stop.clone()));
        }
        set.spawn(deployments::DeploymentController::new(r.clone()).run(stop.clone()));
        set.spawn(endpoints::EndpointsController::new(r.clone()).run(stop.clone()));
        set.spawn(endpointslice_mirroring::MirroringController::new(r.clone()).run(stop.clone()));
        set.spawn(jobs::JobController::with_clock(r.clone(), self.clock.clone()).run(stop.clone()));
        set.spawn(cronjobs::CronJobController::with_clock(r.clone(), self.clock.clone()).run(stop.clone()));
        set.spawn(disruption::DisruptionController::new(r.clone()).run(stop.clone()));
        set.spawn(quota::QuotaController::new(r.clone()).run(stop.clone()));
        set.spawn(statefulsets::StatefulSetController::new(r.clone()).run(stop.clone()));
        set.spawn(daemonsets::DaemonSetController::new(r.clone()).run(stop.clone()));
        set.spawn(hpa::HpaController::new(self.api.clone()).run(stop.clone()));
        set.spawn(certificates::CsrSigner::new(r.clone(), &self.ca.0, &self.ca.1).run(stop.clone()));
        let api = self.api.clone();
        let authorize: certificates::Authorize = Arc::new(move |user, req| api.authz.authorize(user, req) == nanokube_apiserver::authz::Decision::Allow);
        set.spawn(certificates::CsrApprover::new(r.clone(), authorize).run(stop.clone()));
        set.spawn(csr_cleaner::CsrCleaner::new(r.clone(), self.clock.clone()).run(stop.clone()));
        set.spawn(bootstrap_tokens::run_signer(r.clone(), stop.clone()));
        set.spawn(bootstrap_tokens::run_cleaner(r.clone(), stop));
        while set.join_next().await.is_some() {}
    }
}

/// This server's identity in leader election: its host name and a tag of its data
/// directory, so that the same server restarted (even after a crash) is the same
/// candidate and takes its own Lease back at once, while another server waits for it
/// to expire.
fn leader_identity(data_dir: &std::path::Path) -> String {
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    // FNV-1a: stable across runs and builds, unlike std's hasher.
    let tag = path.as_os_str().as_encoded_bytes().iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3));
    format!("{}_{tag:016x}", nanokube_node::machine::hostname())
}
