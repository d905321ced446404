//! Process signals: SIGTERM/SIGINT (graceful stop, a second one means "now") and SIGHUP
//! (reload rules.yaml). The only `unsafe` in the crate lives here.
//!
//! std has no signal API, so this binds libc's `sigaction` (libc is linked by std already)
//! with a hand-written `struct sigaction` for Linux. The handler is async-signal-safe by
//! construction: it only increments / stores atomics. Everything else (draining the queue,
//! saving the checkpoint, reloading rules) happens on ordinary threads that poll
//! [`terminate_requests`] and [`take_reload`].
//!
//! The crate root denies `unsafe_code`; this module alone allows it, for `sigaction`.

#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// SIGTERM and SIGINT seen so far (the agent stops gracefully on 1, at once on 2).
static TERMINATE: AtomicU32 = AtomicU32::new(0);
/// SIGHUP seen since the last [`take_reload`].
static RELOAD: AtomicBool = AtomicBool::new(false);
/// SIGHUP seen in total (for logs and tests).
static RELOADS: AtomicU32 = AtomicU32::new(0);

/// Signal numbers; identical on every Linux architecture this module supports.
pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

/// How many SIGTERM/SIGINT were received since the process started.
pub fn terminate_requests() -> u32 {
    TERMINATE.load(Ordering::SeqCst)
}

/// Whether a SIGHUP arrived since the last call (resets the flag). Several SIGHUPs between two
/// calls collapse into one reload, which is what a reload wants.
pub fn take_reload() -> bool {
    RELOAD.swap(false, Ordering::SeqCst)
}

/// How many SIGHUP were received since the process started.
pub fn reload_requests() -> u32 {
    RELOADS.load(Ordering::SeqCst)
}

/// The handler: runs on whatever thread the kernel picks, in signal context, so it touches
/// nothing but lock-free atomics (async-signal-safe).
extern "C" fn on_signal(sig: i32) {
    match sig {
        SIGHUP => {
            RELOADS.fetch_add(1, Ordering::SeqCst);
            RELOAD.store(true, Ordering::SeqCst);
        }
        _ => {
            TERMINATE.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "x86",
        target_arch = "arm",
        target_arch = "loongarch64"
    )
))]
mod sys {
    use std::io;

    /// `SA_RESTART`: interrupted blocking calls (reads, accepts, sleeps) resume instead of
    /// failing with EINTR, so no other module has to care about signals.
    const SA_RESTART: i32 = 0x1000_0000;

    /// `sigset_t`: 1024 bits as an array of `unsigned long` (glibc and musl alike), so its
    /// alignment follows the word size on 32-bit targets too.
    const MASK_WORDS: usize = 1024 / (8 * std::mem::size_of::<usize>());

    /// glibc's and musl's `struct sigaction` on the architectures above: handler, a 1024-bit
    /// `sigset_t`, `int sa_flags`, then `sa_restorer` (filled in by libc itself).
    #[repr(C)]
    struct SigAction {
        sa_handler: usize,
        sa_mask: [usize; MASK_WORDS],
        sa_flags: i32,
        sa_restorer: usize,
    }

    // The kernel/libc ABI sizes: 152 bytes on 64-bit, 140 on 32-bit targets.
    #[cfg(target_pointer_width = "64")]
    const _: () = assert!(std::mem::size_of::<SigAction>() == 152);
    #[cfg(target_pointer_width = "32")]
    const _: () = assert!(std::mem::size_of::<SigAction>() == 140);

    extern "C" {
        fn sigaction(signum: i32, act: *const SigAction, oldact: *mut SigAction) -> i32;
    }

    pub fn set_handler(sig: i32, handler: extern "C" fn(i32)) -> io::Result<()> {
        let act = SigAction {
            sa_handler: handler as usize,
            // An all-zero set is the empty set: no other signal is blocked while ours runs,
            // which is fine because the handler only touches atomics.
            sa_mask: [0; MASK_WORDS],
            sa_flags: SA_RESTART,
            sa_restorer: 0,
        };
        // SAFETY: `act` is a fully initialised `struct sigaction` with the layout libc expects
        // on this target (checked by the cfg above); `oldact` may be null per POSIX. The
        // handler is an `extern "C" fn(i32)` that lives for the whole program and is
        // async-signal-safe (it only updates atomics).
        let rc = unsafe { sigaction(sig, &act, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "x86",
        target_arch = "arm",
        target_arch = "loongarch64"
    )
)))]
mod sys {
    use std::io;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "signal handling is implemented for Linux only (the agent runs on Kubernetes nodes); \
             build for a linux target",
        )
    }

    pub fn set_handler(_sig: i32, _handler: extern "C" fn(i32)) -> io::Result<()> {
        Err(unsupported())
    }
}

/// Installs the handlers for SIGTERM, SIGINT and SIGHUP. Call once, early in `run`, before
/// spawning threads. The error names the signal that could not be installed.
pub fn install() -> io::Result<()> {
    for (sig, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT"), (SIGHUP, "SIGHUP")] {
        sys::set_handler(sig, on_signal).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot install the {name} handler: {e}; without it a pod stop would lose queued events"),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_counts_without_a_signal() {
        // Calling the handler directly checks the bookkeeping without delivering a signal
        // to the multi-threaded unit-test binary.
        let before = terminate_requests();
        let reloads = reload_requests();
        on_signal(SIGHUP);
        assert!(take_reload());
        assert!(!take_reload());
        assert_eq!(reload_requests(), reloads + 1);
        assert_eq!(terminate_requests(), before);
        on_signal(SIGTERM);
        assert_eq!(terminate_requests(), before + 1);
    }
}
