//! Survives a client shrinking a segment under the server's mapping.
//!
//! A client owns its segment: it can `ftruncate` it to 0 at any moment, and the next access to a
//! page past the new end raises SIGBUS, which by default kills the server. A size check before
//! each use (see `Region::check_size`) catches a segment shrunk between requests, but not one
//! shrunk while a request reads or writes it. So every mapping is also listed here, and a SIGBUS
//! handler that finds the faulting address inside a listed mapping replaces that whole mapping with
//! private zero pages (`mmap(MAP_FIXED | MAP_ANONYMOUS)`), marks it poisoned and returns: the access
//! completes on zeros, and the request that used it is failed afterwards (the poisoned flag is
//! checked before answering). A fault anywhere else goes on to the handler that was there before
//! (Rust's stack-overflow handler, or the default action), so real bugs still crash as before.
//!
//! The table is a fixed array of atomics because a signal handler may not lock or allocate.
//! A slot is cleared before its mapping is unmapped, and the unmapping waits until no handler is
//! running: a handler can never act on an address range that was already given back to the system.

use std::sync::Once;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

/// Mappings that can be watched at once: the most regions a server can have registered
/// (`--shm-max-regions` is capped to it).
pub const MAX_WATCHED: usize = 4096;

struct Slot {
    claimed: AtomicBool,
    start: AtomicUsize,
    /// 0 while the slot is not watching anything; set last, cleared first.
    len: AtomicUsize,
    poisoned: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    claimed: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    poisoned: AtomicBool::new(false),
};
static SLOTS: [Slot; MAX_WATCHED] = [EMPTY; MAX_WATCHED];
/// Handlers running now; an unwatch waits for 0 before its mapping may be unmapped.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// One watched mapping. Dropping it stops the watch; drop it before unmapping.
#[derive(Debug)]
pub(crate) struct Watch {
    slot: usize,
}

impl Watch {
    /// Starts watching `[start, start + len)`, a mapping of ours. `None` when every slot is taken or
    /// the handler could not be installed.
    pub(crate) fn new(start: *const u8, len: usize) -> Option<Watch> {
        install();
        if !INSTALLED.load(SeqCst) || len == 0 {
            return None;
        }
        let slot = SLOTS.iter().position(|slot| slot.claimed.compare_exchange(false, true, SeqCst, SeqCst).is_ok())?;
        let entry = &SLOTS[slot];
        entry.poisoned.store(false, SeqCst);
        entry.start.store(start as usize, SeqCst);
        entry.len.store(len, SeqCst);
        Some(Watch { slot })
    }

    /// Whether a fault replaced the mapping with zero pages: its contents are gone for good.
    pub(crate) fn poisoned(&self) -> bool {
        SLOTS[self.slot].poisoned.load(SeqCst)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let entry = &SLOTS[self.slot];
        entry.len.store(0, SeqCst);
        // A handler that started before the store above may still compare against this range.
        while ACTIVE.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        entry.start.store(0, SeqCst);
        entry.claimed.store(false, SeqCst);
    }
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sigaction with a zeroed struct, our handler and SA_SIGINFO | SA_ONSTACK (Rust's
        // runtime gives threads an alternate stack for its own SIGSEGV/SIGBUS handler) is the
        // documented way to install a handler; `previous` receives the one it replaces.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &action, &mut previous) == 0 {
                let _ = PREVIOUS.set(previous);
                INSTALLED.store(true, SeqCst);
            } else {
                tracing::warn!("cannot install the SIGBUS handler: {}", std::io::Error::last_os_error());
            }
        }
    });
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    ACTIVE.fetch_add(1, SeqCst);
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    let mut handled = false;
    for entry in &SLOTS {
        let len = entry.len.load(SeqCst);
        if len == 0 {
            continue;
        }
        let start = entry.start.load(SeqCst);
        if address >= start && address - start < len {
            // SAFETY: [start, start + len) is a live mapping of ours (its Watch clears the slot and
            // waits for ACTIVE == 0 before it may be unmapped); replacing it with anonymous pages
            // of the same size keeps every pointer into it valid. mmap is a plain system call.
            let remapped = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if remapped != libc::MAP_FAILED {
                entry.poisoned.store(true, SeqCst);
                handled = true;
            }
            break;
        }
    }
    ACTIVE.fetch_sub(1, SeqCst);
    if !handled {
        // SAFETY: forwarding the signal to the handler we replaced, with the kernel's arguments.
        unsafe { forward(signal, info, context) };
    }
}

/// Hands a fault that is not ours to the previous handler; with none, restores the default action
/// so that returning re-runs the faulting access and the process dies of SIGBUS as it would have.
unsafe fn forward(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let Some(previous) = PREVIOUS.get() else { return reset_default(signal) };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        return reset_default(signal);
    }
    if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: an SA_SIGINFO handler has this signature.
        let function: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        function(signal, info, context);
    } else {
        // SAFETY: a plain handler takes the signal number only.
        let function: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        function(signal);
    }
}

fn reset_default(signal: libc::c_int) {
    // SAFETY: restoring SIG_DFL for this signal; async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}
