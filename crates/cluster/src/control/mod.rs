//! [`JetStreamControl`]: the control state as an ordered log in JetStream, applied by every
//! node to its own projection.
//!
//! - **Writes** are computed against the projection and published with
//!   `Nats-Expected-Last-Sequence` set to the last sequence the projection applied. If
//!   anyone (any node) committed meanwhile, the server refuses the message; the node
//!   catches up and computes the transaction again. So all transactions form one order,
//!   each sees everything before it, and none interleaves with another.
//! - **Reads** ask the stream leader for its last sequence and wait until the projection
//!   has applied it, so a caller reads its own write through any node. When the cluster
//!   cannot be reached, reads answer from the projection as it is.
//! - **Changes**: the stream sequence is the change sequence, and the projection wakes
//!   [`ControlState::watch`] receivers as it applies messages from any node.

pub(crate) mod state;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tessera_store::rules::DeployPlan;
use tessera_store::{
    AppState, ArtifactStore, ChangeBatch, ControlState, DeployOptions, DeployOutcome,
    ServiceDeploy, ServiceState, StoreError,
};

use crate::setup::{CONTROL_STREAM, CONTROL_SUBJECTS};
use crate::{Cluster, REQUEST_TIMEOUT, unavailable};
use state::{Entry, Planned, Projection};

/// How often a transaction is computed again after losing the race to another node's
/// before the caller is told the cluster is too busy.
const MAX_ATTEMPTS: usize = 64;
/// How long a read waits for the projection to catch up with the stream leader.
const CATCH_UP: Duration = Duration::from_secs(5);
/// How long a node starting up may take to replay the log (up to 64 versions of every
/// app).
const FIRST_CATCH_UP: Duration = Duration::from_secs(120);
/// How long the log's consumer may stay quiet before it is checked against the stream.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// The cluster's control state. Cheap to share behind an `Arc`; one per node.
pub struct JetStreamControl {
    cluster: Cluster,
    shared: Arc<Shared>,
    /// Serialises this node's transactions (other nodes' are ordered by the log).
    write: Mutex<()>,
    /// The artifacts a deploy checks against.
    artifacts: Arc<dyn ArtifactStore>,
    follower: tokio::task::JoinHandle<()>,
}

struct Shared {
    projection: Mutex<Projection>,
    /// The last sequence applied.
    applied: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn projection(&self) -> MutexGuard<'_, Projection> {
        self.projection.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, seq: u64, payload: &[u8]) {
        let mut projection = self.projection();
        if seq <= projection.last {
            return;
        }
        if let Err(message) = projection.apply(seq, payload) {
            tracing::error!(seq, %message, "control log message skipped: unreadable");
        }
        drop(projection);
        self.applied.send_replace(seq);
    }
}

impl JetStreamControl {
    /// Follows the cluster's control log, returning once the projection has caught up
    /// with everything committed so far. `artifacts` is where deploys find components.
    pub fn open(
        cluster: &Cluster,
        artifacts: Arc<dyn ArtifactStore>,
    ) -> Result<JetStreamControl, StoreError> {
        let js = cluster.js();
        let (first, last, messages) = cluster
            .bridge()
            .run(async move {
                let mut stream = js.get_stream(CONTROL_STREAM).await?;
                let info = stream.info().await?;
                Ok::<_, async_nats::Error>((
                    info.state.first_sequence,
                    info.state.last_sequence,
                    info.state.messages,
                ))
            })
            .map_err(|e| unavailable("read the control log", e))?;
        let mut projection = Projection::default();
        // Superseded versions were dropped: changes before now are not all known.
        projection.floor = if first <= 1 && messages == last {
            0
        } else {
            last
        };
        let (applied, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            projection: Mutex::new(projection),
            applied,
        });
        let follower = cluster.bridge().spawn(follow(cluster.js(), shared.clone()));
        let control = JetStreamControl {
            cluster: cluster.clone(),
            shared,
            write: Mutex::new(()),
            artifacts,
            follower,
        };
        control.wait_applied_within(last, FIRST_CATCH_UP, "catch up with the control log")?;
        Ok(control)
    }

    /// Waits until the projection has applied sequence `seq`.
    fn wait_applied(&self, seq: u64, action: &str) -> Result<(), StoreError> {
        self.wait_applied_within(seq, CATCH_UP, action)
    }

    fn wait_applied_within(
        &self,
        seq: u64,
        limit: Duration,
        action: &str,
    ) -> Result<(), StoreError> {
        let mut applied = self.shared.applied.subscribe();
        let reached = self.cluster.bridge().run(async move {
            tokio::time::timeout(limit, applied.wait_for(|v| *v >= seq))
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false)
        });
        if reached {
            Ok(())
        } else {
            Err(unavailable(
                action,
                format!("the log was not caught up to sequence {seq} within {limit:?}"),
            ))
        }
    }

    /// The stream leader's last sequence.
    fn leader_last(&self) -> Result<u64, StoreError> {
        let js = self.cluster.js();
        self.cluster
            .bridge()
            .run(async move {
                // Stream info is answered by the stream's leader (while a group has no
                // leader, 2.9 may let a member answer: a read then waits for that
                // member's view).
                let stream =
                    tokio::time::timeout(REQUEST_TIMEOUT, js.get_stream(CONTROL_STREAM)).await??;
                Ok::<_, async_nats::Error>(stream.cached_info().state.last_sequence)
            })
            .map_err(|e| unavailable("read the control log", e))
    }

    /// Catches the projection up with everything committed anywhere so far.
    fn sync(&self) -> Result<(), StoreError> {
        let last = self.leader_last()?;
        self.wait_applied(last, "catch up with the control log")
    }

    /// Catches up for a read. When this node is cut off from NATS the read answers from
    /// what it has; when NATS is reachable but the log cannot be caught up with, the read
    /// fails rather than answer something older than a write the caller already saw.
    fn sync_for_read(&self) -> Result<(), StoreError> {
        if !self.cluster.connected() {
            tracing::debug!("not connected to NATS: answering from this node's copy");
            return Ok(());
        }
        self.sync()
    }

    /// Runs a transaction: computes it against the projection and commits its document
    /// only if nothing was committed meanwhile, computing it again if something was.
    fn commit<T>(
        &self,
        action: &str,
        plan: impl Fn(&Projection) -> Result<Planned<T>, StoreError>,
    ) -> Result<T, StoreError> {
        let _write = self.write.lock().unwrap_or_else(|e| e.into_inner());
        // Fail at once rather than after a timeout when the link is known to be down.
        if !self.cluster.connected() {
            return Err(unavailable(action, "this node is not connected to NATS"));
        }
        // Plan against everything committed so far: an answer decided on a stale view
        // (nothing to remove, no such service, unchanged) would go back to the caller as
        // it is, without the log ever refusing it.
        self.sync()
            .map_err(|e| unavailable(action, e.to_string()))?;
        let op = operation_id(self.cluster.node());
        for _ in 0..MAX_ATTEMPTS {
            let (expected, planned) = {
                let projection = self.shared.projection();
                (projection.last, plan(&projection)?)
            };
            let Some(doc) = planned.doc else {
                return Ok(planned.value);
            };
            let subject = doc.subject();
            let payload = serde_json::to_vec(&Entry {
                op: op.clone(),
                node: self.cluster.node().to_owned(),
                doc,
            })
            .expect("documents always serialise");
            match self.publish(subject, payload.clone(), expected, &op) {
                Ok(Published::Committed(seq)) => {
                    self.shared.apply(seq, &payload);
                    return Ok(planned.value);
                }
                Ok(Published::Duplicate(seq)) => {
                    // An earlier attempt whose acknowledgement was lost did commit.
                    self.wait_applied(seq, action)?;
                    return Ok(planned.value);
                }
                Ok(Published::Stale) => self.sync()?,
                Ok(Published::Refused(message)) => {
                    return Err(unavailable(
                        action,
                        format!("the cluster refused the change: {message}"),
                    ));
                }
                Err(message) => {
                    // Lost acknowledgement or an unreachable server: the change may or may
                    // not have committed. Find out once the log can be read.
                    self.sync()
                        .map_err(|_| unavailable(action, message.clone()))?;
                    if self.shared.projection().committed(&op).is_some() {
                        return Ok(planned.value);
                    }
                }
            }
        }
        Err(unavailable(
            action,
            format!("other nodes kept committing first; gave up after {MAX_ATTEMPTS} attempts"),
        ))
    }

    fn publish(
        &self,
        subject: String,
        payload: Vec<u8>,
        expected: u64,
        op: &str,
    ) -> Result<Published, String> {
        let js = self.cluster.js();
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(op)
            .header(
                async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                expected.to_string().as_str(),
            );
        self.cluster.bridge().run(async move {
            let ack = async { js.send_publish(subject, message).await?.await };
            match tokio::time::timeout(REQUEST_TIMEOUT, ack).await {
                Err(_) => Err("no acknowledgement in time".to_owned()),
                Ok(Ok(ack)) if ack.duplicate => Ok(Published::Duplicate(ack.sequence)),
                Ok(Ok(ack)) => Ok(Published::Committed(ack.sequence)),
                Ok(Err(e))
                    if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence =>
                {
                    Ok(Published::Stale)
                }
                Ok(Err(e))
                    if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded =>
                {
                    Ok(Published::Refused(e.to_string()))
                }
                Ok(Err(e)) => Err(e.to_string()),
            }
        })
    }

    fn read<T>(&self, read: impl FnOnce(&Projection) -> T) -> Result<T, StoreError> {
        self.sync_for_read()?;
        Ok(read(&self.shared.projection()))
    }
}

impl Drop for JetStreamControl {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

enum Published {
    Committed(u64),
    /// The server had this operation's message already (a retry of a lost ack).
    Duplicate(u64),
    /// Someone committed after the sequence the transaction was computed against.
    Stale,
    /// The server can never take this message (too large): retrying is pointless.
    Refused(String),
}

/// Applies the control log from where the projection is, for as long as the node lives;
/// when the consumer fails (a server lost, a leader elected) it starts again from there.
async fn follow(js: jetstream::Context, shared: Arc<Shared>) {
    loop {
        let start = shared.projection().last + 1;
        match follow_from(&js, &shared, start).await {
            Ok(()) => tracing::debug!("control log consumer ended; following again"),
            Err(error) => tracing::warn!(%error, "following the control log failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn follow_from(
    js: &jetstream::Context,
    shared: &Shared,
    start: u64,
) -> Result<(), async_nats::Error> {
    let stream: stream::Stream<stream::Info> = js.get_stream(CONTROL_STREAM).await?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: CONTROL_SUBJECTS.into(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    loop {
        let next = match tokio::time::timeout(STALL_CHECK, messages.next()).await {
            Ok(next) => next,
            Err(_) => {
                // Quiet: fine if nothing was committed, a stalled consumer (its server
                // lost, a leader elected) if the log moved on without it.
                let stream =
                    tokio::time::timeout(REQUEST_TIMEOUT, js.get_stream(CONTROL_STREAM)).await??;
                let last = stream.cached_info().state.last_sequence;
                if last > shared.projection().last {
                    return Err(format!("consumer stalled behind sequence {last}").into());
                }
                continue;
            }
        };
        let Some(message) = next else { break };
        let message = message?;
        let seq = message.info()?.stream_sequence;
        shared.apply(seq, &message.payload);
    }
    Ok(())
}

/// A fresh id for one operation (or one run of a node), unique across the cluster.
pub(crate) fn operation_id(node: &str) -> String {
    format!("{node}-{}", nuid::next())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ControlState for JetStreamControl {
    fn changes(&self, after: u64) -> Result<ChangeBatch, StoreError> {
        Ok(self.shared.projection().changes(after))
    }

    fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    fn apps(&self) -> Result<Vec<AppState>, StoreError> {
        self.read(Projection::apps)
    }

    fn app(&self, name: &str) -> Result<Option<AppState>, StoreError> {
        self.read(|p| p.app(name))
    }

    fn deploy(
        &self,
        app: &str,
        services: &[ServiceDeploy],
        options: &DeployOptions,
    ) -> Result<DeployOutcome, StoreError> {
        let plan = DeployPlan::new(app, services, options)?;
        // Artifacts are never deleted, so this check cannot go stale.
        for service in &plan.selected {
            if !self.artifacts.has_artifact(&service.sha256) {
                self.artifacts.artifact_path(&service.sha256)?;
            }
        }
        let now = now();
        self.commit(&format!("deploy app `{app}`"), |p| p.deploy(&plan, now))
    }

    fn set_traffic(
        &self,
        app: &str,
        service: &str,
        weights: &[(u32, u8)],
    ) -> Result<ServiceState, StoreError> {
        self.commit(
            &format!("set the traffic of service `{service}` of app `{app}`"),
            |p| p.set_traffic(app, service, weights),
        )
    }

    fn rollback(
        &self,
        app: &str,
        service: &str,
        to: Option<u32>,
    ) -> Result<ServiceState, StoreError> {
        self.commit(
            &format!("roll back service `{service}` of app `{app}`"),
            |p| p.rollback(app, service, to),
        )
    }

    fn remove_app(&self, app: &str) -> Result<bool, StoreError> {
        self.commit(&format!("remove app `{app}`"), |p| Ok(p.remove_app(app)))
    }

    fn set_secret(
        &self,
        app: &str,
        service: &str,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        let now = now();
        self.commit(
            &format!("set a secret of service `{service}` of app `{app}`"),
            |p| Ok(p.set_secret(app, service, name, value, now)),
        )
    }

    fn delete_secret(&self, app: &str, service: &str, name: &str) -> Result<bool, StoreError> {
        self.commit(
            &format!("remove a secret of service `{service}` of app `{app}`"),
            |p| Ok(p.delete_secret(app, service, name)),
        )
    }

    fn secret_names(&self, app: &str, service: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|p| {
            p.secrets(app, service)
                .into_iter()
                .map(|(name, _, at)| (name, at))
                .collect()
        })
    }

    fn secrets(&self, app: &str, service: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|p| {
            p.secrets(app, service)
                .into_iter()
                .map(|(name, value, _)| (name, value))
                .collect()
        })
    }

    fn purge_secrets(&self, app: &str) -> Result<(), StoreError> {
        self.commit(&format!("remove the secrets of app `{app}`"), |p| {
            Ok(p.purge_secrets(app))
        })
    }
}
