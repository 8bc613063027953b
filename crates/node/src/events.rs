//! Events on a node: the journal, the dispatcher and the cron scheduler, fed from the
//! triggers of the serving revisions, and the invoker that hands each delivery to its
//! service as a CloudEvents HTTP `POST` (binary mode) through the same services the
//! gateway routes to.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::callback::CallbackPolicy;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use tessera_events::{
    Consumer, CronScheduler, CronSpec, Delivery, Dispatcher, DispatcherConfig, Invoker, Journal,
    NewMessage, Outcome, Schedule, SubscriptionSpec, invocation,
};
use tessera_gateway::{Rejection, Target};
use tessera_runtime::{InvokeError, OutgoingMessage, Publisher, headers};
use tessera_store::AppState;

/// Delivery settings of cron ticks and async invocations (subscriptions set their own).
const TICK_ATTEMPTS: u32 = 3;
const INTERNAL_BACKOFF: Duration = Duration::from_secs(1);
const INTERNAL_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Extra lease time beyond a service's request timeout, so a delivery that is still
/// being handled is not handed out twice.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Services that can take deliveries, by (app, service).
pub(crate) type TargetMap = HashMap<(String, String), Arc<Target>>;

/// The node's event machinery. The journal exists from the start (publishing works before
/// anything is delivered); the dispatcher and scheduler start with the node's listeners.
pub(crate) struct Events {
    pub(crate) journal: Arc<dyn Journal>,
    /// The dispatcher's settings; its owner is the node's id, under which the node's
    /// subscriptions are registered in the journal.
    dispatcher: DispatcherConfig,
    targets: Arc<ArcSwap<TargetMap>>,
    running: Mutex<Option<Running>>,
    /// The latest triggers, applied when the machinery starts and on every rebuild.
    specs: Mutex<(Vec<SubscriptionSpec>, Vec<CronSpec>)>,
    /// Where async-invocation callbacks may go.
    pub(crate) callbacks: Arc<ArcSwap<CallbackPolicy>>,
}

struct Running {
    dispatcher: Arc<Dispatcher>,
    cron: CronScheduler,
    /// The subscriptions the dispatcher should run; its updater task applies the latest.
    wanted: tokio::sync::watch::Sender<Vec<SubscriptionSpec>>,
    updater: tokio::task::JoinHandle<()>,
}

impl Events {
    pub(crate) fn new(journal: Arc<dyn Journal>, dispatcher: DispatcherConfig) -> Events {
        Events {
            journal,
            dispatcher,
            targets: Arc::new(ArcSwap::from_pointee(HashMap::new())),
            running: Mutex::new(None),
            specs: Mutex::new((Vec::new(), Vec::new())),
            callbacks: Arc::new(ArcSwap::from_pointee(CallbackPolicy::default())),
        }
    }

    /// Whether any service of the app is serving.
    pub(crate) fn serves_app(&self, app: &str) -> bool {
        self.targets.load().keys().any(|(a, _)| a == app)
    }

    /// The serving targets by (app, service), kept current by every rebuild.
    pub(crate) fn targets(&self) -> Arc<ArcSwap<TargetMap>> {
        self.targets.clone()
    }

    /// Starts delivering (call inside a tokio runtime). Idempotent.
    pub(crate) fn start(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.is_some() {
            return;
        }
        let invoker = Arc::new(NodeInvoker {
            node: self.dispatcher.owner.clone(),
            targets: self.targets.clone(),
            callbacks: self.callbacks.clone(),
        });
        let dispatcher = Arc::new(Dispatcher::start_with(
            self.journal.clone(),
            invoker,
            self.dispatcher.clone(),
        ));
        let cron = CronScheduler::start(self.journal.clone());
        let (subs, crons) = self.specs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        cron.set(crons);
        // Rebuilds happen on threads outside the runtime; one task applies their
        // subscriptions in order, always the latest.
        let (wanted, mut latest) = tokio::sync::watch::channel(subs);
        latest.mark_changed();
        let target = dispatcher.clone();
        let updater = tokio::spawn(async move {
            while latest.changed().await.is_ok() {
                let subs = latest.borrow_and_update().clone();
                if let Err(error) = target.set_subscriptions(subs).await {
                    tracing::error!(%error, "cannot install the event subscriptions");
                }
            }
        });
        *running = Some(Running {
            dispatcher,
            cron,
            wanted,
            updater,
        });
    }

    /// Stops leasing and firing; waits (bounded) for deliveries in flight.
    pub(crate) async fn shutdown(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(Running {
            dispatcher,
            cron,
            wanted,
            updater,
        }) = running
        {
            drop(wanted);
            let _ = updater.await;
            cron.shutdown().await;
            if let Ok(dispatcher) = Arc::try_unwrap(dispatcher) {
                dispatcher.shutdown().await;
            }
        }
    }

    /// Installs the triggers and targets of the serving revisions. The journal learns the
    /// subscriptions at once, so a publish right after a deploy already fans out to them.
    pub(crate) fn update(&self, apps: &[AppState], targets: TargetMap) -> Result<(), String> {
        self.targets.store(Arc::new(targets));
        let (subs, crons) = triggers(apps)?;
        self.journal
            .register(&self.dispatcher.owner, &subs)
            .map_err(|e| e.to_string())?;
        if let Some(running) = &*self.running.lock().unwrap_or_else(|e| e.into_inner()) {
            running.wanted.send_replace(subs.clone());
            running.cron.set(crons.clone());
        }
        *self.specs.lock().unwrap_or_else(|e| e.into_inner()) = (subs, crons);
        Ok(())
    }

    /// A publisher for the guests of one service: messages go to topics of its app.
    pub(crate) fn publisher(self: &Arc<Self>, app: &str) -> Arc<dyn Publisher> {
        Arc::new(AppPublisher {
            events: self.clone(),
            app: app.to_string(),
        })
    }

    /// Publishes messages to an app's topics; durable when it returns. The journal wakes
    /// the subscribers' dispatchers, on this node and any other sharing it.
    pub(crate) fn publish(
        &self,
        app: &str,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<tessera_events::Published>, tessera_events::EventError> {
        self.journal.publish(app, messages)
    }
}

/// Subscriptions and schedules of every serving service, from its primary revision.
fn triggers(apps: &[AppState]) -> Result<(Vec<SubscriptionSpec>, Vec<CronSpec>), String> {
    let mut subs = Vec::new();
    let mut crons = Vec::new();
    for app in apps {
        // Queue groups gather consumers across services: (topic, queue) → spec.
        let mut queues: BTreeMap<(String, String), SubscriptionSpec> = BTreeMap::new();
        for service in &app.services {
            let Some(primary) = service.primary() else {
                continue;
            };
            let config = &primary.config;
            let at = ServiceAt {
                app: &app.name,
                service: &service.name,
                // A delivery may wait in the service's queue before it runs.
                timeout: config.limits.timeout + config.scaling.queue_timeout + LEASE_MARGIN,
            };
            for sub in &config.subscriptions {
                let spec = at.subscription(sub);
                match &sub.queue {
                    // The first service (by name) sets the group's delivery settings.
                    Some(queue) => {
                        queues
                            .entry((sub.topic.clone(), queue.clone()))
                            .and_modify(|group| {
                                group.consumers.extend(spec.consumers.iter().cloned());
                                group.timeout = group.timeout.max(spec.timeout);
                            })
                            .or_insert(spec);
                    }
                    None => subs.push(spec),
                }
            }
            for (index, cron) in config.cron.iter().enumerate() {
                let (sub, cron) = at.cron(index, cron)?;
                subs.push(sub);
                crons.push(cron);
            }
            // Every service takes async invocations on any of its routes.
            subs.push(at.invocations());
        }
        subs.extend(queues.into_values());
    }
    Ok((subs, crons))
}

/// One service's triggers, as the journal and the scheduler take them.
struct ServiceAt<'a> {
    app: &'a str,
    service: &'a str,
    /// The lease of its deliveries.
    timeout: Duration,
}

impl ServiceAt<'_> {
    fn consumer(&self, path: &str) -> Consumer {
        Consumer {
            service: self.service.to_string(),
            path: path.to_string(),
        }
    }

    /// A topic subscription: its own, or (with a queue) the app's group for the topic.
    fn subscription(&self, sub: &tessera_store::Subscription) -> SubscriptionSpec {
        SubscriptionSpec {
            id: match &sub.queue {
                Some(queue) => format!("{}/queue:{queue}/{}", self.app, sub.topic),
                None => format!("{}/{}/{}", self.app, self.service, sub.topic),
            },
            app: self.app.to_string(),
            topic: sub.topic.clone(),
            consumers: vec![self.consumer(&sub.path)],
            max_attempts: sub.max_attempts,
            backoff: sub.backoff,
            max_backoff: sub.max_backoff,
            concurrency: sub.concurrency,
            batch: sub.batch,
            timeout: self.timeout,
        }
    }

    /// A schedule: its ticks are published to an internal topic its subscription takes.
    fn cron(
        &self,
        index: usize,
        cron: &tessera_store::CronTrigger,
    ) -> Result<(SubscriptionSpec, CronSpec), String> {
        let id = format!("{}/{}/cron:{index}", self.app, self.service);
        let topic = format!("$cron/{}/{index}", self.service);
        let schedule = Schedule::parse(&cron.schedule)
            .map_err(|m| format!("service `{}`: schedule: {m}", self.service))?;
        let sub = SubscriptionSpec {
            id: id.clone(),
            app: self.app.to_string(),
            topic: topic.clone(),
            consumers: vec![self.consumer(&cron.path)],
            max_attempts: TICK_ATTEMPTS,
            backoff: INTERNAL_BACKOFF,
            max_backoff: INTERNAL_MAX_BACKOFF,
            concurrency: 1,
            batch: 16,
            timeout: self.timeout,
        };
        let cron = CronSpec {
            id,
            app: self.app.to_string(),
            topic,
            schedule,
            missed: cron.missed,
        };
        Ok((sub, cron))
    }

    /// The service's async invocations.
    fn invocations(&self) -> SubscriptionSpec {
        SubscriptionSpec {
            id: invocation::subscription(self.app, self.service),
            app: self.app.to_string(),
            topic: invocation::topic(self.service),
            consumers: vec![self.consumer("/")],
            max_attempts: invocation::ATTEMPTS,
            backoff: INTERNAL_BACKOFF,
            max_backoff: INTERNAL_MAX_BACKOFF,
            concurrency: 64,
            batch: 64,
            timeout: self.timeout,
        }
    }
}

struct AppPublisher {
    events: Arc<Events>,
    app: String,
}

impl Publisher for AppPublisher {
    fn publish(&self, service: &str, messages: Vec<OutgoingMessage>) -> Result<(), String> {
        let messages = messages
            .into_iter()
            .map(|m| {
                let source = format!("/apps/{}/services/{service}", self.app);
                NewMessage::new(m.topic, source, tessera_events::MESSAGE_TYPE, m.data)
                    .with_id(Some(m.id))
                    .with_content_type(m.content_type)
            })
            .collect();
        self.events
            .publish(&self.app, messages)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

struct NodeInvoker {
    /// This node's id, told to guests in `x-tessera-node`.
    node: String,
    targets: Arc<ArcSwap<TargetMap>>,
    callbacks: Arc<ArcSwap<CallbackPolicy>>,
}

impl Invoker for NodeInvoker {
    fn invoke(
        &self,
        subscription: &SubscriptionSpec,
        consumer: &Consumer,
        delivery: Delivery,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send>> {
        let target = self
            .targets
            .load()
            .get(&(subscription.app.clone(), consumer.service.clone()))
            .cloned();
        let consumer = consumer.clone();
        let app = subscription.app.clone();
        let final_attempt = delivery.attempt >= subscription.max_attempts;
        let callbacks = CallbackPolicy::clone(&self.callbacks.load());
        let node = self.node.clone();
        Box::pin(async move {
            let invocation = invocation::Request::from_message(&delivery.message);
            let callback = invocation.as_ref().and_then(|i| i.callback.clone());
            let message_id = delivery.message.id.clone();
            let outcome = deliver(target, &app, &node, &consumer, delivery, invocation).await;
            let succeeded = outcome.error.is_none() && (200..300).contains(&outcome.status);
            if let Some(url) = callback
                && (succeeded || final_attempt)
            {
                tokio::spawn(crate::callback::call_back(
                    callbacks,
                    url,
                    message_id,
                    outcome.clone(),
                    succeeded,
                ));
            }
            outcome
        })
    }
}

async fn deliver(
    target: Option<Arc<Target>>,
    app: &str,
    node: &str,
    consumer: &Consumer,
    delivery: Delivery,
    invocation: Option<invocation::Request>,
) -> Outcome {
    let failed = |status: u16, error: String| Outcome {
        status,
        body: Vec::new(),
        error: Some(error),
    };
    let Some(target) = target else {
        return failed(
            503,
            format!(
                "service `{}` of app `{app}` is not serving",
                consumer.service
            ),
        );
    };
    let Some(backend) = target.pick() else {
        return failed(
            503,
            format!(
                "service `{}` has no revision taking traffic",
                consumer.service
            ),
        );
    };
    let request = match cloud_event_request(consumer, node, &delivery, invocation) {
        Ok(request) => request,
        Err(e) => return failed(400, format!("cannot build the request: {e}")),
    };
    // Deliveries count against the service's limits like any request; a refusal is a
    // failed attempt, retried with backoff.
    let _permit = match target.admit(backend).await {
        Ok(permit) => permit,
        Err(rejection) => {
            let status = match rejection {
                Rejection::Overloaded { .. } => 429,
                Rejection::QueueTimeout { .. } => 503,
            };
            return failed(status, rejection.to_string());
        }
    };
    let service = match backend.service.get().await {
        Ok(service) => service,
        Err(error) => return failed(500, error.to_string()),
    };
    let request_id = uuid::Uuid::now_v7().to_string();
    match service
        .handle_to_completion(request, &request_id, invocation::MAX_RESULT)
        .await
    {
        Ok(done) => Outcome {
            status: done.status,
            body: done.body,
            error: None,
        },
        Err(error) => {
            let status = match &error {
                InvokeError::Timeout { .. } => 504,
                InvokeError::Capacity => 503,
                InvokeError::GuestError { .. } => 502,
                _ => 500,
            };
            failed(status, error.to_string())
        }
    }
}

/// The CloudEvents HTTP binding, binary mode: attributes as `ce-*` headers, the data as
/// the body. An async invocation is its original request (method, path, headers, body)
/// with the same `ce-*` headers.
fn cloud_event_request(
    consumer: &Consumer,
    node: &str,
    delivery: &Delivery,
    invocation: Option<invocation::Request>,
) -> Result<hyper::Request<Full<Bytes>>, http::Error> {
    let message = &delivery.message;
    let time = humantime::format_rfc3339_millis(message.time).to_string();
    let mut builder = hyper::Request::builder()
        .header(http::header::HOST, format!("{}.internal", consumer.service))
        .header("ce-specversion", "1.0")
        .header("ce-id", &message.id)
        .header("ce-source", &message.source)
        .header("ce-type", &message.kind)
        .header("ce-time", time)
        .header(headers::ATTEMPT, delivery.attempt.to_string())
        .header(headers::NODE, node);
    let body = match invocation {
        Some(request) => {
            builder = builder.method(request.method.as_str()).uri(request.path);
            for (name, value) in request.headers {
                builder = builder.header(name, value);
            }
            request.body
        }
        None => {
            builder = builder
                .method("POST")
                .uri(&consumer.path)
                .header("ce-subject", &message.topic);
            if let Some(content_type) = &message.content_type {
                builder = builder.header(http::header::CONTENT_TYPE, content_type);
            }
            message.data.clone()
        }
    };
    builder.body(Full::new(Bytes::from(body)))
}
