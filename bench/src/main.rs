//! Side-by-side benchmark harness (peer brokers vs Pushnode); filled in by the benchmark issue.

fn main() {
    eprintln!("bench: not built yet; see the benchmark issue. Use `loadgen` for now.");
    std::process::exit(2);
}
