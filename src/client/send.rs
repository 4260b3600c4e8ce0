//! `pushnode send`: sends one message to one or more RegIDs with `POST /v1/messages`
//! (authorised by the app secret) and prints the JSON answer; a non-2xx answer is an
//! error that carries the body.

use anyhow::bail;
use loadgen::http_client::HttpClient;
use serde_json::{json, Map, Value};

use super::{print_line, runtime, DEFAULT_HTTP, HTTP_TIMEOUT};

/// Most RegIDs one message may target.
pub const MAX_REGIDS: usize = 1000;

#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// The app secret (`Authorization: key=SECRET`).
    #[arg(long)]
    pub secret: String,
    /// Target RegID (repeat for several).
    #[arg(long = "regid", required = true)]
    pub regids: Vec<String>,
    #[arg(long)]
    pub title: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long)]
    pub payload: Option<String>,
    /// Send a passthrough message instead of a notification.
    #[arg(long)]
    pub passthrough: bool,
    /// Time to live in seconds.
    #[arg(long)]
    pub ttl: Option<u64>,
    /// Base URL of the node's HTTP API.
    #[arg(long, default_value = DEFAULT_HTTP)]
    pub http: String,
}

/// The JSON body of `POST /v1/messages` for these arguments.
pub fn message_body(args: &SendArgs) -> Value {
    let mut m = Map::new();
    m.insert("target".into(), json!({ "regids": args.regids }));
    let kind = if args.passthrough { "passthrough" } else { "notification" };
    m.insert("type".into(), kind.into());
    for (key, val) in [("title", &args.title), ("description", &args.description), ("payload", &args.payload)] {
        if let Some(v) = val {
            m.insert(key.into(), v.clone().into());
        }
    }
    if let Some(ttl) = args.ttl {
        m.insert("ttl".into(), ttl.into());
    }
    Value::Object(m)
}

pub fn run_send(args: SendArgs) -> anyhow::Result<()> {
    if args.regids.len() > MAX_REGIDS {
        bail!("{} RegIDs given; a message targets at most {MAX_REGIDS}", args.regids.len());
    }
    let http = HttpClient::new(&args.http, HTTP_TIMEOUT)?;
    let body = message_body(&args);
    let resp = runtime()?.block_on(http.send_message(&args.secret, &body))?.error_for_status()?;
    print_line(&resp.text())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        send: SendArgs,
    }

    #[test]
    fn body_from_args() {
        let cli = Cli::try_parse_from([
            "x",
            "--secret",
            "s",
            "--regid",
            "a",
            "--regid",
            "b",
            "--title",
            "T",
            "--passthrough",
            "--ttl",
            "30",
        ])
        .unwrap();
        assert_eq!(cli.send.http, DEFAULT_HTTP);
        let body = message_body(&cli.send);
        assert_eq!(body, json!({"target":{"regids":["a","b"]},"type":"passthrough","title":"T","ttl":30}));
    }

    #[test]
    fn regid_is_required() {
        assert!(Cli::try_parse_from(["x", "--secret", "s"]).is_err());
        let cli = Cli::try_parse_from(["x", "--secret", "s", "--regid", "a"]).unwrap();
        assert_eq!(message_body(&cli.send)["type"], "notification");
    }
}
