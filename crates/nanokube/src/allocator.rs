//! The process's memory allocator, chosen once, at the first allocation: mimalloc for the
//! server and the other commands (glibc's malloc took about 30% of the server's CPU under
//! load, see docs/performance.md), the system's for the helpers that live beside every
//! container (`nanokube shim`, `nanokube pause`), where mimalloc's per-thread segments
//! would cost more memory than such a process uses at all. `NANOKUBE_ALLOCATOR=system` asks
//! for the system allocator anywhere (for heap profilers).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

/// The allocator of this process.
pub struct Chosen;

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// The choice, made at the first call (before it, nothing was allocated, so every block
/// is freed by the allocator that made it). At the first allocation only the main thread
/// runs.
fn choice() -> u8 {
    match CHOICE.load(Ordering::Relaxed) {
        UNDECIDED => {
            let c = if is_container_helper() || system_asked() { SYSTEM } else { MIMALLOC };
            if c == MIMALLOC {
                lean_mimalloc();
            }
            CHOICE.store(c, Ordering::Relaxed);
            c
        }
        c => c,
    }
}

/// mimalloc's options for a long-running server that should hold no more memory than it
/// uses: segments and arenas committed as they are used rather than whole, and freed pages
/// given back after 2 ms rather than 10. Measured (`nanokube bench pods-run`): the server
/// with 100 pods holds 79 MiB instead of 118. Giving pages back at once (a delay of 0)
/// held 2 MiB less but made every free of a large tree an `madvise` whose TLB shootdown
/// interrupts the other core: 18% of the read lane's time under a write flood, and
/// kubectl's first page took up to 67 ms instead of 42 (`bench pods-simulated`). (Indices
/// of mimalloc 2's `mi_option_e`; the crate names only some of them.)
fn lean_mimalloc() {
    const EAGER_COMMIT: libmimalloc_sys::mi_option_t = 3;
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    for (option, value, env) in
        [(EAGER_COMMIT, 0, c"MIMALLOC_EAGER_COMMIT"), (ARENA_EAGER_COMMIT, 0, c"MIMALLOC_ARENA_EAGER_COMMIT"), (PURGE_DELAY, 2, c"MIMALLOC_PURGE_DELAY")]
    {
        // SAFETY: reads the environment and sets one of mimalloc's options; allocates
        // nothing. Called once, while only the main thread runs. mimalloc's own variable,
        // when set, wins (it reads it itself).
        unsafe {
            if libc::getenv(env.as_ptr()).is_null() {
                libmimalloc_sys::mi_option_set(option, value);
            }
        }
    }
}

/// Whether `NANOKUBE_ALLOCATOR=system` asks for the system allocator, so heap profilers
/// that hook `malloc` (heaptrack, valgrind) see every allocation.
fn system_asked() -> bool {
    // SAFETY: getenv reads the environment without allocating; the pointer it returns is
    // read at once, while only the main thread runs (nothing can change the environment).
    unsafe {
        let v = libc::getenv(c"NANOKUBE_ALLOCATOR".as_ptr());
        !v.is_null() && std::ffi::CStr::from_ptr(v).to_bytes() == b"system"
    }
}

/// Whether this process runs `nanokube shim` or `nanokube pause` (how the node starts
/// them: the subcommand is the first argument). Read from `/proc/self/cmdline` into a
/// buffer on the stack: this runs inside the allocator, so it must not allocate.
fn is_container_helper() -> bool {
    let mut buf = [0u8; 256];
    // SAFETY: open, read and close a file into a buffer we own; no memory is shared.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/cmdline".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let Ok(n) = usize::try_from(n) else { return false };
    let mut args = buf[..n.min(buf.len())].split(|b| *b == 0);
    args.next();
    matches!(args.next(), Some(b"shim") | Some(b"pause"))
}

// SAFETY: every call goes to the one allocator chosen before the first block was made,
// so each block is freed and resized by the allocator that made it.
unsafe impl GlobalAlloc for Chosen {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if choice() == MIMALLOC {
            mimalloc::MiMalloc.alloc(layout)
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if choice() == MIMALLOC {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if choice() == MIMALLOC {
            mimalloc::MiMalloc.dealloc(ptr, layout)
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if choice() == MIMALLOC {
            mimalloc::MiMalloc.realloc(ptr, layout, new_size)
        } else {
            System.realloc(ptr, layout, new_size)
        }
    }
}
