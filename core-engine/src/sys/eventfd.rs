//! An eventfd that wakes a shard's ring when another thread queued work for it.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// A counter the shard's ring reads; writers coalesce wake-ups through `pending`.
#[derive(Debug)]
pub struct EventFd {
    file: File,
    pending: AtomicBool,
}

impl EventFd {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd has no memory arguments; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { file: File::from(owned), pending: AtomicBool::new(false) })
    }

    /// Wakes the reader unless a wake-up is already pending.
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = (&self.file).write_all(&1u64.to_ne_bytes()) {
                tracing::error!(error = %e, "eventfd write failed");
            }
        }
    }

    /// Called by the reader after its read completed, before it drains its queue.
    pub fn rearm(&self) {
        self.pending.store(false, Ordering::Release);
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
