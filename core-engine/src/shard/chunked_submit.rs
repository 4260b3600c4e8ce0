//! Entering the shard's ring with at most [`SUBMIT_CHUNK`] submissions at a time.
//!
//! A send to a socket runs inline in the `io_uring_enter` that submits it (on loopback
//! ~20 us of kernel time each: the receiver's TCP path runs in the sender's context). A
//! topic message to a few thousand members queues as many sends in one pass; handed to the
//! kernel at once they held the shard in one enter for tens of ms, and whatever came
//! meanwhile (an HTTP push in the inbox, the store's answer to one) waited that long. In
//! chunks a pass stays near a millisecond and the rest of the queue goes out in the passes
//! that follow, in the order it was queued. Before it blocks for completions, the shard
//! yields its core once ([`enter`]).

use io_uring::{EnterFlags, IoUring};

/// Most submissions one enter hands the kernel (~1.3 ms of loopback sends).
pub const SUBMIT_CHUNK: usize = 64;

/// Submits up to [`SUBMIT_CHUNK`] queued entries; waits for a completion only if `wait`
/// and nothing is left queued (entries left over go out in the next pass, which must not
/// block).
///
/// Before it blocks, a shard with no completion yet yields its core once: when the cores are
/// busy, whoever runs meanwhile (a device's client, the store writer) makes more for the
/// shard to do, and the shard takes it in one pass instead of sleeping and being woken for
/// each. An idle core returns from the yield at once.
pub fn enter(ring: &mut IoUring, wait: bool) -> std::io::Result<()> {
    let left = submit_chunk(ring, false)?;
    if !wait || left > 0 || !ring.completion().is_empty() {
        return Ok(());
    }
    std::thread::yield_now();
    submit_chunk(ring, true).map(|_| ())
}

/// One `io_uring_enter`: up to [`SUBMIT_CHUNK`] queued entries, and a wait for one
/// completion if `wait` and none is left queued. Returns how many are left queued.
fn submit_chunk(ring: &mut IoUring, wait: bool) -> std::io::Result<usize> {
    let (queued, taskrun, overflow) = {
        let sq = ring.submission();
        (sq.len(), sq.taskrun(), sq.cq_overflow())
    };
    let to_submit = queued.min(SUBMIT_CHUNK);
    let left = queued - to_submit;
    let min_complete = u32::from(wait && left == 0);
    // As the crate's `submit_and_wait` does: deferred task work (completions of sends and
    // receives) and an overflowed completion queue are handled only by an enter that asks
    // for events.
    let flags = if min_complete > 0 || taskrun || overflow { EnterFlags::GETEVENTS } else { EnterFlags::empty() };
    if to_submit == 0 && flags.is_empty() {
        return Ok(left);
    }
    // SAFETY: `to_submit` is at most the number of entries queued in the submission ring
    // (each pushed through `Shard::push_sqe`, whose safety note covers the memory they point
    // at), and no argument structure is passed.
    let submitted =
        unsafe { ring.submitter().enter::<libc::sigset_t>(to_submit as u32, min_complete, flags.bits(), None) }?;
    debug_assert!(submitted <= to_submit, "the kernel took more entries than it was offered");
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;

    fn queue_nops(ring: &mut IoUring, n: usize) {
        for i in 0..n {
            let nop = opcode::Nop::new().build().user_data(i as u64);
            // SAFETY: a NOP points at no memory.
            unsafe { ring.submission().push(&nop) }.expect("the queue has room");
        }
    }

    #[test]
    fn a_long_queue_goes_to_the_kernel_a_chunk_per_enter_in_order() {
        let mut ring = IoUring::new(256).expect("io_uring");
        queue_nops(&mut ring, SUBMIT_CHUNK * 2 + 10);
        let mut seen = Vec::new();
        for left in [SUBMIT_CHUNK + 10, 10, 0] {
            // Asked to wait, it must not block while entries are left over.
            enter(&mut ring, true).expect("enter");
            assert_eq!(ring.submission().len(), left);
            seen.extend(ring.completion().map(|c| c.user_data()));
        }
        assert_eq!(seen, (0..(SUBMIT_CHUNK * 2 + 10) as u64).collect::<Vec<_>>());
    }

    #[test]
    fn an_empty_queue_waits_for_a_completion_only_when_asked() {
        let mut ring = IoUring::new(8).expect("io_uring");
        enter(&mut ring, false).expect("enter returns at once");
        queue_nops(&mut ring, 1);
        enter(&mut ring, true).expect("enter");
        assert_eq!(ring.completion().count(), 1);
    }

    #[test]
    fn a_wait_with_nothing_completed_yet_blocks_until_a_completion_comes() {
        let mut ring = IoUring::new(8).expect("io_uring");
        let ts = io_uring::types::Timespec::new().nsec(5_000_000);
        let timeout = opcode::Timeout::new(&ts).build().user_data(7);
        // SAFETY: `ts` outlives the operation: the test waits for its completion below.
        unsafe { ring.submission().push(&timeout) }.expect("the queue has room");
        enter(&mut ring, true).expect("enter");
        let done: Vec<_> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        assert_eq!(done, vec![(7, -libc::ETIME)], "the wait returned only once the timeout fired");
    }
}
