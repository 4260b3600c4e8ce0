//! `GET /v1/stats/push` and `GET /v1/stats/users` (app auth): an app's statistics per
//! day, `from..=to` (UTC days of the node's clock; default today), every day of the range
//! present (zeros where nothing was counted), as JSON or, with `format=csv`, as CSV with a
//! header row. Today's row holds the live counts; `online` is the figure right now.

use super::error::HttpError;
use super::routes::app_of;
use super::HttpState;
use bytes::Bytes;
use core_engine::clock::{day_of, day_text, now_unix_s, parse_day};
use core_engine::stats::DayStats;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

/// Most days one request may cover.
pub const MAX_DAYS: u32 = 366;

/// Which table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Push,
    Users,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// The parsed query: days `from..=to` and the answer format.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    from: u32,
    to: u32,
    format: Format,
}

/// Parses `from`, `to` and `format` (anything else is refused, so a typo is not silently
/// ignored). `to` defaults to today, `from` to `to`.
fn parse_query(query: Option<&str>, today: u32) -> Result<Query, HttpError> {
    let (mut from, mut to, mut format) = (None, None, Format::Json);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let day = || {
            parse_day(value)
                .ok_or_else(|| HttpError::bad_request(format!("{key} must be a date YYYY-MM-DD, got {value:?}")))
        };
        match key {
            "from" => from = Some(day()?),
            "to" => to = Some(day()?),
            "format" => {
                format = match value {
                    "json" => Format::Json,
                    "csv" => Format::Csv,
                    _ => return Err(HttpError::bad_request(format!("format must be json or csv, got {value:?}"))),
                }
            }
            _ => return Err(HttpError::bad_request(format!("unknown parameter {key:?} (from, to, format)"))),
        }
    }
    let to = to.unwrap_or(today);
    let from = from.unwrap_or(to);
    if from > to {
        return Err(HttpError::bad_request(format!("from ({}) is after to ({})", day_text(from), day_text(to))));
    }
    if to - from >= MAX_DAYS {
        return Err(HttpError::bad_request(format!("at most {MAX_DAYS} days per request")));
    }
    Ok(Query { from, to, format })
}

/// A row of `/v1/stats/push`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PushRow {
    pub date: String,
    pub total: u64,
    pub single: u64,
    pub group: u64,
    pub delivered: u64,
    pub clicked: u64,
    pub expired: u64,
    pub dropped: u64,
}

/// A row of `/v1/stats/users`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct UsersRow {
    pub date: String,
    pub online: u64,
    pub peak_online: u64,
    /// RFC 3339 (UTC), or null without a peak.
    pub peak_at: Option<String>,
    pub new: u64,
    pub active: u64,
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a unix time in seconds.
pub fn rfc3339(unix_s: u64) -> String {
    let s = unix_s % 86_400;
    format!("{}T{:02}:{:02}:{:02}Z", day_text(day_of(unix_s)), s / 3600, s / 60 % 60, s % 60)
}

fn push_row(day: u32, s: &DayStats) -> PushRow {
    PushRow {
        date: day_text(day),
        total: s.total,
        single: s.single,
        group: s.group,
        delivered: s.delivered,
        clicked: s.clicked,
        expired: s.expired,
        dropped: s.dropped,
    }
}

/// `online` counts only on `today`'s row, where the peak is at least the current figure
/// (devices that stayed connected across midnight are online today without a new connect).
fn users_row(day: u32, s: &DayStats, today: u32, online_now: u64, now_s: u64) -> UsersRow {
    let online = if day == today { online_now } else { 0 };
    let (mut peak, mut at) = (s.peak_online, s.peak_at);
    if online > peak {
        (peak, at) = (online, now_s);
    }
    UsersRow {
        date: day_text(day),
        online,
        peak_online: peak,
        peak_at: (peak > 0 && at > 0).then(|| rfc3339(at)),
        new: s.new,
        active: s.active,
    }
}

/// Every day of `from..=to`, with the engine's counts where there are any.
fn every_day(from: u32, to: u32, counted: Vec<(u32, DayStats)>) -> Vec<(u32, DayStats)> {
    let mut counted = counted.into_iter().peekable();
    (from..=to)
        .map(|day| {
            while counted.peek().is_some_and(|(d, _)| *d < day) {
                counted.next();
            }
            match counted.peek() {
                Some((d, s)) if *d == day => (day, *s),
                _ => (day, DayStats::default()),
            }
        })
        .collect()
}

/// A CSV field, quoted when it needs to be (RFC 4180).
fn csv_field(out: &mut String, text: &str) {
    if text.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(text);
    }
}

/// RFC 4180 text (CRLF line ends) of a header and rows of fields.
fn csv_text(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut out = String::new();
    let mut line = |fields: &mut dyn Iterator<Item = &str>| {
        for (i, field) in fields.enumerate() {
            if i > 0 {
                out.push(',');
            }
            csv_field(&mut out, field);
        }
        out.push_str("\r\n");
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn csv_response(text: String, filename: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(value) = hyper::header::HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(hyper::header::CONTENT_DISPOSITION, value);
    }
    response
}

const PUSH_HEADER: [&str; 8] = ["date", "total", "single", "group", "delivered", "clicked", "expired", "dropped"];
const USERS_HEADER: [&str; 6] = ["date", "online", "peak_online", "peak_at", "new", "active"];

/// Answers `GET /v1/stats/push` or `GET /v1/stats/users`.
pub async fn stats(state: &HttpState, req: &Request<Incoming>, kind: Kind) -> Result<Response<Full<Bytes>>, HttpError> {
    let app_id = app_of(state, req)?;
    let now_s = now_unix_s();
    let today = day_of(now_s);
    let query = parse_query(req.uri().query(), today)?;
    let days = every_day(query.from, query.to, state.node.day_stats(app_id, query.from, query.to).await?);
    let range = format!("{}_{}", day_text(query.from), day_text(query.to));
    match kind {
        Kind::Push => {
            let rows: Vec<PushRow> = days.iter().map(|(day, s)| push_row(*day, s)).collect();
            Ok(match query.format {
                Format::Json => super::error::json_response(StatusCode::OK, &rows),
                Format::Csv => {
                    let text = csv_text(
                        &PUSH_HEADER,
                        rows.into_iter().map(|r| {
                            let n = [r.total, r.single, r.group, r.delivered, r.clicked, r.expired, r.dropped];
                            std::iter::once(r.date).chain(n.iter().map(u64::to_string)).collect()
                        }),
                    );
                    csv_response(text, &format!("push-stats_{range}.csv"))
                }
            })
        }
        Kind::Users => {
            let online = state.node.online(app_id);
            let rows: Vec<UsersRow> = days.iter().map(|(day, s)| users_row(*day, s, today, online, now_s)).collect();
            Ok(match query.format {
                Format::Json => super::error::json_response(StatusCode::OK, &rows),
                Format::Csv => {
                    let text = csv_text(
                        &USERS_HEADER,
                        rows.into_iter().map(|r| {
                            vec![
                                r.date,
                                r.online.to_string(),
                                r.peak_online.to_string(),
                                r.peak_at.unwrap_or_default(),
                                r.new.to_string(),
                                r.active.to_string(),
                            ]
                        }),
                    );
                    csv_response(text, &format!("user-stats_{range}.csv"))
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> u32 {
        parse_day(text).unwrap()
    }

    #[test]
    fn query_defaults_and_limits() {
        let today = day("2026-03-10");
        assert_eq!(parse_query(None, today).unwrap(), Query { from: today, to: today, format: Format::Json });
        let q = parse_query(Some("from=2026-03-01&to=2026-03-05&format=csv"), today).unwrap();
        assert_eq!((q.from, q.to, q.format), (day("2026-03-01"), day("2026-03-05"), Format::Csv));
        assert_eq!(parse_query(Some("from=2026-03-01"), today).unwrap().to, today);
        assert_eq!(parse_query(Some("to=2026-03-01"), today).unwrap().from, day("2026-03-01"));
        assert!(parse_query(Some("from=2025-03-10&to=2026-03-10"), today).is_ok(), "366 days");
        assert!(parse_query(Some("from=2025-03-09&to=2026-03-10"), today).is_err(), "367 days");
        for bad in ["from=2026-02-30", "from=yesterday", "to=2026-3-1", "from=2026-03-05&to=2026-03-01", "format=xml"] {
            let e = parse_query(Some(bad), today).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(parse_query(Some("form=2026-03-01"), today).is_err());
    }

    #[test]
    fn every_day_fills_gaps() {
        let s = DayStats { total: 5, ..Default::default() };
        let rows = every_day(10, 13, vec![(11, s), (13, s)]);
        let totals: Vec<(u32, u64)> = rows.iter().map(|(d, s)| (*d, s.total)).collect();
        assert_eq!(totals, vec![(10, 0), (11, 5), (12, 0), (13, 5)]);
    }

    #[test]
    fn users_rows() {
        let today = day("2026-03-10");
        let noon = u64::from(today) * 86_400 + 12 * 3600;
        let s = DayStats { peak_online: 3, peak_at: noon + 61, new: 2, active: 4, ..Default::default() };
        let row = users_row(today, &s, today, 2, noon + 100);
        assert_eq!(row.peak_at.as_deref(), Some("2026-03-10T12:01:01Z"));
        assert_eq!((row.online, row.peak_online, row.new, row.active), (2, 3, 2, 4));
        assert_eq!(users_row(today - 1, &s, today, 2, noon).online, 0);
        let row = users_row(today, &DayStats::default(), today, 0, noon);
        assert_eq!((row.peak_online, row.peak_at), (0, None));
        let row = users_row(today, &DayStats::default(), today, 7, noon);
        assert_eq!((row.peak_online, row.peak_at.as_deref()), (7, Some("2026-03-10T12:00:00Z")));
    }

    #[test]
    fn csv_quotes_when_needed() {
        let text = csv_text(&["a", "b"], vec![vec!["1".to_string(), "x,\"y\"".to_string()]].into_iter());
        assert_eq!(text, "a,b\r\n1,\"x,\"\"y\"\"\"\r\n");
    }
}
