//! Cron triggers: schedules ([`Schedule`]) and the scheduler that publishes their ticks.

mod schedule;
pub(crate) mod scheduler;

pub use schedule::Schedule;
pub use scheduler::{CronScheduler, CronSpec, MissedTicks, TICK_KIND, TICK_SOURCE, tick_message};
