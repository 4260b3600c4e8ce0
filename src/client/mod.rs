//! Client subcommands of the `pushnode` binary: `app create` and `send` (HTTP, as an
//! app server / admin would) and `device` (an MQTT device that registers, keeps its
//! RegID/token in a state file and prints the pushes it receives). Each `run_*` builds
//! its own current-thread tokio runtime; the MQTT and HTTP plumbing lives in the
//! `loadgen` library (`loadgen::mqtt_client`, `loadgen::http_client`).

pub mod app;
pub mod device;
pub mod send;
pub mod stats;
pub mod tray;

pub use app::{run_app_create, AppCreateArgs};
pub use device::{run_device, DeviceArgs};
pub use send::{run_send, SendArgs};
pub use stats::{run_stats, StatsArgs};

use std::time::Duration;

/// Default base URL of the node's HTTP API.
pub const DEFAULT_HTTP: &str = "http://127.0.0.1:8080";
/// Time limit of one HTTP request made by the CLI.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A current-thread runtime with IO and timers.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Prints an answer body as one line on stdout.
pub(crate) fn print_line(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}
