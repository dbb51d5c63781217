//! nanokube's API server.
//!
//! The request path, one module per concern, as kube-apiserver splits it:
//!
//! ```text
//! server (TLS, HTTP/1.1 + h2)        → handler (route, encode)
//!   → authn (x509 ∪ bearer ∪ anonymous) → request (RequestInfo)
//!   → impersonation → authz (system:masters, then RBAC) → audit, metrics
//!   → discovery | openapi | health | version | reviews | resources
//!        resources: decode (JSON, YAML, protobuf) → registry (prepare, defaults,
//!        admission, validation, allocation) → store (nanokube-store)
//! ```
//!
//! Layers only look down: the registry never sees HTTP; authentication never sees
//! resources. [`registry::Registry`] is also the in-process API the controllers use.

pub mod access_map;
pub mod admission;
pub mod aggregator;
pub mod alloc;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod backend;
pub mod bootstrap_token;
pub mod cluster;
pub mod coalesce;
pub mod component_status;
pub mod dashboard;
pub mod discovery;
pub mod events;
pub mod eviction;
pub mod fieldmanager;
pub mod handler;
pub mod http;
pub mod kubeconfig;
pub mod lanes;
pub mod metrics;
pub mod node_authz;
pub mod node_link;
pub mod node_proxy;
pub mod openapi;
pub mod origins;
pub mod patch;
pub mod pki;
pub mod pod_exec;
pub mod pod_logs;
pub mod pod_portforward;
pub mod priority_and_fairness;
pub mod pump;
pub mod rbac;
pub mod registry;
pub mod request;
pub mod reservations;
pub mod resource_metrics;
pub mod reviews;
pub mod satoken;
pub mod server;
pub mod service_proxy;
pub mod spdy;
pub mod storage_codec;
pub mod store_follow;
mod tables;
pub mod upgrade;
mod watch;
