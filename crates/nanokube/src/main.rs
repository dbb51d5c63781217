//! The `nanokube` command.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Instant;

use clap::{ArgAction, Parser, Subcommand};

mod allocator;

/// mimalloc for the server and commands, the system's for the container helpers.
#[global_allocator]
static ALLOCATOR: allocator::Chosen = allocator::Chosen;
use nanokube::{Cluster, ClusterConfig};

#[derive(Parser)]
#[command(name = "nanokube", version, about = "A real Kubernetes control plane in one binary")]
struct Cli {
    /// Log verbosity: -v info, -vv debug, -vvv trace.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// `println!` that ignores a closed stdout: the server keeps running when whoever read
/// its first lines has gone (`nanokube server | head -1`), where `println!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Which cluster and identity a client command uses.
#[derive(clap::Args)]
struct ClientArgs {
    /// Kubeconfig [default: $KUBECONFIG or ~/.kube/config].
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long)]
    context: Option<String>,
}

#[derive(clap::Args)]
struct MapArgs {
    /// Write the map as a standalone SVG to this file (otherwise print it as JSON).
    #[arg(long)]
    svg: Option<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum DnsCommand {
    /// Ask the cluster DNS one question, as `dig @127.96.0.10 NAME TYPE` would.
    Lookup {
        /// The name, taken as fully qualified (`kubernetes.default.svc.cluster.local`).
        name: String,
        /// The record type.
        #[arg(long = "type", short = 't', default_value = "A")]
        record_type: String,
        /// The DNS server.
        #[arg(long, default_value = "127.96.0.10:53")]
        server: std::net::SocketAddr,
    },
    /// Print the Services' names as hosts-file lines; `--write` puts them in a marked
    /// block of the hosts file (replacing an earlier one), `--remove` takes it out.
    Hosts {
        /// Write the block into the file.
        #[arg(long, conflicts_with = "remove")]
        write: bool,
        /// Remove the block from the file.
        #[arg(long)]
        remove: bool,
        /// With `--write`: keep the block up to date as Services change until stopped
        /// (Ctrl-C or SIGTERM), then take it out.
        #[arg(long, requires = "write")]
        follow: bool,
        /// The hosts file.
        #[arg(long, default_value = "/etc/hosts")]
        file: PathBuf,
        /// The cluster's DNS domain.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

// Parsed once per run: the size of the server's arguments does not matter.
#[allow(clippy::large_enum_variant)]
/// `nanokube agent`.
#[derive(clap::Args)]
struct AgentArgs {
    /// The API server to join (`https://host:port`).
    #[arg(long)]
    server: String,
    /// The bootstrap token (`nanokube token create` on the server); needed for the first
    /// start only: the node's credentials are kept in `<data-dir>/kubelet.conf`.
    #[arg(long)]
    token: Option<String>,
    /// The cluster CA's public key hash (`sha256:<hex>`) to trust, as kubeadm's.
    #[arg(long = "discovery-token-ca-cert-hash")]
    ca_cert_hashes: Vec<String>,
    /// Trust the CA that the token's signature vouches for without a hash.
    #[arg(long = "discovery-token-unsafe-skip-ca-verification")]
    unsafe_skip_ca_verification: bool,
    /// The Node's name [default: the host name].
    #[arg(long)]
    node_name: Option<String>,
    /// Where the node keeps its credentials, images, pods and logs [default: ~/.nanokube-agent].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The node's address (`InternalIP`, the pods' hostIP); a loopback address.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: Ipv4Addr,
    /// The kubelet API's port on the node's address (0: any free port, published in the
    /// Node's daemonEndpoints).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// The cluster's Service range (the server's --service-cluster-ip-range).
    #[arg(long, default_value = "127.96.0.0/16")]
    service_cidr: String,
    /// kubelet's hard eviction thresholds (as `nanokube server --eviction-hard`).
    #[arg(long, default_value = nanokube_node::eviction::DEFAULT_HARD, value_parser = parse_eviction_thresholds)]
    eviction_hard: String,
    /// Pull images of REGISTRY from HOST[:PORT] instead; repeat for several.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=HOST[:PORT]")]
    registry_mirrors: Vec<String>,
    /// A registry (`host:port`) pulled from over plain HTTP; repeat for several.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Start the API server and controllers on the embedded store.
    Server(Box<ServerArgs>),
    /// Measure a cluster: startup, durable creates, lists, and the disk's fsync latency.
    Bench(BenchArgs),
    /// Manage users: `nanokube user add NAME` issues a client certificate and kubeconfig.
    #[command(subcommand)]
    User(UserCommand),
    /// Bootstrap tokens a node joins with, like `kubeadm token`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Join a cluster as a node with a bootstrap token and run its pods (`k3s agent`).
    Agent(AgentArgs),
    /// Run a proxy to the API server, like `kubectl proxy` (plain HTTP on localhost).
    Proxy(ProxyArgs),
    /// Print the dashboard's address and how to log in.
    Dashboard(ClientArgs),
    /// Draw the access map (who reaches the API, how, and what they may do).
    Map(MapArgs),
    /// The cluster DNS from the host: ask it, or put the Services' names in a hosts file.
    #[command(subcommand)]
    Dns(DnsCommand),
    /// Inspect kubeconfig files, like `kubectl config`.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The cluster's store: copy it between the embedded SQLite file and etcd.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The node's images: load archives, list, remove, pull.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The container shim the node runs per container.
    #[command(hide = true)]
    Shim(ShimCli),
    /// PID 1 of a pod sharing one process namespace.
    #[command(hide = true)]
    Pause {
        #[arg(long)]
        pid_file: PathBuf,
        /// The pod's user namespace, entered first (`hostUsers: false`).
        #[arg(long)]
        userns: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy every object from one store to another (stop the servers using them first).
    /// Names, uids, creation timestamps and generations are kept; the target must be
    /// empty unless --overwrite.
    Migrate {
        /// Source: `sqlite:PATH` (a state.db, or a data directory) or `etcd:URL[,URL…]`.
        #[arg(long)]
        from: String,
        /// Target, in the same forms.
        #[arg(long)]
        to: String,
        /// Copy into a target that already holds objects (replacing same-named ones).
        #[arg(long)]
        overwrite: bool,
        /// How to reach etcd (either side).
        #[command(flatten)]
        etcd: EtcdConnection,
    },
}

/// kube-apiserver's flags for reaching etcd, beside `--etcd-servers`.
#[derive(clap::Args)]
struct EtcdConnection {
    /// CA bundle that signs etcd's serving certificates.
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-keyfile).
    #[arg(long, requires = "etcd_keyfile")]
    etcd_certfile: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long, requires = "etcd_certfile")]
    etcd_keyfile: Option<PathBuf>,
    /// Where the cluster's keys live in etcd.
    #[arg(long, default_value = "/registry")]
    etcd_prefix: String,
}

impl EtcdConnection {
    /// The etcd options these flags give, built-in kinds written as protobuf or JSON.
    fn options(&self, protobuf: bool) -> nanokube_store::etcd::EtcdOptions {
        nanokube_store::etcd::EtcdOptions {
            ca_file: self.etcd_cafile.clone(),
            cert_file: self.etcd_certfile.clone(),
            key_file: self.etcd_keyfile.clone(),
            prefix: self.etcd_prefix.clone(),
            codec: Some(nanokube_store::etcd::Codec(std::sync::Arc::new(nanokube_apiserver::storage_codec::StorageCodec { protobuf }))),
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import a `docker save` or OCI image-layout archive (works while the server runs).
    Load {
        /// The archive (tar, optionally gzipped).
        file: PathBuf,
        /// The cluster's data directory [default: ~/.nanokube].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List the images.
    #[command(alias = "list")]
    Ls {
        /// The cluster's data directory [default: ~/.nanokube].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Remove an image (by name, name@digest or ID).
    Rm {
        /// The image.
        image: String,
        /// The cluster's data directory [default: ~/.nanokube].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Make an image of this binary (and the libraries it loads), to run nanokube as a
    /// container: `nanokube proxy` as a pod's sidecar.
    BuildSelf {
        /// Its name [default: nanokube:v<version>].
        #[arg(long)]
        tag: Option<String>,
        /// The cluster's data directory [default: ~/.nanokube].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Pull an image from its registry (plain HTTP for loopback and --insecure-registry).
    Pull {
        /// The image reference (`busybox`, `127.0.0.1:5000/app:v1`, `name@sha256:...`).
        image: String,
        /// The cluster's data directory [default: ~/.nanokube].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A registry (`host:port`) to speak plain HTTP to; repeat for several.
        #[arg(long = "insecure-registry")]
        insecure: Vec<String>,
        /// `USER:PASSWORD` for the registry.
        #[arg(long)]
        creds: Option<String>,
    },
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// The port to serve on (0 picks a free one, printed).
    #[arg(short, long, default_value_t = 8001)]
    port: u16,
    /// The IP address to serve on.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// Serve on this unix socket instead.
    #[arg(short = 'u', long)]
    unix_socket: Option<PathBuf>,
    /// Prefix to serve the proxied API under.
    #[arg(long, default_value = "/")]
    api_prefix: String,
    /// Regexes (comma-separated) of hosts to accept.
    #[arg(long, default_value = nanokube::proxy::DEFAULT_ACCEPT_HOSTS)]
    accept_hosts: String,
    /// Regexes of paths to accept.
    #[arg(long, default_value = nanokube::proxy::DEFAULT_ACCEPT_PATHS)]
    accept_paths: String,
    /// Regexes of paths to reject (default: exec and attach).
    #[arg(long, default_value = nanokube::proxy::DEFAULT_REJECT_PATHS)]
    reject_paths: String,
    /// Regexes of HTTP methods to reject.
    #[arg(long, default_value = nanokube::proxy::DEFAULT_REJECT_METHODS)]
    reject_methods: String,
    /// Accept every request (dangerous when the port is reachable by others).
    #[arg(long)]
    disable_filter: bool,
    /// Also serve static files from this directory.
    #[arg(short = 'w', long)]
    www: Option<PathBuf>,
    /// Prefix for the static files.
    #[arg(short = 'P', long, default_value = "/static/")]
    www_prefix: String,
    /// Kubeconfig to take credentials from [default: $KUBECONFIG or ~/.kube/config];
    /// without one, inside a pod, the pod's service account is used.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long)]
    context: Option<String>,
    /// TCP keep-alive period of connections to the API server (e.g. 30s; 0 turns it off).
    #[arg(long, default_value = "0")]
    keepalive: String,
    /// Put the path of the kubeconfig's server URL in front of every request's path.
    #[arg(long)]
    append_server_path: bool,
    /// Use the in-cluster service-account files (token, ca.crt) in this directory, even
    /// when a kubeconfig exists [default without a kubeconfig:
    /// /var/run/secrets/kubernetes.io/serviceaccount].
    #[arg(long)]
    service_account_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Show the merged kubeconfig.
    View {
        /// Only the current context and what it uses.
        #[arg(long)]
        minify: bool,
        /// Show certificates, keys and tokens.
        #[arg(long)]
        raw: bool,
        /// yaml or json.
        #[arg(short, long, default_value = "yaml")]
        output: String,
        /// Use this file instead of $KUBECONFIG.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Print the current context.
    CurrentContext {
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// List contexts.
    GetContexts {
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Make a context current.
    UseContext {
        name: String,
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Issue a client certificate for NAME (CN=NAME, O=each group) signed by the cluster
    /// CA, and write a kubeconfig for it.
    Add {
        /// The user name (certificate CN).
        name: String,
        /// A group (certificate O); repeat for several.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The cluster's data directory [default: ~/.nanokube].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Where to write the kubeconfig [default: <data-dir>/users/NAME.kubeconfig].
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a bootstrap token (Secret `bootstrap-token-<id>` in kube-system) and print it.
    Create {
        /// The token, `[a-z0-9]{6}.[a-z0-9]{16}` [default: a random one].
        token: Option<String>,
        /// How long the token lasts (`24h`, `90m`; `0`: forever).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// A note kept with the token.
        #[arg(long, default_value = "")]
        description: String,
        /// Extra groups of the token's user (each `system:bootstrappers:…`).
        #[arg(long, value_delimiter = ',', default_value = nanokube_apiserver::bootstrap_token::DEFAULT_NODE_GROUP)]
        groups: Vec<String>,
        /// Print the whole `nanokube agent` command that joins with it (the server's address
        /// and the CA's hash), as `kubeadm token create --print-join-command`.
        #[arg(long)]
        print_join_command: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the bootstrap tokens.
    List(ClientArgs),
    /// Delete a bootstrap token (by id or whole token).
    Delete {
        /// The token or its id.
        token: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Scenarios: startup (spawn --server-command → /readyz 200, cold/warm, idle RSS), testcluster
    /// (in-process start to ready with the in-memory store, as TestCluster), create (durable
    /// creates/s and latency per client count; after fsync, one client's share of the
    /// disk's ceiling and the floor of a GET round trip plus an fsync), get, update (own objects, and one shared
    /// object with conflicts retried), delete, list (LIST of --objects ConfigMaps, each size
    /// in turn, as JSON with and without resourceVersion=0 and as Table, kubectl's first
    /// page of 500 and all rows), watch (--watchers watchers while a
    /// writer creates --events objects: ack→receipt delay, missed and reordered events),
    /// pods (--pods pods stored with no runtime: server memory, LIST, watch from 0), pods-simulated (--pods pods scheduled onto --simulated-nodes simulated nodes until all are Running: the time, the server's RSS, kubectl's first page of `get pods -A` meanwhile),
    /// pods-run (1, 10 and 100 pods really run on a fresh server's node, as root: create →
    /// Ready p50/p99, then the server's CPU and RSS and the shims' memory with 100 idle),
    /// deployments (--deployments Deployments of 3 replicas on simulated nodes: the time
    /// until all are Available, then the server's CPU at rest and RSS),
    /// service (requests through a ClusterIP against direct, keep-alive and new connections,
    /// 1 and 64 clients, to a host process and to a pod by its IP, each for --run-ms; DNS
    /// answers/s; endpoint propagation with --services Services; as root),
    /// fsync (fdatasync latency of the disk under the temp dir), abuse (the attacks of
    /// docs/security.md for --seconds beside normal clients: their error rate and
    /// latency, /readyz, the server's peak RSS; fails on any unexpected answer).
    /// Default: fsync startup create list.
    scenarios: Vec<String>,
    /// Cluster to measure (create, list); default: a fresh `nanokube server` this bench starts.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Startup runs.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// The server the startup scenario starts, as a command line (split as a shell
    /// would, run without one) where `{data}` is its data directory (empty for the cold
    /// start, the same again for the warm one) and `{port}` a free port. Default: this
    /// binary's `server --secure-port {port} --merge-kubeconfig=false --data-dir {data}`.
    #[arg(long)]
    server_command: Option<String>,
    /// Where that server writes a kubeconfig, `{data}` and `{port}` as above: the startup
    /// scenario polls `/readyz` with its credentials until it answers 200.
    #[arg(long, default_value = "{data}/kubeconfig")]
    server_kubeconfig: String,
    /// More arguments for the servers the pods-simulated, deployments and service scenarios start
    /// (repeat it, or one `--server-arg=--flag=value` each), e.g. `--server-arg=--watch-history=50000`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// ConfigMaps created per client count.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Concurrent clients for create, comma-separated.
    #[arg(long, default_value = "1,8,64", value_delimiter = ',')]
    clients: Vec<usize>,
    /// ConfigMaps listed by the list scenario, comma-separated: each size is listed in
    /// turn, the collection growing to it (e.g. 2000,10000,100000).
    #[arg(long, default_value = "2000", value_delimiter = ',')]
    objects: Vec<usize>,
    /// Use HTTP/2 connections.
    #[arg(long)]
    http2: bool,
    /// Watcher counts for the watch scenario, comma-separated.
    #[arg(long, default_value = "1,100,1000", value_delimiter = ',')]
    watchers: Vec<usize>,
    /// Events written per watcher count in the watch scenario.
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Pods stored by the pods scenario (and run by pods-simulated).
    #[arg(long, default_value_t = 100_000)]
    pods: usize,
    /// Simulated nodes the pods-simulated scenario's server registers.
    #[arg(long, default_value_t = 100)]
    simulated_nodes: usize,
    /// Deployments (of 3 replicas each) the deployments scenario makes.
    #[arg(long, default_value_t = 1000)]
    deployments: usize,
    /// How long each load of the service scenario runs, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    run_ms: u64,
    /// Services present while the service scenario measures endpoint propagation (a
    /// tenth of them are moved, one at a time).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// How long the abuse scenario attacks, in seconds (the normal clients first run
    /// alone for a third of it).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The attacks the abuse scenario runs, comma-separated (default: all; an unknown
    /// name lists them).
    #[arg(long, value_delimiter = ',')]
    attacks: Vec<String>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// HTTPS port (0 picks a free one).
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Address advertised to clients and in the `kubernetes` Endpoints (default: the bind address).
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// Data directory: certificates, state.db, kubeconfig [default: ~/.nanokube].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Static tokens, CSV lines `token,user,uid,"group1,group2"`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Treat requests without credentials as system:anonymous (else 401).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    anonymous_auth: bool,
    /// Service ClusterIP range.
    #[arg(long, default_value = "127.96.0.0/16")]
    service_cluster_ip_range: String,
    /// NodePort range, `lo-hi`.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// The cluster DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Where the cluster DNS asks about names outside the cluster domain (IP[:PORT]);
    /// repeat for several [default: the nameservers of /etc/resolv.conf]; `none`: nowhere.
    #[arg(long = "cluster-dns-upstream", value_name = "IP[:PORT]")]
    cluster_dns_upstreams: Vec<String>,
    /// Load-balancer IPs for LoadBalancer Services (inside 127.0.0.0/8).
    #[arg(long, default_value = "127.240.0.0/16")]
    load_balancer_cidr: String,
    /// Listen on the host for Services (ClusterIPs, node ports, load-balancer IPs) and
    /// cluster DNS; `--service-proxy=false` leaves that to pods' traffic only.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    service_proxy: bool,
    /// The built-in ingress controller's HTTP port on 127.0.0.1 (with --service-proxy; 0 with
    /// --ingress-https-port=0: no ingress controller).
    #[arg(long, default_value_t = 80)]
    ingress_http_port: u16,
    /// Its HTTPS port on 127.0.0.1.
    #[arg(long, default_value_t = 443)]
    ingress_https_port: u16,
    /// Merge a `nanokube` context into $KUBECONFIG (first file) or ~/.kube/config and make it current.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    merge_kubeconfig: bool,
    /// Keep all state in memory (nothing survives a restart).
    #[arg(long)]
    in_memory: bool,
    /// Do not fsync commits: faster, but acknowledged writes can be lost if the machine crashes.
    #[arg(long)]
    unsafe_no_fsync: bool,
    /// Store the cluster in etcd instead of the embedded SQLite file: comma-separated
    /// client URLs of its members (`http://127.0.0.1:2379`, `https://…`), as
    /// kube-apiserver's flag. Several servers may share one etcd.
    #[arg(long, value_delimiter = ',', conflicts_with = "in_memory")]
    etcd_servers: Vec<String>,
    #[command(flatten)]
    etcd: EtcdConnection,
    /// How often etcd is compacted (to the revision of one interval earlier, by one of
    /// the servers sharing it); 0 never compacts. Go duration syntax: 5m, 30s, 1h.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    etcd_compaction_interval: std::time::Duration,
    /// How built-in objects are written to etcd: kube-apiserver's protobuf (so either
    /// server can take over the other's etcd) or JSON. Both are read either way.
    #[arg(long, default_value = "application/vnd.kubernetes.protobuf", value_parser = ["application/vnd.kubernetes.protobuf", "application/json"])]
    storage_media_type: String,
    /// Changes kept for watches and paged lists to resume from; a watch from an older
    /// resourceVersion gets 410 Expired, as after an etcd compaction.
    #[arg(long, default_value_t = nanokube_store::sqlite::DEFAULT_HISTORY as u64, value_parser = clap::value_parser!(u64).range(1..))]
    watch_history: u64,
    /// Most bytes of object values those changes may hold (the oldest go first).
    #[arg(long, default_value_t = nanokube_store::sqlite::DEFAULT_HISTORY_BYTES as u64, value_parser = clap::value_parser!(u64).range(1..))]
    watch_history_bytes: u64,
    /// Append one audit.k8s.io/v1 Event (Metadata level) per request to this file.
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// An AdmissionConfiguration file (apiserver.config.k8s.io/v1) with the PodSecurity
    /// plugin's PodSecurityConfiguration: default levels and exempt namespaces, users and
    /// RuntimeClasses.
    #[arg(long)]
    admission_control_config_file: Option<PathBuf>,
    /// Read-only requests' part of the server's concurrency limit, which API Priority and
    /// Fairness shares among its priority levels.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..))]
    max_requests_inflight: u32,
    /// Mutating requests' part of that limit.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    max_mutating_requests_inflight: u32,
    /// Give every ServiceAccount a legacy `<sa>-token-xxxxx` Secret, as clusters before 1.24 did.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    legacy_service_account_token_secrets: bool,
    /// The `iss` claim of bound service-account tokens.
    #[arg(long, default_value = "https://kubernetes.default.svc.cluster.local")]
    service_account_issuer: String,
    /// Also be a node: register a Node (and its Lease) that pods are scheduled to;
    /// `--node=false` runs a control plane only.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    node: bool,
    /// The Node's name (default: the host name, lowercased).
    #[arg(long)]
    node_name: Option<String>,
    /// Run the scheduler; `--scheduler=false` leaves pods unassigned, as a bare
    /// kube-apiserver does.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    scheduler: bool,
    /// Also register N simulated nodes (`sim-0` ...), kwok-style: labelled and tainted
    /// `nanokube.io/simulated=true:NoSchedule`; pods that tolerate the taint and land
    /// there become Running with IPs, statuses and events, with no process behind them.
    #[arg(long, default_value_t = 0)]
    simulated_nodes: usize,
    /// How long a pod on a simulated node takes from binding to Running (e.g. 500ms, 2s).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    simulated_start_delay: std::time::Duration,
    /// How long a simulated node takes from a pod's deletion to confirming it (kubelet
    /// stopping its containers); `kubectl delete` relies on this being more than a few
    /// milliseconds.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    simulated_stop_delay: std::time::Duration,
    /// The kubelet API's port on the advertised address (0: any free port, published in
    /// the Node's daemonEndpoints).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// kubelet's hard eviction thresholds: `signal<quantity|percent%`, comma-separated
    /// (memory.available, nodefs.available, nodefs.inodesFree, imagefs.available,
    /// imagefs.inodesFree, pid.available); while one is met the node reports the
    /// pressure, refuses new pods and evicts running ones. The default is kind's: kubelet's
    /// memory threshold, no disk thresholds; kubelet's own is
    /// `imagefs.available<15%,imagefs.inodesFree<5%,memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%`.
    #[arg(long, default_value = nanokube_node::eviction::DEFAULT_HARD, value_parser = parse_eviction_thresholds)]
    eviction_hard: String,
    /// How long a pressure condition stays after its threshold stops being met (kubelet's
    /// flag; Go duration syntax).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    eviction_pressure_transition_period: std::time::Duration,
    /// Pull images of REGISTRY from HOST[:PORT] instead (`docker.io=127.0.0.1:5000`; `*`
    /// mirrors every registry), as k3s's registries.yaml mirrors; repeat for several.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=HOST[:PORT]")]
    registry_mirrors: Vec<String>,
    /// A registry (`host:port`) the node pulls from over plain HTTP; repeat for several
    /// (loopback registries always are).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
}

/// `nanokube shim`: the per-container process the node agent starts (not for people).
#[derive(clap::Args)]
struct ShimCli {
    #[arg(long)]
    runc: PathBuf,
    #[arg(long)]
    root: PathBuf,
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long)]
    id: String,
    #[arg(long)]
    log: PathBuf,
    #[arg(long)]
    stdin: bool,
    #[arg(long)]
    stdin_once: bool,
    #[arg(long)]
    tty: bool,
}

/// `--cluster-dns-upstream` values: none given → the host's resolvers (`None`); `none`
/// → no upstream; else each `IP[:PORT]` (port 53 by default).
fn parse_upstreams(given: &[String]) -> Result<Option<Vec<std::net::SocketAddr>>, String> {
    if given.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for g in given.iter().filter(|g| *g != "none") {
        let addr = g.parse::<std::net::SocketAddr>().or_else(|_| g.parse::<IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 53)));
        out.push(addr.map_err(|_| format!("{g:?} is not IP[:PORT]"))?);
    }
    Ok(Some(out))
}

/// `--eviction-hard`, checked as kubelet parses it.
fn parse_eviction_thresholds(s: &str) -> Result<String, String> {
    nanokube_node::eviction::parse_thresholds(s).map(|_| s.to_string())
}

/// A Go-style duration (`30s`, `1m30s`, `500ms`, `0`).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    nanokube_api::schedule::parse_go_duration(s)
}

/// The home directory; where it is unset, defaults under it cannot be used.
fn home() -> Result<PathBuf, String> {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Ok(PathBuf::from(h)),
        _ => {
            Err("HOME is not set, so there is no default data directory or kubeconfig: pass --data-dir (and --merge-kubeconfig=false, or set KUBECONFIG)"
                .into())
        }
    }
}

/// `--data-dir`, or `~/.nanokube`.
fn data_dir_or_default(given: Option<PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(d) => Ok(d),
        None => Ok(home()?.join(".nanokube")),
    }
}

fn user_kubeconfig() -> Result<PathBuf, String> {
    match std::env::var("KUBECONFIG") {
        Ok(v) if !v.is_empty() => Ok(PathBuf::from(v.split(':').find(|s| !s.is_empty()).unwrap_or(&v))),
        _ => Ok(home()?.join(".kube").join("config")),
    }
}

fn main() {
    let started = Instant::now();
    let cli = Cli::parse();
    // The shim runs before any thread exists (it forks runc and reaps the container).
    if let Command::Shim(a) = &cli.command {
        std::process::exit(nanokube_runtime::shim::main(nanokube_runtime::shim::ShimArgs {
            runc: a.runc.clone(),
            root: a.root.clone(),
            bundle: a.bundle.clone(),
            id: a.id.clone(),
            log: a.log.clone(),
            stdin: a.stdin,
            stdin_once: a.stdin_once,
            tty: a.tty,
        }));
    }
    // Likewise the pause process (it forks PID 1 of a new PID namespace).
    if let Command::Pause { pid_file, userns } = &cli.command {
        std::process::exit(nanokube_runtime::pause::main(pid_file, userns.as_deref()));
    }
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    // A log that cannot be written (a full disk, a closed pipe) is dropped, never a
    // panic in whatever thread logged: the store writer logs too. Colours only on a
    // terminal.
    use std::io::IsTerminal;
    tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).log_internal_errors(false).init();
    nanokube_net::budget::raise_descriptor_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(async move {
        match cli.command {
            Command::Server(args) => run_server(*args, started).await,
            Command::Agent(a) => run_agent(a).await,
            Command::Proxy(a) => run_proxy(a).await,
            Command::Dashboard(a) => match client_access(&a) {
                Ok(access) => {
                    say!("The dashboard: {}/dashboard/", access.server);
                    say!("Log in with a bearer token, for example:  kubectl create token default");
                    say!("(give that service account rights first, e.g. kubectl create clusterrolebinding dash --clusterrole=view --serviceaccount=default:default)");
                    say!("Or open it with your own identity and no login through a proxy:");
                    say!("  nanokube proxy   (or kubectl proxy), then http://127.0.0.1:8001/dashboard/");
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            },
            Command::Map(a) => run_map(a).await,
            Command::Token(c) => run_token(c).await,
            Command::Dns(c) => run_dns(c).await,
            Command::Store(StoreCommand::Migrate { from, to, overwrite, etcd }) => {
                let tls = etcd.options(true);
                let run = async {
                    let from = nanokube::store::Location::parse(&from, &tls)?;
                    let to = nanokube::store::Location::parse(&to, &tls)?;
                    nanokube::store::migrate(&from, &to, overwrite).await
                };
                match run.await {
                    Ok(summary) => {
                        print!("{summary}");
                        0
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        1
                    }
                }
            }
            Command::Shim(_) | Command::Pause { .. } => 2,
            Command::Image(c) => {
                let data = |d: Option<PathBuf>| data_dir_or_default(d);
                let r = match c {
                    ImageCommand::Load { file, data_dir } => data(data_dir).and_then(|d| nanokube::images::load(&d, &file)),
                    ImageCommand::Ls { data_dir } => data(data_dir).and_then(|d| nanokube::images::list(&d)),
                    ImageCommand::Rm { image, data_dir } => data(data_dir).and_then(|d| nanokube::images::remove(&d, &image)),
                    ImageCommand::BuildSelf { tag, data_dir } => data(data_dir).and_then(|d| nanokube::images::build_self(&d, tag.as_deref())),
                    ImageCommand::Pull { image, data_dir, insecure, creds } => match data(data_dir) {
                        Ok(d) => {
                            let creds = creds.map(|c| {
                                let (u, p) = c.split_once(':').unwrap_or((c.as_str(), ""));
                                nanokube_runtime::pull::Credentials { username: u.to_string(), password: p.to_string() }
                            });
                            nanokube::images::pull(&d, &image, creds, &insecure).await
                        }
                        Err(e) => Err(e),
                    },
                };
                match r {
                    Ok(out) => {
                        print!("{out}");
                        0
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        1
                    }
                }
            }
            Command::Config(c) => {
                use nanokube::config;
                let r = match c {
                    ConfigCommand::View { minify, raw, output, kubeconfig } => config::view(&config::files(kubeconfig.as_deref()), minify, raw, &output),
                    ConfigCommand::CurrentContext { kubeconfig } => config::current_context(&config::files(kubeconfig.as_deref())).map(|c| c + "\n"),
                    ConfigCommand::GetContexts { kubeconfig } => config::get_contexts(&config::files(kubeconfig.as_deref())),
                    ConfigCommand::UseContext { name, kubeconfig } => config::use_context(&config::files(kubeconfig.as_deref()), &name).map(|c| c + "\n"),
                };
                match r {
                    Ok(out) => {
                        print!("{out}");
                        0
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        1
                    }
                }
            }
            Command::User(UserCommand::Add { name, groups, data_dir, output }) => {
                let data_dir = match data_dir_or_default(data_dir) {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("error: {e}");
                        std::process::exit(2);
                    }
                };
                match nanokube::users::add(&data_dir, &name, &groups, output.as_deref()) {
                    Ok(path) => {
                        println!("{}", path.display());
                        eprintln!("user {name:?} (groups {groups:?}): client certificate signed by {}/ca.crt", data_dir.display());
                        eprintln!("try: kubectl --kubeconfig {} auth whoami", path.display());
                        0
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        1
                    }
                }
            }
            Command::Bench(args) => {
                let scenarios = if args.scenarios.is_empty() { ["fsync", "startup", "create", "list"].map(String::from).to_vec() } else { args.scenarios };
                let opts = nanokube::bench::BenchOptions {
                    scenarios,
                    kubeconfig: args.kubeconfig,
                    binary: std::env::current_exe().expect("current exe"),
                    server_command: args.server_command,
                    server_kubeconfig: args.server_kubeconfig,
                    server_args: args.server_args,
                    runs: args.runs.max(1),
                    count: args.count.max(1),
                    clients: args.clients,
                    objects: args.objects,
                    json: args.json,
                    http2: args.http2,
                    watchers: args.watchers,
                    events: args.events.max(1),
                    pods: args.pods.max(1),
                    simulated_nodes: args.simulated_nodes.max(1),
                    deployments: args.deployments.max(1),
                    seconds: args.seconds.max(1),
                    attacks: args.attacks,
                    run_ms: args.run_ms,
                    services: args.services,
                };
                match nanokube::bench::run(opts).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("error: {e}");
                        1
                    }
                }
            }
        }
    });
    std::process::exit(code);
}

fn client_access(a: &ClientArgs) -> Result<nanokube::client::ClusterAccess, String> {
    let files = nanokube::config::files(a.kubeconfig.as_deref());
    let f = files
        .iter()
        .find(|f| f.exists())
        .ok_or_else(|| format!("no kubeconfig found in {files:?}: start a cluster with `nanokube server`, or pass --kubeconfig"))?;
    nanokube::client::ClusterAccess::from_kubeconfig(f, a.context.as_deref())
}

/// `--registry-mirror REGISTRY=HOST[:PORT]` values as pairs.
fn parse_mirrors(given: &[String]) -> Result<Vec<(String, String)>, String> {
    given
        .iter()
        .map(|m| match m.split_once('=') {
            Some((r, e)) if !r.is_empty() && !e.is_empty() => Ok((r.to_string(), e.to_string())),
            _ => Err(format!("--registry-mirror must look like docker.io=127.0.0.1:5000 (or *=HOST:PORT), not {m:?}")),
        })
        .collect()
}

async fn run_agent(a: AgentArgs) -> i32 {
    let data_dir = match a.data_dir.map(Ok).unwrap_or_else(|| home().map(|h| h.join(".nanokube-agent"))) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let registry_mirrors = match parse_mirrors(&a.registry_mirrors) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let cfg = nanokube::agent::AgentConfig {
        server: a.server,
        token: a.token,
        ca_cert_hashes: a.ca_cert_hashes,
        unsafe_skip_ca_verification: a.unsafe_skip_ca_verification,
        node_name: a.node_name.unwrap_or_else(nanokube_node::machine::hostname),
        kubelet_port: a.kubelet_port,
        data_dir,
        node_ip: a.node_ip,
        service_cidr: a.service_cidr,
        eviction_hard: nanokube_node::eviction::parse_thresholds(&a.eviction_hard).unwrap_or_default(),
        registry_mirrors,
        insecure_registries: a.insecure_registries,
    };
    use tokio::signal::unix::{signal, SignalKind};
    let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: installing signal handlers: {e}");
            return 1;
        }
    };
    let agent = match nanokube::agent::Agent::start(cfg).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    say!("node {:?} joined and registered; its credentials are in {}", agent.node_name, agent.kubeconfig.display());
    if let Some(why) = &agent.not_ready {
        say!("  it runs no pods: {why}");
    }
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    say!("stopping the node's pods");
    agent.stop().await;
    0
}

async fn run_token(c: TokenCommand) -> i32 {
    let client_for = |a: &ClientArgs| client_access(a).map(|access| nanokube::client::ApiClient::from_access(&access, false));
    let result = match c {
        TokenCommand::Create { token, ttl, description, groups, print_join_command, client } => match client_access(&client) {
            Ok(access) => {
                let api = nanokube::client::ApiClient::from_access(&access, false);
                // The first token brings what kubeadm's init adds for joining nodes.
                let ca = String::from_utf8_lossy(access.ca_pem.as_deref().unwrap_or_default()).into_owned();
                let new = nanokube::tokens::NewToken { token: token.as_deref(), ttl_seconds: ttl.as_secs(), description: &description, groups: &groups };
                nanokube::tokens::create(&api, &new, &access.server, &ca).await.map(|t| {
                    if print_join_command {
                        let pins: Vec<String> = nanokube::join::public_key_hashes(&ca).iter().map(|h| format!(" --discovery-token-ca-cert-hash {h}")).collect();
                        say!("nanokube agent --server {} --token {t}{}", access.server, pins.concat());
                    } else {
                        say!("{t}");
                    }
                })
            }
            Err(e) => Err(e),
        },
        TokenCommand::List(client) => match client_for(&client) {
            Ok(api) => nanokube::tokens::list(&api).await.map(|lines| {
                for l in lines {
                    say!("{l}");
                }
            }),
            Err(e) => Err(e),
        },
        TokenCommand::Delete { token, client } => match client_for(&client) {
            Ok(api) => nanokube::tokens::delete(&api, &token).await.map(|()| say!("bootstrap token {:?} deleted", token.split('.').next().unwrap_or(""))),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn run_dns(c: DnsCommand) -> i32 {
    match c {
        DnsCommand::Lookup { name, record_type, server } => match nanokube_net::dns::lookup(server, &name, &record_type, std::time::Duration::from_secs(3)) {
            Ok((code, answers)) => {
                say!(";; {code}, {} answer(s) from {server}", answers.len());
                for a in &answers {
                    say!("{a}");
                }
                i32::from(code != "NOERROR")
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
        DnsCommand::Hosts { write, remove, follow, file, cluster_domain, client } => {
            if remove {
                return match nanokube::dns::remove_block(&file) {
                    Ok(true) => {
                        eprintln!("removed nanokube's block from {}", file.display());
                        0
                    }
                    Ok(false) => {
                        eprintln!("{} has no nanokube block", file.display());
                        0
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        1
                    }
                };
            }
            let access = match client_access(&client) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("error: {e}");
                    return 1;
                }
            };
            let api = nanokube::client::ApiClient::from_access(&access, false);
            if follow {
                use tokio::signal::unix::{signal, SignalKind};
                let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => {
                        eprintln!("error: installing signal handlers: {e}");
                        return 1;
                    }
                };
                let stop = async move {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                };
                return match nanokube::dns::follow(&api, &file, &cluster_domain, stop).await {
                    Ok(()) => {
                        eprintln!("removed nanokube's block from {}", file.display());
                        0
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        1
                    }
                };
            }
            let services = match nanokube::dns::list_services(&api).await {
                Ok((services, _)) => services,
                Err(e) => {
                    eprintln!("error: {e}");
                    return 1;
                }
            };
            let block = nanokube::dns::hosts_block(&services, &cluster_domain);
            if !write {
                say!("{}", block.trim_end());
                return 0;
            }
            match nanokube::dns::write_block(&file, &block) {
                Ok(()) => {
                    eprintln!("wrote {} Service name(s) into {} (undo: nanokube dns hosts --remove)", block.lines().count().saturating_sub(2), file.display());
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
    }
}

async fn run_map(a: MapArgs) -> i32 {
    let access = match client_access(&a.client) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let client = nanokube::client::ApiClient::from_access(&access, false);
    let path = if a.svg.is_some() { "/access-map?format=svg" } else { "/access-map" };
    match client.request("GET", path, None, None, bytes::Bytes::new()).await {
        Ok((200, body)) => match &a.svg {
            Some(file) => match std::fs::write(file, &body) {
                Ok(()) => {
                    eprintln!("wrote {} ({} bytes)", file.display(), body.len());
                    0
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    1
                }
            },
            None => {
                say!("{}", String::from_utf8_lossy(&body));
                0
            }
        },
        Ok((code, body)) => {
            let msg = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from));
            eprintln!("error: the server answered {code}: {}", msg.unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned()));
            1
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn run_proxy(a: ProxyArgs) -> i32 {
    use nanokube::client::ClusterAccess;
    let keepalive = match parse_duration(&a.keepalive) {
        Ok(d) => (!d.is_zero()).then_some(d),
        Err(e) => {
            eprintln!("error: --keepalive: {e}");
            return 2;
        }
    };
    // The service-account directory if one is named; else a kubeconfig if one is given
    // or present; otherwise the pod's service account.
    let files = nanokube::config::files(a.kubeconfig.as_deref());
    let have_kubeconfig = a.kubeconfig.is_some() || std::env::var("KUBECONFIG").is_ok_and(|v| !v.is_empty()) || files.iter().any(|f| f.exists());
    let access = if let Some(dir) = &a.service_account_dir {
        ClusterAccess::in_cluster(dir)
    } else if have_kubeconfig {
        let Some(f) = files.iter().find(|f| f.exists()) else {
            eprintln!("error: no kubeconfig found in {files:?}");
            return 1;
        };
        ClusterAccess::from_kubeconfig(f, a.context.as_deref())
    } else {
        ClusterAccess::in_cluster(std::path::Path::new(nanokube::client::SERVICE_ACCOUNT_DIR)).map_err(|e| {
            format!(
                "no kubeconfig found (--kubeconfig, $KUBECONFIG, {}) and not in a pod ({e}); start a cluster with `nanokube server`, or pass --kubeconfig",
                files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
            )
        })
    };
    let access = match access {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let opts = nanokube::proxy::ProxyOptions {
        address: a.address,
        port: a.port,
        unix_socket: a.unix_socket,
        api_prefix: a.api_prefix,
        accept_hosts: a.accept_hosts,
        accept_paths: a.accept_paths,
        reject_paths: a.reject_paths,
        reject_methods: a.reject_methods,
        disable_filter: a.disable_filter,
        www: a.www,
        www_prefix: a.www_prefix,
        keepalive,
        append_server_path: a.append_server_path,
    };
    let serve = nanokube::proxy::run(opts, access, |addr| {
        // kubectl's exact words, so scripts that wait for them keep working.
        println!("Starting to serve on {addr}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    });
    // SIGTERM ends the proxy as it ends kubectl's, also as a container's PID 1 (where a
    // signal without a handler is ignored): a sidecar stops at once when its pod does.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: installing signal handlers: {e}");
            return 1;
        }
    };
    let r = tokio::select! {
        r = serve => r,
        _ = term.recv() => return 143,
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn run_server(args: ServerArgs, started: Instant) -> i32 {
    let Some((lo, hi)) = args.service_node_port_range.split_once('-').and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
    else {
        eprintln!("error: --service-node-port-range must look like 30000-32767");
        return 2;
    };
    let data_dir = match data_dir_or_default(args.data_dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let merge = match args.merge_kubeconfig.then(user_kubeconfig).transpose() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let cfg = ClusterConfig {
        bind_address: args.bind_address,
        secure_port: args.secure_port,
        advertise_address: args.advertise_address,
        data_dir,
        token_auth_file: args.token_auth_file,
        anonymous_auth: args.anonymous_auth,
        service_cidr: args.service_cluster_ip_range,
        node_port_range: (lo, hi),
        cluster_domain: args.cluster_domain,
        dns_upstreams: match parse_upstreams(&args.cluster_dns_upstreams) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("error: --cluster-dns-upstream: {e}");
                return 2;
            }
        },
        load_balancer_cidr: args.load_balancer_cidr,
        service_proxy: args.service_proxy,
        ingress_ports: (args.ingress_http_port, args.ingress_https_port),
        merge_kubeconfig: merge.clone(),
        in_memory: args.in_memory,
        etcd: (!args.etcd_servers.is_empty()).then(|| nanokube_store::etcd::EtcdOptions {
            endpoints: args.etcd_servers.clone(),
            compaction_interval: args.etcd_compaction_interval,
            ..args.etcd.options(args.storage_media_type == "application/vnd.kubernetes.protobuf")
        }),
        fsync: !args.unsafe_no_fsync,
        watch_history: args.watch_history as usize,
        watch_history_bytes: args.watch_history_bytes as usize,
        audit_log_path: args.audit_log_path,
        admission_control_config_file: args.admission_control_config_file,
        max_requests_inflight: args.max_requests_inflight,
        max_mutating_requests_inflight: args.max_mutating_requests_inflight,
        legacy_service_account_token_secrets: args.legacy_service_account_token_secrets,
        service_account_issuer: args.service_account_issuer,
        node: args.node,
        node_name: args.node_name,
        scheduler: args.scheduler,
        simulated_nodes: args.simulated_nodes,
        simulated_start_delay: args.simulated_start_delay,
        simulated_stop_delay: args.simulated_stop_delay,
        registry_mirrors: Vec::new(),
        insecure_registries: args.insecure_registries,
        kubelet_port: args.kubelet_port,
        eviction_hard: nanokube_node::eviction::parse_thresholds(&args.eviction_hard).unwrap_or_default(),
        eviction_pressure_transition_period: args.eviction_pressure_transition_period,
        controller_clock: std::sync::Arc::new(nanokube_controllers::clock::SystemClock),
    };
    let mut cfg = cfg;
    match parse_mirrors(&args.registry_mirrors) {
        Ok(m) => cfg.registry_mirrors.extend(m),
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    }
    let cluster = match Cluster::start(cfg).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    // The handlers exist before "ready" is printed: a Ctrl-C right after it must stop the
    // server cleanly, not kill it by the signal's default action.
    use tokio::signal::unix::{signal, SignalKind};
    let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: installing signal handlers: {e}");
            return 1;
        }
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    say!("nanokube is ready at {} ({ms:.1} ms after start)", cluster.server_url);
    for f in &cluster.created {
        say!("  created    {}", f.display());
    }
    say!("  data dir   {}", cluster.data_dir.display());
    say!("  kubeconfig {}", cluster.kubeconfig.display());
    match &merge {
        Some(m) => say!("  merged context \"nanokube\" into {} and made it current", m.display()),
        None => say!("  (not merged into any other kubeconfig)"),
    }
    say!();
    say!("Try:");
    say!("  kubectl --kubeconfig {} get namespaces", cluster.kubeconfig.display());
    say!("  curl --cacert {dir}/ca.crt --cert {dir}/client.crt --key {dir}/client.key {}/api", cluster.server_url, dir = cluster.data_dir.display());
    say!("  the dashboard: {}/dashboard/ (log in with a token: kubectl create token <service-account>)", cluster.server_url);
    let signal = tokio::select! {
        _ = int.recv() => "interrupt",
        _ = term.recv() => "SIGTERM",
    };
    {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "nanokube: {signal}: stopping (open watches end, the store is closed cleanly)");
    }
    cluster.shutdown().await;
    {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "nanokube: stopped");
    }
    0
}
