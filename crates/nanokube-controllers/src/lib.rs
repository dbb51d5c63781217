//! nanokube's in-process controllers.
//!
//! They act through [`nanokube_apiserver::registry::Registry`], the same code path as
//! HTTP writes (defaults, validation, allocation, conflicts), as the system itself rather
//! than as a user. Each is a loop over store watches that reconciles what it is told
//! about, plus a full pass at start.
//!
//! - [`apiservices`]: a local APIService for every served group-version (CRDs'
//!   included), and the ConfigMap aggregated API servers read their trust from.
//! - [`bootstrap`]: what every cluster has at start: the four namespaces and the
//!   `kubernetes` Service with its Endpoints and EndpointSlice.
//! - [`namespaces`]: a `default` ServiceAccount and a `kube-root-ca.crt` ConfigMap in every
//!   namespace (recreated if deleted), and namespace termination (delete the contents,
//!   then clear the `kubernetes` finalizer).
//! - [`crds`]: CustomResourceDefinitions become served resources (status, conditions,
//!   name conflicts), and their objects are deleted with them.
//! - [`scheduler`]: kube-scheduler's default profile where it matters on a few nodes.
//! - [`node_ipam`]: every Node gets its own block of the cluster CIDR for its pods
//!   (`spec.podCIDR`), as kube-controller-manager's range allocator gives them.
//! - [`node_lifecycle`]: not-ready and unreachable nodes tainted, stale ones `Unknown`.
//! - [`persistent_volumes`]: claims bound to volumes, provisioning handed to the class's
//!   provisioner, phases, and the protection finalizers let go.
//! - [`gc`]: the garbage collector (ownerReferences; background, foreground, orphan).
//! - [`tokens`]: legacy service-account token Secrets.
//! - [`workqueue`]: the machinery the workload controllers share (client-go's rate-limited
//!   work queue, and expectations of a controller's own writes), fed by `informers`
//!   (one follower per store prefix, each change decoded once for every controller).
//! - [`replicasets`]: ReplicaSets and ReplicationControllers keep their pods.
//! - [`endpoints`]: Endpoints and EndpointSlices of Services with selectors.
//! - [`endpointslice_mirroring`]: the Endpoints users write for Services without a
//!   selector, mirrored into EndpointSlices.
//! - [`deployments`]: Deployments roll ReplicaSets (RollingUpdate, Recreate, pause,
//!   history), with upstream's annotations, status and conditions.
//! - [`jobs`]: Jobs run pods to completion (finalizer tracking, back-off, Indexed,
//!   failure and success policies, deadlines, suspend), and finished Jobs expire after
//!   `ttlSecondsAfterFinished`.
//! - [`cronjobs`]: CronJobs make Jobs at their scheduled times (time zones, missed
//!   times and deadlines, concurrency policies, history limits).
//! - [`leader`]: leader election on a Lease, so that of servers sharing a store one runs
//!   the controllers and one the scheduler.
//! - [`certificates`]: approved CertificateSigningRequests for the kube-apiserver client,
//!   kubelet client and kubelet serving signers are signed with the cluster CA.
//! - [`disruption`]: PodDisruptionBudgets' status (healthy, expected, disruptions
//!   allowed), which the eviction subresource spends.
//! - [`statefulsets`]: StatefulSets keep ordered pods with stable names and claims
//!   (OrderedReady/Parallel, RollingUpdate with partition, OnDelete, revisions).
//! - [`daemonsets`]: DaemonSets keep one pod on every node that should run one.
//! - [`quota`]: ResourceQuotas' `status.used`, recounted from what is stored.
//! - [`taint_eviction`]: pods leave nodes with `NoExecute` taints they do not tolerate
//!   (at once, or after their `tolerationSeconds`).
//! - [`pod_gc`]: pods of nodes that are gone, never-scheduled pods being deleted, and
//!   terminated pods beyond the threshold are removed.
//! - [`event_ttl`]: Events expire an hour after their last write.
//! - [`hpa`]: HorizontalPodAutoscalers scale their targets on cpu and memory figures.
//! - [`pod_template_hash`]: upstream's `ComputeHash` of a pod template (go-spew's dump of
//!   the Go struct), behind `pod-template-hash` and DaemonSets' revision names.
//! - [`clock`]: the time controllers read, replaceable in tests.
//! - [`flowcontrol`]: kube-apiserver's API Priority and Fairness bootstrap configuration
//!   (FlowSchemas, PriorityLevelConfigurations) and the FlowSchemas' `Dangling` condition.
//! - [`rbac_policy`]: kube-apiserver 1.33's default RBAC policy (ClusterRoles,
//!   ClusterRoleBindings, Roles, RoleBindings), recreated if deleted.
//! - [`rbac_aggregation`]: ClusterRoles with an `aggregationRule` get the rules of the
//!   roles it selects.

pub mod apiservices;
pub mod bootstrap;
pub mod bootstrap_tokens;
pub mod certificates;
pub mod clock;
pub mod crds;
pub mod cronjobs;
pub mod csr_cleaner;
pub mod daemonsets;
pub mod deployments;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice_mirroring;
pub mod event_ttl;
mod events;
pub mod flowcontrol;
pub mod gc;
mod history;
pub mod hpa;
mod informers;
pub mod jobs;
pub mod leader;
pub mod namespaces;
pub mod node_ipam;
pub mod node_lifecycle;
mod objects;
pub mod persistent_volumes;
pub mod pod_gc;
pub mod pod_template_hash;
pub mod quota;
pub mod rbac_aggregation;
pub mod rbac_policy;
pub mod replica_calculator;
pub mod replicasets;
pub mod scheduler;
pub mod service_cidrs;
pub mod statefulsets;
pub mod taint_eviction;
pub mod tokens;
pub mod workqueue;

/// Wait for concurrent writes (spawned so they share the store's commits); the first
/// error is returned unless its code is one of `expected` (a write raced by another
/// writer: an object created meanwhile, or gone).
pub(crate) async fn join_writes<T: 'static>(
    writes: &mut tokio::task::JoinSet<Result<T, nanokube_api::ApiError>>,
    expected: &[u16],
) -> Result<(), nanokube_api::ApiError> {
    while let Some(r) = writes.join_next().await {
        match r.map_err(|e| nanokube_api::ApiError::internal(e.to_string()))? {
            Ok(_) => {}
            Err(e) if expected.contains(&e.code) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
