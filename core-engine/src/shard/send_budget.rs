//! The shard's budget of bytes queued for sending to its devices. A burst (a topic message
//! to every member, ten of them back to back, a flood of unicasts) encodes each delivery
//! into its connection's buffer, which is held until the kernel has taken it. Past the
//! budget a delivery is not encoded: the device's backlog is set and the connection waits
//! in line (`starved`), and once the shard's sends have drained to half the budget the
//! waiting connections read their messages back from the store in turn. So a burst to a
//! million devices holds a bounded amount of memory, not every message at once.
//!
//! A connection whose send has made no progress for [`STALLED_S`] is not charged: a few
//! devices that stop reading must not hold up every other device of the shard until they are
//! cut off (each holds at most its in-flight window of messages anyway).

use super::Shard;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;

/// Seconds a connection's send may make no progress before its bytes stop counting.
const STALLED_S: u32 = 2;

#[derive(Debug)]
pub(super) struct SendBudget {
    limit: usize,
    /// Bytes the shard's connections hold for sending: the sum of their `Conn::charged`.
    charged: usize,
    /// Connections whose deliveries were left in the store by the budget, as (key, gen),
    /// oldest first; a connection is listed once (`Conn::starved`).
    starved: VecDeque<(u32, u32)>,
}

impl SendBudget {
    pub fn new(limit: usize) -> Self {
        assert!(limit > 0, "a send budget of zero bytes would never deliver");
        SendBudget { limit, charged: 0, starved: VecDeque::new() }
    }

    /// Whether the budget is used up: the next delivery waits in the store.
    pub fn is_spent(&self) -> bool {
        self.charged >= self.limit
    }

    /// Moves one connection's charge from `was` to `now` bytes.
    pub fn recharge(&mut self, was: u32, now: u32) {
        debug_assert!(self.charged >= was as usize, "a connection is charged within the total");
        self.charged = self.charged - was as usize + now as usize;
    }

    pub fn charged(&self) -> usize {
        self.charged
    }

    /// Lists a connection whose delivery the budget refused.
    pub fn starve(&mut self, key: u32, gen: u32) {
        self.starved.push_back((key, gen));
    }

    /// The next connection to read its deliveries from the store, once the sends have
    /// drained to half the budget (not at once below it: each would get one message).
    pub fn next_starved(&mut self) -> Option<(u32, u32)> {
        if self.charged >= self.limit / 2 {
            return None;
        }
        self.starved.pop_front()
    }
}

impl Shard {
    /// Brings the budget's charge for connection `key` up to date with the bytes it holds
    /// for sending now: its buffers' allocations, which is what a burst costs in memory.
    pub(super) fn recharge(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let stalled = conn.send_inflight && self.now_s.saturating_sub(conn.send_progress_s) >= STALLED_S;
        let held = if stalled { 0 } else { conn.session.output_capacity() + conn.sending.capacity() };
        let held = u32::try_from(held).unwrap_or(u32::MAX);
        self.send_budget.recharge(conn.charged, held);
        conn.charged = held;
    }

    /// Lists connection `key` to read from the store, once there is room, the delivery the
    /// spent budget refused it (its backlog is the caller's to set).
    pub(super) fn starve(&mut self, key: u32) {
        debug_assert!(self.send_budget.is_spent(), "only a spent budget refuses a delivery");
        let conn = &mut self.conns[key as usize];
        if !conn.starved {
            conn.starved = true;
            self.send_budget.starve(key, conn.gen);
            self.metrics.send_deferrals.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Uncharges connections whose sends stalled (checked once a tick).
    pub(super) fn uncharge_stalled(&mut self) {
        let now = self.now_s;
        let stalled: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.charged > 0 && c.send_inflight && now.saturating_sub(c.send_progress_s) >= STALLED_S)
            .map(|(k, _)| k as u32)
            .collect();
        for key in stalled {
            self.recharge(key);
        }
    }

    /// At the end of a pass of the event loop: connections the budget held back read their
    /// messages from the store while the sends leave room, oldest first.
    pub(super) fn feed_starved(&mut self) {
        while let Some((key, gen)) = self.send_budget.next_starved() {
            let Some(conn) = self.conns.get_mut(key as usize).filter(|c| c.gen == gen) else { continue };
            conn.starved = false;
            self.pump(key);
            self.flush(key);
        }
        self.metrics.send_buffered_bytes.store(self.send_budget.charged() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::SendBudget;

    #[test]
    fn spent_at_the_limit_and_fed_again_below_half_of_it() {
        let mut budget = SendBudget::new(1000);
        budget.recharge(0, 600);
        assert!(!budget.is_spent());
        budget.recharge(0, 400);
        assert!(budget.is_spent());
        budget.starve(7, 1);
        budget.starve(9, 3);
        budget.recharge(600, 200); // 600 held: above half
        assert_eq!(budget.next_starved(), None);
        budget.recharge(400, 0); // 200 held
        assert_eq!(budget.next_starved(), Some((7, 1)));
        assert_eq!(budget.next_starved(), Some((9, 3)));
        assert_eq!(budget.next_starved(), None);
        assert_eq!(budget.charged(), 200);
    }
}
