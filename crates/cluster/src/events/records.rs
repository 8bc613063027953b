//! What the JetStream journal stores, and how: a message as one JetStream message (its
//! attributes as JSON, then its payload untouched), subscription records, delivery status
//! records, dead letters and each node's delivery counts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tessera_events::{
    Consumer, DeadLetter, DeliveryState, DeliveryStatus, Message, Outcome, SubscriptionSpec,
    from_unix_ms, unix_ms,
};

/// A message's attributes, stored ahead of its payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MessageMeta {
    pub id: String,
    pub topic: String,
    pub source: String,
    pub kind: String,
    pub time_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<(String, String)>,
}

impl MessageMeta {
    pub(crate) fn of(message: &Message) -> MessageMeta {
        MessageMeta {
            id: message.id.clone(),
            topic: message.topic.clone(),
            source: message.source.clone(),
            kind: message.kind.clone(),
            time_ms: unix_ms(message.time),
            content_type: message.content_type.clone(),
            attributes: message.attributes.clone(),
        }
    }

    pub(crate) fn into_message(self, data: Vec<u8>) -> Message {
        Message {
            id: self.id,
            topic: self.topic,
            source: self.source,
            kind: self.kind,
            time: from_unix_ms(self.time_ms),
            content_type: self.content_type,
            data,
            attributes: self.attributes,
        }
    }
}

/// `head` as JSON after its length (4 bytes, big-endian), then `data`: one JetStream
/// payload with no header that could need escaping.
pub(crate) fn envelope<T: Serialize>(head: &T, data: &[u8]) -> Bytes {
    let head = serde_json::to_vec(head).expect("records serialise");
    let mut out = BytesMut::with_capacity(4 + head.len() + data.len());
    out.put_u32(u32::try_from(head.len()).unwrap_or(u32::MAX));
    out.put_slice(&head);
    out.put_slice(data);
    out.freeze()
}

/// The head and data of an [`envelope`].
pub(crate) fn open_envelope<T: for<'a> Deserialize<'a>>(
    payload: &[u8],
) -> Result<(T, Vec<u8>), String> {
    let (len, rest) = payload
        .split_first_chunk::<4>()
        .ok_or("a stored event is shorter than its header")?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err("a stored event is cut short".into());
    }
    let (head, data) = rest.split_at(len);
    let head = serde_json::from_slice(head).map_err(|e| format!("a stored event: {e}"))?;
    Ok((head, data.to_vec()))
}

/// A subscription's settings as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpecRecord {
    pub id: String,
    pub app: String,
    pub topic: String,
    pub consumers: Vec<(String, String)>,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub concurrency: u32,
    pub batch: u32,
    pub timeout_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&SubscriptionSpec> for SpecRecord {
    fn from(s: &SubscriptionSpec) -> SpecRecord {
        SpecRecord {
            id: s.id.clone(),
            app: s.app.clone(),
            topic: s.topic.clone(),
            consumers: s
                .consumers
                .iter()
                .map(|c| (c.service.clone(), c.path.clone()))
                .collect(),
            max_attempts: s.max_attempts,
            backoff_ms: ms(s.backoff),
            max_backoff_ms: ms(s.max_backoff),
            concurrency: s.concurrency,
            batch: s.batch,
            timeout_ms: ms(s.timeout),
        }
    }
}

impl SpecRecord {
    pub(crate) fn spec(&self) -> SubscriptionSpec {
        SubscriptionSpec {
            id: self.id.clone(),
            app: self.app.clone(),
            topic: self.topic.clone(),
            consumers: self
                .consumers
                .iter()
                .map(|(service, path)| Consumer {
                    service: service.clone(),
                    path: path.clone(),
                })
                .collect(),
            max_attempts: self.max_attempts,
            backoff: Duration::from_millis(self.backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
            concurrency: self.concurrency,
            batch: self.batch,
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

/// A subscription as the cluster knows it: its latest settings, who registers it, and
/// which stretches of the event stream it must not be fed (published while no owner
/// registered it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SubRecord {
    pub spec: SpecRecord,
    pub owners: BTreeSet<String>,
    /// While no owner registers it: the event stream's last sequence when the last owner
    /// left. Messages after it are not this subscription's.
    #[serde(default)]
    pub paused_at: Option<u64>,
    /// When the current pause began (ms since the epoch): a subscription paused for
    /// longer than [`crate::events::PAUSED_RETENTION`] is forgotten, its consumer deleted.
    #[serde(default)]
    pub paused_ms: Option<i64>,
    /// Closed pauses `(after, up_to]`: stream sequences skipped when leased.
    #[serde(default)]
    pub skip: Vec<(u64, u64)>,
    /// Whether its re-drive consumer exists.
    #[serde(default)]
    pub redrive: bool,
}

impl SubRecord {
    pub(crate) fn active(&self) -> bool {
        !self.owners.is_empty()
    }

    /// Whether the message at stream sequence `seq` was published while paused.
    pub(crate) fn skips(&self, seq: u64) -> bool {
        self.paused_at.is_some_and(|at| seq > at)
            || self
                .skip
                .iter()
                .any(|&(after, upto)| seq > after && seq <= upto)
    }

    /// Registers or drops `owner`, pausing or resuming at `last_seq` (the event stream's
    /// last sequence, read before this change) when that changes whether anyone registers
    /// it. Closed pauses that end at or before `floor` (the consumer's acknowledgement
    /// floor: everything up to it is answered) are dropped.
    pub(crate) fn set_owner(&mut self, owner: &str, present: bool, last_seq: u64, floor: u64) {
        let was = self.active();
        if present {
            self.owners.insert(owner.to_owned());
        } else {
            self.owners.remove(owner);
        }
        match (was, self.active()) {
            (true, false) => {
                self.paused_at = Some(last_seq);
                self.paused_ms = Some(tessera_events::unix_ms(SystemTime::now()));
            }
            (false, true) => {
                self.paused_ms = None;
                if let Some(at) = self.paused_at.take()
                    && last_seq > at
                {
                    self.skip.push((at, last_seq));
                }
            }
            _ => {}
        }
        self.skip.retain(|&(_, upto)| upto > floor);
    }
}

/// The last result of a delivery, kept for subscriptions of the platform's own topics
/// (async invocations).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StatusRecord {
    pub state: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<OutcomeRecord>,
    pub updated_ms: i64,
    /// For a running delivery: when its lease ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutcomeRecord {
    pub status: u16,
    /// Hex, capped at [`tessera_events::MAX_RESULT_BODY_BYTES`].
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl OutcomeRecord {
    pub(crate) fn of(outcome: &Outcome) -> OutcomeRecord {
        let body = &outcome.body[..outcome
            .body
            .len()
            .min(tessera_events::MAX_RESULT_BODY_BYTES)];
        OutcomeRecord {
            status: outcome.status,
            body: hex::encode(body),
            error: outcome.error.clone(),
        }
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            status: self.status,
            body: hex::decode(&self.body).unwrap_or_default(),
            error: self.error.clone(),
        }
    }
}

fn state_name(state: DeliveryState) -> &'static str {
    state.as_str()
}

impl StatusRecord {
    pub(crate) fn new(state: DeliveryState, attempts: u32, last: Option<&Outcome>) -> Self {
        StatusRecord {
            state: state_name(state).to_owned(),
            attempts,
            last: last.map(OutcomeRecord::of),
            updated_ms: unix_ms(SystemTime::now()),
            expires_ms: None,
        }
    }

    /// The status as of `now`: a running delivery whose lease ended is pending again.
    pub(crate) fn status(&self, now: SystemTime) -> DeliveryStatus {
        let mut state = match self.state.as_str() {
            "running" => DeliveryState::Running,
            "succeeded" => DeliveryState::Succeeded,
            "failed" => DeliveryState::Failed,
            _ => DeliveryState::Pending,
        };
        let mut updated = from_unix_ms(self.updated_ms);
        if state == DeliveryState::Running
            && let Some(expires) = self.expires_ms.map(from_unix_ms)
            && expires <= now
        {
            state = DeliveryState::Pending;
            updated = expires;
        }
        DeliveryStatus {
            state,
            attempts: self.attempts,
            last: self.last.as_ref().map(OutcomeRecord::outcome),
            updated,
        }
    }
}

/// A dead letter's head; the message's payload follows it in the envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeadHead {
    pub message: MessageMeta,
    pub attempts: u32,
    pub last_status: u16,
    pub last_error: String,
    pub failed_ms: i64,
}

/// Longest error text a dead letter keeps.
pub(crate) const MAX_ERROR_BYTES: usize = 4096;

pub(crate) fn capped(text: &str) -> String {
    if text.len() <= MAX_ERROR_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl DeadHead {
    pub(crate) fn into_dead_letter(self, data: Vec<u8>) -> DeadLetter {
        DeadLetter {
            message: self.message.into_message(data),
            attempts: self.attempts,
            last_status: self.last_status,
            last_error: self.last_error,
            failed_at: from_unix_ms(self.failed_ms),
        }
    }
}

/// One node's delivery counts, by subscription: acknowledged and failed attempts in total,
/// and deliveries it holds leased now.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CountsRecord {
    pub updated_ms: i64,
    pub subs: BTreeMap<String, SubCounts>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SubCounts {
    pub delivered: u64,
    pub retries: u64,
    #[serde(default)]
    pub in_flight: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SubRecord {
        SubRecord {
            spec: SpecRecord::from(&tessera_events::conformance::spec("s", "t")),
            owners: BTreeSet::new(),
            paused_at: None,
            paused_ms: None,
            skip: Vec::new(),
            redrive: false,
        }
    }

    #[test]
    fn pauses_skip_what_was_published_while_no_one_registered() {
        let mut r = record();
        r.set_owner("a", true, 5, 0);
        assert!(r.active() && r.paused_at.is_none() && r.skip.is_empty());
        r.set_owner("b", true, 6, 0);
        r.set_owner("a", false, 7, 0);
        assert!(r.active(), "b still registers it");
        r.set_owner("b", false, 10, 0);
        assert_eq!(r.paused_at, Some(10));
        assert!(r.paused_ms.is_some());
        assert!(!r.skips(10) && r.skips(11));
        r.set_owner("a", true, 14, 0);
        assert_eq!((r.paused_at, r.skip.clone()), (None, vec![(10, 14)]));
        assert!(r.paused_ms.is_none());
        assert!(!r.skips(10) && r.skips(11) && r.skips(14) && !r.skips(15));
        // Once the consumer has answered everything up to 14, the pause is forgotten.
        r.set_owner("b", true, 20, 14);
        assert!(r.skip.is_empty());
    }

    #[test]
    fn envelopes_keep_head_and_data_apart() {
        let meta = MessageMeta {
            id: "m".into(),
            topic: "t\nwith a line break".into(),
            source: "/s".into(),
            kind: "k".into(),
            time_ms: 1,
            content_type: None,
            attributes: vec![("a".into(), "ü".into())],
        };
        let payload = envelope(&meta, b"\x00\x01data");
        let (back, data): (MessageMeta, _) = open_envelope(&payload).unwrap();
        assert_eq!(back.topic, meta.topic);
        assert_eq!(back.attributes, meta.attributes);
        assert_eq!(data, b"\x00\x01data");
        assert!(open_envelope::<MessageMeta>(&payload[..6]).is_err());
    }
}
