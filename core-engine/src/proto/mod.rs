//! Sans-IO MQTT 3.1.1 / 5.0 codec: owns the packet data model, [`decode`] (bytes → one
//! [`Packet`], with framing, size limit and validation) and [`encode`] (packet → bytes),
//! plus the QoS 1 PUBLISH fast path [`encode_publish_qos1`]. No I/O and no session
//! state live here; the engine feeds buffers in and writes the output itself.
//!
//! Layout: `packet` (types), `properties` (MQTT 5 property block), `reader` (bounded,
//! panic-free input cursor), `writer` (output primitives), `decode`, `encode`, `error`.

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod reader;
mod writer;

pub use decode::decode;
pub use encode::{encode, encode_publish_qos1, publish_qos1_len};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Ack, Auth, Connack, Connect, Disconnect, LastWill, Packet, Publish, QoS, Suback, Subscribe, SubscribeFilter,
    Unsuback, Unsubscribe, Version,
};
pub use properties::Properties;
