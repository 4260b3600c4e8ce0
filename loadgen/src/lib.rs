//! Client-side building blocks shared by the `loadgen` binary and the `pushnode` CLI
//! client subcommands: a small async MQTT client for the push profile
//! ([`mqtt_client`]), a pooled HTTP/1.1 JSON client for the node's API
//! ([`http_client`]), and the pieces loadgen's many-connection drivers use: packet
//! framing over a shared read buffer ([`frame_reader`]), QoS 1 packet ids
//! ([`packet_ids`]) and the TLS client settings ([`tls`]). All speak the contract in
//! `docs/protocol.md`.

pub mod frame_reader;
pub mod http_client;
pub mod mqtt_client;
pub mod packet_ids;
pub mod tls;
