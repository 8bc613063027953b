//! Publishing from guests (`tessera:messaging/producer`): messages are collected in the
//! request's outbox and handed to the service's [`Publisher`] only if the request
//! succeeds. What was published before the response head is committed when the guest
//! sets a head below 500, and the head reaches the client only after that commit; what
//! was published after it is committed when the handler returns normally. A trap, a
//! timeout or a 5xx publishes nothing that was not already answered for.

use std::sync::{Arc, Mutex};

use tessera_events::MAX_DATA_BYTES;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::tessera::messaging::producer;

/// Most messages one request may publish.
pub const MAX_MESSAGES_PER_REQUEST: usize = 1000;
/// Largest total payload one request may publish, in bytes.
pub const MAX_OUTBOX_BYTES: usize = 16 << 20;

/// A message a guest published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Unique id (UUID v7), delivered as `ce-id`.
    pub id: String,
    pub topic: String,
    pub data: Vec<u8>,
    pub content_type: Option<String>,
}

/// Where a service's published messages go. Called on the blocking pool, once per
/// completed request that published anything; Ok means durable.
pub trait Publisher: Send + Sync {
    fn publish(&self, service: &str, messages: Vec<OutgoingMessage>) -> Result<(), String>;
}

/// The messages of one request. Shared with the response callback, which commits what
/// was published before the response head and holds the head back until then.
#[derive(Clone, Default)]
pub(crate) struct Outbox(Arc<Mutex<OutboxInner>>);

#[derive(Default)]
struct OutboxInner {
    messages: Vec<OutgoingMessage>,
    bytes: usize,
}

impl Outbox {
    /// Takes every message queued so far.
    pub(crate) fn take(&self) -> Vec<OutgoingMessage> {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner.bytes = 0;
        std::mem::take(&mut inner.messages)
    }

    fn push(&self, message: OutgoingMessage) -> Result<(), String> {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if message.data.len() > MAX_DATA_BYTES {
            return Err(format!(
                "a message is {} bytes; the limit is {MAX_DATA_BYTES} bytes",
                message.data.len()
            ));
        }
        if inner.messages.len() >= MAX_MESSAGES_PER_REQUEST {
            return Err(format!(
                "one request may publish at most {MAX_MESSAGES_PER_REQUEST} messages"
            ));
        }
        if inner.bytes + message.data.len() > MAX_OUTBOX_BYTES {
            return Err(format!(
                "one request may publish at most {MAX_OUTBOX_BYTES} bytes in all"
            ));
        }
        inner.bytes += message.data.len();
        inner.messages.push(message);
        Ok(())
    }
}

/// Per-instance messaging state: whether the service may publish, and the request's
/// outbox.
pub(crate) struct MessagingState {
    pub(crate) enabled: bool,
    /// Messages published during this request, committed only if it completes.
    pub(crate) outbox: Outbox,
}

/// Adds `tessera:messaging` to a linker whose store state holds a [`MessagingState`].
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut MessagingState,
) -> wasmtime::Result<()> {
    producer::add_to_linker::<T, HasSelf<MessagingState>>(linker, get)
}

impl producer::Host for MessagingState {
    async fn publish(
        &mut self,
        topic: String,
        data: Vec<u8>,
        content_type: Option<String>,
    ) -> wasmtime::Result<Result<String, producer::Error>> {
        if !self.enabled {
            return Ok(Err(producer::Error::Unavailable(
                "this component was loaded without a message journal".into(),
            )));
        }
        if let Err(message) = tessera_model::check_topic(&topic) {
            return Ok(Err(producer::Error::InvalidTopic(message)));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let message = OutgoingMessage {
            id: id.clone(),
            topic,
            data,
            content_type,
        };
        Ok(match self.outbox.push(message) {
            Ok(()) => Ok(id),
            Err(message) => Err(producer::Error::TooLarge(message)),
        })
    }
}
