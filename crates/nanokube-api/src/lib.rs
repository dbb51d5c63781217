//! The Kubernetes object model as nanokube serves it.
//!
//! Objects stay `serde_json::Value` on the server's generic path (as the design brief
//! asks); this crate holds everything about them that is pure data and logic:
//!
//! - [`resources`]: the table of built-in resources (group, version, kind, plural,
//!   scope, verbs, short names, subresources) that discovery, routing and storage read.
//! - [`error`]: [`error::ApiError`], rendered as a `metav1.Status` with upstream's codes,
//!   reasons and messages.
//! - [`selector`]: label and field selectors with upstream's syntax and errors.
//! - [`table`]: server-side `Table` rendering with upstream's default columns.
//! - [`validation`] and [`defaults`]: per-kind checks and defaults clients read back.
//! - [`go_order`]: built-in objects' JSON in the order of their Go structs' fields.
//! - [`meta`]: small helpers over `metadata`, timestamps and generated names.
//! - [`protobuf`]: decoding of kubectl's protobuf request bodies into JSON.
//! - [`quota`]: what ResourceQuotas count and LimitRanges impose.
//! - [`pod_resize`]: what `pods/resize` keeps and refuses; the pod QoS class.
//! - [`schedule`]: CronJob schedules and time zones (the zone data is built in).
//!
//! Invariant: this crate never does IO and never blocks.

/// A hash map for the fixed tables built once and read on every field of every write
/// (their keys are the schema's, not a client's), with a faster hash than SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub mod convert;
pub mod crd;
pub mod defaults;
pub mod error;
pub mod expressions;
pub mod go_omitempty;
pub mod go_order;
pub mod json;
pub mod meta;
pub mod pod_resize;
pub mod protobuf;
pub mod protobuf_encode;
pub mod quantity;
pub mod quota;
pub mod resources;
pub mod schedule;
pub mod selector;
pub mod table;
pub mod validation;

pub use error::ApiError;
pub use resources::ResourceDef;
