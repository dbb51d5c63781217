//! Link the `nanokube` binary as a position-dependent executable (`-no-pie`). Every pod
//! runs a shim, a re-exec of this binary; as a PIE, the loader relocates the binary's
//! ~1 MiB of `.data.rel.ro` (vtables, static tables of pointers) in each process, making
//! those pages private to it. Linked at fixed addresses they stay clean and shared with
//! the server and every other shim. Only the binaries are linked this way: the libraries
//! (and proc-macros) stay position-independent.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
