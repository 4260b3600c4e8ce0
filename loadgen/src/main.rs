//! loadgen (placeholder).
fn main() {}
