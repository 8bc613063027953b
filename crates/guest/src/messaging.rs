//! Publishing events to a topic of the service's own app (`tessera:messaging/producer`).
//! Every subscriber declared in the app's manifest receives the message at least once, as
//! a CloudEvents HTTP POST whose `ce-id` is the id `publish` returns.
//!
//! A message is published only if the request that publishes it succeeds (the handler
//! answers below 500 and does not trap); what is published before the response is
//! durable before the client sees the response.
//!
//! ```no_run
//! let id = tessera_guest::messaging::publish("orders.created", br#"{"id":1}"#, Some("application/json"))?;
//! # Ok::<(), tessera_guest::messaging::Error>(())
//! ```

pub use crate::bindings::tessera::messaging::producer::Error;

/// Publishes `data` to `topic`; returns the message id (`ce-id` for subscribers).
pub fn publish(topic: &str, data: &[u8], content_type: Option<&str>) -> Result<String, Error> {
    crate::bindings::tessera::messaging::producer::publish(topic, data, content_type)
}

impl Error {
    /// The WIT case name: `invalid-topic`, `too-large` or `unavailable`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidTopic(_) => "invalid-topic",
            Error::TooLarge(_) => "too-large",
            Error::Unavailable(_) => "unavailable",
        }
    }

    /// What went wrong, for humans.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidTopic(m) | Error::TooLarge(m) | Error::Unavailable(m) => m,
        }
    }
}
