//! MQTT packet identifiers for a client's in-flight QoS 1 PUBLISHes: non-zero,
//! never two in flight with the same id, handed out in order and wrapping around.

/// Allocator of packet ids 1..=65535 with an in-flight set (a 64 Kibit bitmap).
#[derive(Debug)]
pub struct PacketIds {
    in_use: Vec<u64>,
    next: u16,
    in_flight: u32,
}

impl Default for PacketIds {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketIds {
    pub fn new() -> Self {
        PacketIds { in_use: vec![0; 1024], next: 1, in_flight: 0 }
    }

    /// How many ids are in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    fn slot(id: u16) -> (usize, u64) {
        (usize::from(id / 64), 1u64 << (id % 64))
    }

    fn is_used(&self, id: u16) -> bool {
        let (word, bit) = Self::slot(id);
        self.in_use.get(word).is_some_and(|w| w & bit != 0)
    }

    /// The next free id, marked in flight; `None` when all 65,535 are in flight.
    pub fn allocate(&mut self) -> Option<u16> {
        if self.in_flight >= u32::from(u16::MAX) {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if self.next == u16::MAX { 1 } else { self.next + 1 };
            if id != 0 && !self.is_used(id) {
                let (word, bit) = Self::slot(id);
                if let Some(w) = self.in_use.get_mut(word) {
                    *w |= bit;
                }
                self.in_flight += 1;
                return Some(id);
            }
        }
    }

    /// Frees `id` (its PUBACK arrived). Returns false if it was not in flight.
    pub fn release(&mut self, id: u16) -> bool {
        if id == 0 || !self.is_used(id) {
            return false;
        }
        let (word, bit) = Self::slot(id);
        if let Some(w) = self.in_use.get_mut(word) {
            *w &= !bit;
        }
        self.in_flight -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_nonzero_unique_and_wrap() {
        let mut ids = PacketIds::new();
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), Some(2));
        assert!(ids.release(1));
        assert!(!ids.release(1), "double release");
        assert!(!ids.release(0));
        // Exhaust the space: 2 is still in flight, so 65,534 more fit.
        let mut seen = 0;
        while let Some(id) = ids.allocate() {
            assert_ne!(id, 0);
            seen += 1;
        }
        assert_eq!(seen, 65_534);
        assert_eq!(ids.in_flight(), 65_535);
        // Freed ids come back; the wrap skips 0 and ids still in flight.
        assert!(ids.release(7));
        assert!(ids.release(65_535));
        let a = ids.allocate().unwrap();
        let b = ids.allocate().unwrap();
        let mut got = [a, b];
        got.sort_unstable();
        assert_eq!(got, [7, 65_535]);
        assert_eq!(ids.allocate(), None);
    }
}
