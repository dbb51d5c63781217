//! nanokube's container runtime side. So far the image store:
//!
//! - [`reference`]: image references normalized as containerd does.
//! - [`store`]: the content-addressed store in the data directory (`content/`): blobs,
//!   layers unpacked once for overlays (whiteouts as overlayfs's), the image records.
//! - [`archive`]: `docker save` and OCI image-layout archives imported with their names
//!   (`nanokube image load`, and k3s's air-gap directory `<data-dir>/images/` at start).
//! - [`pull`]: pulling from registries with `oci-client`.
//!
//! Invariants: every blob is verified against its digest before it is stored; every
//! write lands by rename; the store is shared by the server and `nanokube image` commands
//! through a lock file. Not here yet: containers (the OCI runtime), which come with the
//! node agent's pod workers.

pub mod archive;
pub mod pull;
pub mod reference;
pub mod store;
mod unpack;

pub use reference::Reference;
pub use store::{Image, ImageStore};
