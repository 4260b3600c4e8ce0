//! `pushnode stats`: an app's push statistics (or, with `--users`, its user statistics)
//! per day from `GET /v1/stats/push` / `GET /v1/stats/users`, printed as an aligned table
//! with a total row (plain columns: a dependency for a table this small is not worth it).

use anyhow::Context;
use loadgen::http_client::HttpClient;
use serde_json::Value;

use super::{print_line, runtime, DEFAULT_HTTP, HTTP_TIMEOUT};

#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    /// The app secret (`Authorization: key=SECRET`).
    #[arg(long)]
    pub secret: String,
    /// First day, YYYY-MM-DD (UTC; default: `--to`).
    #[arg(long)]
    pub from: Option<String>,
    /// Last day, YYYY-MM-DD (UTC; default: today on the node's clock).
    #[arg(long)]
    pub to: Option<String>,
    /// User statistics (online, peak, new, active) instead of push statistics.
    #[arg(long)]
    pub users: bool,
    /// Print the JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Base URL of the node's HTTP API.
    #[arg(long, default_value = DEFAULT_HTTP)]
    pub http: String,
}

const PUSH_COLUMNS: [&str; 8] = ["date", "total", "single", "group", "delivered", "clicked", "expired", "dropped"];
const USERS_COLUMNS: [&str; 6] = ["date", "online", "peak_online", "peak_at", "new", "active"];

/// The request path for these arguments.
pub fn stats_path(args: &StatsArgs) -> String {
    let mut path = String::from(if args.users { "/v1/stats/users" } else { "/v1/stats/push" });
    let mut sep = '?';
    for (key, value) in [("from", &args.from), ("to", &args.to)] {
        if let Some(v) = value {
            path.push(sep);
            path.push_str(key);
            path.push('=');
            // Dates need no escaping; anything else is the server's to refuse.
            path.extend(v.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-'));
            sep = '&';
        }
    }
    path
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The table: a header, one line per day, and for push statistics a total line.
/// Numbers are right-aligned, text left-aligned.
pub fn render_table(rows: &[Value], users: bool) -> String {
    let columns: &[&str] = if users { &USERS_COLUMNS } else { &PUSH_COLUMNS };
    let mut lines: Vec<Vec<String>> = vec![columns.iter().map(|c| c.to_string()).collect()];
    for row in rows {
        lines.push(columns.iter().map(|c| cell(row.get(*c))).collect());
    }
    if !users && rows.len() > 1 {
        let mut total = vec!["total".to_string()];
        for c in &columns[1..] {
            total.push(rows.iter().filter_map(|r| r.get(*c).and_then(Value::as_u64)).sum::<u64>().to_string());
        }
        lines.push(total);
    }
    let widths: Vec<usize> =
        (0..columns.len()).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    let numeric = |i: usize| !matches!(columns[i], "date" | "peak_at");
    let mut out = String::new();
    for (n, line) in lines.iter().enumerate() {
        let cells: Vec<String> =
            line.iter()
                .enumerate()
                .map(|(i, text)| {
                    if numeric(i) {
                        format!("{text:>w$}", w = widths[i])
                    } else {
                        format!("{text:<w$}", w = widths[i])
                    }
                })
                .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if n == 0 || (n == lines.len() - 2 && !users && rows.len() > 1) {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

pub fn run_stats(args: StatsArgs) -> anyhow::Result<()> {
    let http = HttpClient::new(&args.http, HTTP_TIMEOUT)?;
    let auth = format!("key={}", args.secret);
    let path = stats_path(&args);
    let resp = runtime()?.block_on(http.request(hyper::Method::GET, &path, Some(&auth), None))?.error_for_status()?;
    if args.json {
        return print_line(&resp.text());
    }
    let rows: Vec<Value> = resp.json().with_context(|| format!("GET {path}: the answer is not a JSON list"))?;
    print_line(render_table(&rows, args.users).trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        stats: StatsArgs,
    }

    #[test]
    fn path_from_args() {
        let cli = Cli::try_parse_from(["x", "--secret", "s"]).unwrap();
        assert_eq!(stats_path(&cli.stats), "/v1/stats/push");
        let cli = Cli::try_parse_from(["x", "--secret", "s", "--users", "--from", "2026-01-01", "--to", "2026-01-31"])
            .unwrap();
        assert_eq!(stats_path(&cli.stats), "/v1/stats/users?from=2026-01-01&to=2026-01-31");
        assert!(Cli::try_parse_from(["x"]).is_err(), "--secret is required");
    }

    #[test]
    fn push_table_aligns_and_totals() {
        let rows = vec![
            json!({"date":"2026-01-01","total":12,"single":12,"group":0,"delivered":9,"clicked":1,"expired":0,"dropped":0}),
            json!({"date":"2026-01-02","total":3,"single":1,"group":2,"delivered":3,"clicked":0,"expired":0,"dropped":0}),
        ];
        let table = render_table(&rows, false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "date        total  single  group  delivered  clicked  expired  dropped");
        assert_eq!(lines[2], "2026-01-01     12      12      0          9        1        0        0");
        assert_eq!(lines[5], "total          15      13      2         12        1        0        0");
    }

    #[test]
    fn users_table_shows_missing_peak_as_dash() {
        let rows = vec![json!({"date":"2026-01-01","online":0,"peak_online":0,"peak_at":null,"new":0,"active":0})];
        let table = render_table(&rows, true);
        assert!(table.lines().nth(2).unwrap().contains("  -  "), "{table}");
        assert_eq!(table.lines().count(), 3);
    }
}
