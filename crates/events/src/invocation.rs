//! Async invocation: a request to a service stored as a message on the service's own
//! internal topic, run later by the dispatcher with the usual retries, its state readable
//! by id, and an optional callback when it ends. This module owns everything about the
//! feature that more than one crate needs: what a request may hold, how it becomes a
//! message and back, the subscription and topic it travels on, and where its status is
//! read. The gateway accepts requests, the node runs them, the API serves their status.

use std::time::Duration;

use crate::{MAX_DATA_BYTES, MAX_RESULT_BODY_BYTES, Message, NewMessage};

/// Largest body of an async request: it is stored as its message's data.
pub const MAX_BODY: usize = MAX_DATA_BYTES;
/// How long an async request's body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the response is kept as the result: the status shows it and the callback
/// sends it.
pub const MAX_RESULT: usize = MAX_RESULT_BODY_BYTES;
const _: () = assert!(
    MAX_RESULT <= MAX_BODY,
    "a result is never larger than a request"
);

/// Attempts before an invocation is dead-lettered.
pub const ATTEMPTS: u32 = 3;
/// The CloudEvents type of invocation messages.
pub const MESSAGE_TYPE: &str = "dev.tessera.invocation";
/// The admin API's route of an invocation's status (see [`status_path`]).
pub const STATUS_ROUTE: &str = "/v1/apps/{app}/services/{service}/invocations/{id}";

/// Message attributes carrying the request's head.
const ATTR_METHOD: &str = "method";
const ATTR_PATH: &str = "path";
const ATTR_CALLBACK: &str = "callback";
const ATTR_HEADER_PREFIX: &str = "header:";

/// A request to run later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    /// The request's headers, without hop-by-hop and platform (`x-tessera-*`) ones.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Where to `POST` the result when the invocation ends.
    pub callback: Option<String>,
}

impl Request {
    /// The bytes it holds while queued, counted against the service's stored quota.
    pub fn stored_size(&self) -> usize {
        const PER_HEADER: usize = 16;
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + PER_HEADER)
                .sum::<usize>()
            + self.path.len()
            + self.callback.as_ref().map_or(0, String::len)
    }

    /// The message that stores it on the service's topic ([`topic`]).
    pub fn into_message(self, app: &str, service: &str) -> NewMessage {
        let mut attributes = vec![
            (ATTR_METHOD.to_string(), self.method),
            (ATTR_PATH.to_string(), self.path),
        ];
        if let Some(callback) = self.callback {
            attributes.push((ATTR_CALLBACK.to_string(), callback));
        }
        let mut content_type = None;
        for (name, value) in self.headers {
            if name == "content-type" {
                content_type = Some(value);
            } else {
                attributes.push((format!("{ATTR_HEADER_PREFIX}{name}"), value));
            }
        }
        NewMessage::new(
            topic(service),
            format!("/apps/{app}/services/{service}"),
            MESSAGE_TYPE,
            self.body,
        )
        .with_content_type(content_type)
        .with_attributes(attributes)
    }

    /// The request a delivered message carries, or `None` for an ordinary message.
    pub fn from_message(message: &Message) -> Option<Request> {
        let attribute = |name: &str| {
            message
                .attributes
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let method = attribute(ATTR_METHOD)?;
        let mut headers: Vec<(String, String)> = message
            .attributes
            .iter()
            .filter_map(|(name, value)| {
                let header = name.strip_prefix(ATTR_HEADER_PREFIX)?;
                Some((header.to_string(), value.clone()))
            })
            .collect();
        if let Some(content_type) = &message.content_type {
            headers.push(("content-type".into(), content_type.clone()));
        }
        Some(Request {
            method,
            path: attribute(ATTR_PATH).unwrap_or_else(|| "/".into()),
            headers,
            body: message.data.clone(),
            callback: attribute(ATTR_CALLBACK),
        })
    }
}

/// The subscription id of a service's async invocations.
pub fn subscription(app: &str, service: &str) -> String {
    format!("{app}/{service}/$async")
}

/// The internal topic of a service's async invocations.
pub fn topic(service: &str) -> String {
    format!("$async/{service}")
}

/// Where an invocation's status is read: [`STATUS_ROUTE`] filled in.
pub fn status_path(app: &str, service: &str, id: &str) -> String {
    STATUS_ROUTE
        .replace("{app}", app)
        .replace("{service}", service)
        .replace("{id}", id)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn delivered(message: NewMessage) -> Message {
        Message {
            id: "01-id".into(),
            topic: message.topic,
            source: message.source,
            kind: message.kind,
            time: SystemTime::now(),
            content_type: message.content_type,
            data: message.data,
            attributes: message.attributes,
        }
    }

    #[test]
    fn a_request_survives_its_trip_through_a_message() {
        let request = Request {
            method: "PUT".into(),
            path: "/orders/7?dry=1".into(),
            headers: vec![
                ("accept".into(), "application/json".into()),
                ("content-type".into(), "application/json".into()),
            ],
            body: b"{\"n\":1}".to_vec(),
            callback: Some("https://hooks.example.com/done".into()),
        };
        let message = request.clone().into_message("shop", "orders");
        assert_eq!(message.topic, "$async/orders");
        assert_eq!(message.kind, MESSAGE_TYPE);
        assert_eq!(message.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            Request::from_message(&delivered(message)),
            Some(request),
            "content-type comes back last"
        );
    }

    #[test]
    fn an_ordinary_message_carries_no_request() {
        let message = NewMessage::new("orders", "/apps/shop", "t", b"x".to_vec());
        assert_eq!(Request::from_message(&delivered(message)), None);
    }

    #[test]
    fn the_status_path_is_the_route_filled_in() {
        assert_eq!(
            status_path("shop", "orders", "0193"),
            "/v1/apps/shop/services/orders/invocations/0193"
        );
    }
}
