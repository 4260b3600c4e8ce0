//! bench (placeholder).
fn main() {}
