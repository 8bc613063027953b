//! Conditional writes that hold on a NATS 2.9 cluster.
//!
//! A KV `update(key, value, revision)` sends `Nats-Expected-Last-Subject-Sequence`, which a
//! clustered 2.9 server checks only before proposing the write, not as part of it: two
//! updates in flight with the same revision can both be accepted (nats-server #4320, fixed
//! after 2.9.10; measured here: 450 increments from three nodes ended at 331). The
//! stream-wide `Nats-Expected-Last-Sequence` is checked in order with the proposals, so a
//! conditional write here reads the stream's last sequence, then the subject's newest
//! message, decides, and publishes expecting that last sequence: it commits only if
//! nothing at all was written to the stream in between, and is computed again otherwise.
//! Streams that take conditional writes are kept small (key-value data is spread over
//! shards) so unrelated writes rarely force a retry. Every attempt of one write carries the
//! same `Nats-Msg-Id`: when an acknowledgement is lost, the key is read again and a write
//! carrying that id is recognised as this one, so an increment is never applied twice nor
//! reported failed after it landed.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use bytes::Bytes;

/// How often a conditional write is computed again when other writes keep landing first.
const ATTEMPTS: usize = 10_000;
/// How often a write whose outcome is unknown (no acknowledgement) is looked for again
/// before the caller is told.
const MAX_UNSURE: usize = 2;

/// A subject's newest message as a key: its value (`None` for a delete or purge marker)
/// and its sequence.
pub(crate) struct Current {
    pub value: Option<Bytes>,
    pub seq: u64,
}

/// What to write after seeing the current state, or `None` to write nothing.
pub(crate) struct Write {
    pub payload: Bytes,
    pub headers: HeaderMap,
}

fn is_marker(headers: &HeaderMap) -> bool {
    headers
        .get("KV-Operation")
        .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
}

/// The newest message of `subject`, read from the stream leader.
pub(crate) async fn current(
    stream: &stream::Stream,
    subject: &str,
) -> Result<Option<Current>, String> {
    Ok(current_with_id(stream, subject).await?.map(|(c, _)| c))
}

/// [`current`], with the message id it was written with.
async fn current_with_id(
    stream: &stream::Stream,
    subject: &str,
) -> Result<Option<(Current, Option<String>)>, String> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => {
            let id = message
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned());
            Ok(Some((
                Current {
                    value: (!is_marker(&message.headers)).then_some(message.payload),
                    seq: message.sequence,
                },
                id,
            )))
        }
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes on `subject` of `stream_name` what `decide` makes of its current state,
/// atomically: if anything was written to the stream between the read and the write, it
/// reads and decides again. Returns the sequence written, or `None` if `decide` chose to
/// write nothing; `decide` may also fail, which ends the write with its error.
pub(crate) async fn write_if<E>(
    js: &jetstream::Context,
    stream_name: &str,
    subject: &str,
    nats: impl Fn(String) -> E,
    mut decide: impl FnMut(Option<&Current>) -> Result<Option<Write>, E>,
) -> Result<Option<u64>, E> {
    // One id for every attempt: a write whose acknowledgement was lost is recognised as
    // ours when the key is read again (and a late copy is dropped by the server's dedup).
    let id = nuid::next().to_string();
    let mut unsure = 0;
    for _ in 0..ATTEMPTS {
        let stream = js
            .get_stream(stream_name)
            .await
            .map_err(|e| nats(e.to_string()))?;
        let last = stream.cached_info().state.last_sequence;
        let now = current_with_id(&stream, subject).await.map_err(&nats)?;
        if unsure > 0
            && let Some((current, Some(written))) = &now
            && *written == id
        {
            return Ok(Some(current.seq));
        }
        let now = now.map(|(current, _)| current);
        if now.as_ref().is_some_and(|c| c.seq > last) {
            continue;
        }
        let Some(write) = decide(now.as_ref())? else {
            return Ok(None);
        };
        let mut headers = write.headers;
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
            last.to_string().as_str(),
        );
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let ack = match js
            .publish_with_headers(subject.to_owned(), headers, write.payload)
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => return Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
            // The write may or may not have landed: look once more before failing.
            Err(_) if unsure < MAX_UNSURE => unsure += 1,
            Err(e) => return Err(nats(e.to_string())),
        }
    }
    Err(nats(format!(
        "gave up after {ATTEMPTS} attempts: other writes kept landing first"
    )))
}
