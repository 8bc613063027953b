//! The revision model: how one revision of a service runs, as typed values with their
//! defaults, bounds and validation in one place ([`bounds`]), and its one JSON form
//! ([`wire`]). The manifest produces it, the REST API and the control state serialise it
//! at their edges, the runtime and the node consume it. A value out of range is refused
//! once, at the edge it entered by, with the same message from a manifest or the API.

pub mod bounds;
mod names;
mod revision;
pub mod wire;

pub use bounds::*;
pub use names::{
    Origin, RoutePrefix, Scheme, check_config_key, check_host, check_name, split_host_port,
};
pub use revision::{
    CronTrigger, Invalid, Limits, MissedTicks, Reuse, RevisionConfig, Scaling, Subscription,
    check_bucket, check_env_name, check_schedule, check_topic, check_trigger_path,
};
pub use tessera_events::MAX_TOPIC_BYTES;
