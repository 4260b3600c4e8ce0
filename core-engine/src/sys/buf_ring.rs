//! A provided-buffer ring: a pool of receive buffers the kernel picks from when data
//! arrives, so an idle connection holds no read buffer of its own. Where the kernel can
//! (6.12+, `IOU_PBUF_RING_INC`), buffers are consumed incrementally: receives fill a buffer
//! one after another, so a burst of small packets (acknowledgements from thousands of
//! devices) shares a few buffers instead of taking one each and running the ring dry.

use io_uring::types::BufRingEntry;
use io_uring::Submitter;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU16, Ordering};

/// Why a buffer ring could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BufRingError {
    #[error("buffer ring entries must be a power of two in 1..=32768, got {entries}")]
    BadEntries { entries: u32 },
    #[error("out of memory allocating {bytes} bytes for the buffer ring")]
    OutOfMemory { bytes: usize },
    #[error("registering the buffer ring failed: {source} (kernel >= 5.19 needed; if it is ENOMEM, raise `ulimit -l` (memlock) above {ring_bytes} bytes)")]
    Register { source: std::io::Error, ring_bytes: usize },
}

/// The ring and its buffers; registered under one buffer group id.
pub struct BufRing {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    buffers: *mut u8,
    buffers_layout: Layout,
    entries: u16,
    buf_size: u32,
    tail: u16,
    pub bgid: u16,
    /// Registered with `IOU_PBUF_RING_INC`.
    incremental: bool,
    /// Per buffer, the bytes of it already handed out (incremental mode only).
    consumed: Vec<u32>,
}

/// `IOU_PBUF_RING_INC` (the io-uring crate keeps its constants private).
const IOU_PBUF_RING_INC: u16 = 2;

impl BufRing {
    /// Allocates `entries` buffers of `buf_size` bytes and registers them as group `bgid`.
    pub fn new(submitter: &Submitter<'_>, entries: u16, buf_size: u32, bgid: u16) -> Result<Self, BufRingError> {
        if entries == 0 || !entries.is_power_of_two() || entries > 32768 {
            return Err(BufRingError::BadEntries { entries: entries.into() });
        }
        let ring_bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        let ring_layout =
            Layout::from_size_align(ring_bytes, 4096).map_err(|_| BufRingError::OutOfMemory { bytes: ring_bytes })?;
        let buffer_bytes = usize::from(entries) * buf_size as usize;
        let buffers_layout = Layout::from_size_align(buffer_bytes, 4096)
            .map_err(|_| BufRingError::OutOfMemory { bytes: buffer_bytes })?;
        // SAFETY: both layouts have a non-zero size (entries >= 1, buf_size checked by the caller's config).
        let ring = unsafe { alloc_zeroed(ring_layout) } as *mut BufRingEntry;
        // SAFETY: as above.
        let buffers = unsafe { alloc_zeroed(buffers_layout) };
        if ring.is_null() || buffers.is_null() {
            return Err(BufRingError::OutOfMemory { bytes: ring_bytes + buffer_bytes });
        }
        let mut this = BufRing {
            ring,
            ring_layout,
            buffers,
            buffers_layout,
            entries,
            buf_size,
            tail: 0,
            bgid,
            incremental: true,
            consumed: vec![0; usize::from(entries)],
        };
        // SAFETY: the ring memory is page-aligned, `entries` long, and lives until drop,
        // which happens after the io_uring instance that uses it (the shard drops the ring first).
        let register = |flags| unsafe { submitter.register_buf_ring_with_flags(ring as u64, entries, bgid, flags) };
        if register(IOU_PBUF_RING_INC).is_err() {
            // An older kernel: whole buffers per receive.
            this.incremental = false;
            register(0).map_err(|source| BufRingError::Register { source, ring_bytes })?;
        }
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    fn push(&mut self, bid: u16) {
        debug_assert!(bid < self.entries);
        let index = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `index` < entries, inside the ring allocation; the kernel only reads
        // entries between its head and our published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.ring.add(index) };
        // SAFETY: bid < entries, so the buffer lies inside the buffers allocation.
        entry.set_addr(unsafe { self.buffers.add(usize::from(bid) * self.buf_size as usize) } as u64);
        entry.set_len(self.buf_size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved field, inside the ring allocation;
        // it is written atomically with release ordering so the kernel sees the entries first.
        let tail = unsafe { &*(BufRingEntry::tail(self.ring) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The `len` bytes a receive just wrote into buffer `bid` (after what earlier receives
    /// wrote there, in incremental mode).
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        let start = if self.incremental { self.consumed[usize::from(bid)] as usize } else { 0 };
        assert!(
            bid < self.entries && start + len <= self.buf_size as usize,
            "buffer {bid} at {start}+{len} out of range"
        );
        // SAFETY: bounds checked above; the kernel wrote these bytes and does not write
        // them again until the buffer is given back with `release`.
        unsafe { std::slice::from_raw_parts(self.buffers.add(usize::from(bid) * self.buf_size as usize + start), len) }
    }

    /// Done with the `len` bytes a receive wrote into `bid`. `buffer_more` is the
    /// completion's `IORING_CQE_F_BUF_MORE`: the kernel still fills the rest of this buffer,
    /// so it stays with the kernel; otherwise it goes back to the ring.
    pub fn release(&mut self, bid: u16, len: usize, buffer_more: bool) {
        if self.incremental && buffer_more {
            let consumed = &mut self.consumed[usize::from(bid)];
            *consumed += len as u32;
            assert!(*consumed <= self.buf_size, "buffer {bid} consumed past its end");
            return;
        }
        debug_assert!(!buffer_more, "a whole-buffer ring never keeps a buffer");
        self.consumed[usize::from(bid)] = 0;
        self.push(bid);
        self.publish();
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly these layouts; the ring using them is gone.
        unsafe {
            dealloc(self.ring as *mut u8, self.ring_layout);
            dealloc(self.buffers, self.buffers_layout);
        }
    }
}
