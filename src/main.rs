//! The `pushnode` binary.
fn main() {}
