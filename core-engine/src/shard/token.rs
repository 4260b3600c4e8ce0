//! The `user_data` of every io_uring operation: what kind of operation it was and, for
//! a connection's operations, its slab key and generation (so a late completion of a
//! closed connection never touches the connection that reused its slab entry).

pub const ACCEPT: u8 = 1;
pub const RECV: u8 = 2;
pub const SEND: u8 = 3;
pub const CLOSE: u8 = 4;
pub const CANCEL: u8 = 5;
pub const WAKE: u8 = 6;
pub const TICK: u8 = 7;
/// Our MSG_RING that sends a connection's descriptor to its home shard completed.
pub const HANDOFF_OUT: u8 = 8;
/// A descriptor arrived from another shard; the low 56 bits are the handoff id.
pub const HANDOFF_IN: u8 = 9;

const GEN_MASK: u32 = 0x00ff_ffff;

/// Packs a connection operation.
pub fn conn(kind: u8, key: u32, gen: u32) -> u64 {
    (u64::from(kind) << 56) | (u64::from(gen & GEN_MASK) << 32) | u64::from(key)
}

/// Packs an operation that is not a connection's.
pub fn plain(kind: u8, value: u64) -> u64 {
    debug_assert!(value < (1 << 56));
    (u64::from(kind) << 56) | value
}

pub fn kind(user_data: u64) -> u8 {
    (user_data >> 56) as u8
}

pub fn key(user_data: u64) -> u32 {
    user_data as u32
}

pub fn gen(user_data: u64) -> u32 {
    ((user_data >> 32) as u32) & GEN_MASK
}

pub fn value(user_data: u64) -> u64 {
    user_data & ((1 << 56) - 1)
}

/// Generations wrap within the bits a token holds.
pub fn next_gen(gen: u32) -> u32 {
    gen.wrapping_add(1) & GEN_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let t = conn(RECV, 123_456, 0x1ff_ffff);
        assert_eq!((kind(t), key(t), gen(t)), (RECV, 123_456, 0xff_ffff));
        let h = plain(HANDOFF_IN, 42);
        assert_eq!((kind(h), value(h)), (HANDOFF_IN, 42));
    }
}
