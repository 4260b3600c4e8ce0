//! The load scenarios, one file each, plus what they share. `hold` is a single
//! process; the others (`connect`, `idle`, `fanout`, `unicast`, `churn`) run in a
//! parent (`parent`) that spreads connections over worker processes (`worker`), each
//! holding its clients (`device`, `lean_conn`) and sending load (`sender`,
//! `open_loop`, `schedule`), reporting figures (`tally`, `histogram`, `report`) over
//! the JSON-lines protocol in `plan`.

pub mod churn;
pub mod common;
pub mod connect;
pub mod device;
pub mod fanout;
pub mod h2_poster;
pub mod histogram;
pub mod hold;
pub mod idle;
pub mod keepalive;
pub mod lean_conn;
pub mod open_loop;
pub mod options;
pub mod parent;
pub mod plan;
pub mod precise_timer;
pub mod report;
pub mod schedule;
pub mod sender;
pub mod sysinfo;
pub mod tally;
pub mod unicast;
pub mod worker;
