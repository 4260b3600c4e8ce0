//! `bench`: the side-by-side benchmark harness's Rust half.
//!
//! * `bench bare-server --listen ADDR`: a minimal accept-and-hold MQTT 3.1.1/5.0 server
//!   with no broker logic beyond exact-match routing. It is the ceiling row of the
//!   comparison table: the connect rate a bare accept loop reaches, and the fan-out rate
//!   of "encode the message once, write the same bytes to every subscriber socket".
//!
//! The orchestration (starting Pushnode and the peer brokers, running `loadgen`,
//! rendering the table) is `scripts/bench` + `bench/run.py` + `bench/render.py`; the codec
//! micro-benchmarks are `benches/codec.rs` (`cargo bench -p bench`).

mod bare;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bench", version, about = "Pushnode benchmark harness helpers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Minimal accept-and-hold MQTT server: CONNACK, SUBACK, PINGRESP, PUBACK, and
    /// exact-match routing of PUBLISH (each message encoded once per version/QoS and
    /// written to every subscriber socket). The "ceiling" row of the benchmarks.
    BareServer(bare::BareArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::BareServer(args) => bare::run(args),
    }
}
