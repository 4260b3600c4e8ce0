//! Client-side building blocks shared by the `loadgen` binary and the `pushnode` CLI
//! client subcommands: a small async MQTT client for the push profile
//! ([`mqtt_client`]) and a pooled HTTP/1.1 JSON client for the node's API
//! ([`http_client`]). Both speak the contract in `docs/protocol.md`.

pub mod http_client;
pub mod mqtt_client;
