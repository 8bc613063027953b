//! Cron schedules: standard five-field expressions, the usual macros, and `@every`.
//!
//! Written here rather than taken from a cron crate: the ones of the field either want a
//! seconds field, or bring chrono along for what is a page of calendar arithmetic, and
//! none reports which field and value of a schedule is wrong or offers epoch-aligned
//! `@every` ticks, which every node of a cluster must compute alike.
//!
//! Times are UTC. A `TZ=`/`CRON_TZ=` prefix is refused with an error rather than
//! ignored: honouring it needs the time zone database, which is not worth a dependency
//! yet.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::{from_unix_ms, unix_ms};

/// When a cron trigger fires. See [`Schedule::parse`] for the syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Cron(Fields),
    /// Ticks at every multiple of the period since the Unix epoch.
    Every {
        period_ms: i64,
    },
}

/// Each field as a bit set of the values it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    /// Sunday is bit 0 (a 7 in the text is folded into it).
    weekdays: u64,
    /// Whether the day-of-month text starts with `*`, which (as in Vixie cron) makes the
    /// two day fields combine with AND instead of OR.
    days_star: bool,
    weekdays_star: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names of values, the first standing for `names_start`.
    names: &'static [&'static str],
    names_start: u32,
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    names_start: 0,
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    names_start: 0,
};
const DAY: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    names_start: 0,
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
    names_start: 1,
};
const WEEKDAY: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    names_start: 0,
};

/// The longest month of each month, leap years included.
const MAX_MONTH_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl Schedule {
    /// Parses a schedule:
    ///
    /// - five fields, `minute hour day-of-month month day-of-week`, each `*`, a value, a
    ///   range `1-5`, a step `*/5`, `10-30/5` or `10/5` (from 10 to the end), or a list of
    ///   those `1,2,10-12`; months may be named `jan`..`dec` and weekdays `sun`..`sat`
    ///   (any case); Sunday is 0 or 7. When both day fields are restricted (neither
    ///   starts with `*`), a day matches if either does, as in every cron;
    /// - `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`),
    ///   `@hourly`;
    /// - `@every <duration>` (`@every 30s`, `@every 1h 30m`), at least 1s, ticking at the
    ///   multiples of the period since the Unix epoch so every node computes the same
    ///   ticks.
    ///
    /// Times are UTC. Errors name the field and the value at fault.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty schedule".into());
        }
        let first = text.split_whitespace().next().unwrap_or(text);
        if first.starts_with("TZ=") || first.starts_with("CRON_TZ=") {
            return Err(format!(
                "time zones are not supported ({first}): schedules run in UTC"
            ));
        }
        let kind = match text.strip_prefix('@') {
            Some(rest) => parse_macro(rest)?,
            None => Kind::Cron(parse_fields(text)?),
        };
        Ok(Schedule {
            text: text.to_owned(),
            kind,
        })
    }

    /// The schedule's text, as parsed (trimmed).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The period of an `@every` schedule.
    pub fn period(&self) -> Option<Duration> {
        match self.kind {
            Kind::Every { period_ms } => Some(Duration::from_millis(period_ms as u64)),
            Kind::Cron(_) => None,
        }
    }

    /// The first tick strictly after `time`, or `None` if there is none (only for times
    /// near the end of what `SystemTime` can hold).
    pub fn next_after(&self, time: SystemTime) -> Option<SystemTime> {
        let ms = unix_ms(time);
        match &self.kind {
            Kind::Every { period_ms } => {
                let tick = ms
                    .div_euclid(*period_ms)
                    .checked_add(1)?
                    .checked_mul(*period_ms)?;
                Some(from_unix_ms(tick))
            }
            Kind::Cron(fields) => {
                let secs = next_cron(fields, ms.div_euclid(1000))?;
                Some(from_unix_ms(secs.checked_mul(1000)?))
            }
        }
    }

    /// The latest tick in `(after, now]`, if any: the one to fire for a missed period.
    pub(crate) fn last_due(&self, after: SystemTime, now: SystemTime) -> Option<SystemTime> {
        let first = self.next_after(after).filter(|first| *first <= now)?;
        if let Kind::Every { period_ms } = self.kind {
            return Some(from_unix_ms(unix_ms(now).div_euclid(period_ms) * period_ms).max(first));
        }
        // Search back from `now` in growing windows, so a schedule that ticks often needs
        // few steps and one that ticks rarely needs few windows.
        const MINUTE: u64 = 60;
        for window in [
            2 * MINUTE,
            2 * 60 * MINUTE,
            2 * 1440 * MINUTE,
            40 * 1440 * MINUTE,
            400 * 1440 * MINUTE,
        ] {
            let from = now
                .checked_sub(Duration::from_secs(window))
                .map_or(after, |from| from.max(after));
            let mut last = None;
            let mut cursor = from;
            while let Some(tick) = self.next_after(cursor).filter(|tick| *tick <= now) {
                last = Some(tick);
                cursor = tick;
            }
            if last.is_some() {
                return last;
            }
        }
        // A schedule that ticks less than once in 400 days (29 February): walk forward.
        let mut last = first;
        for _ in 0..1000 {
            match self.next_after(last).filter(|tick| *tick <= now) {
                Some(tick) => last = tick,
                None => break,
            }
        }
        Some(last)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Schedule::parse(text)
    }
}

fn parse_macro(rest: &str) -> Result<Kind, String> {
    let (name, argument) = match rest.split_once(char::is_whitespace) {
        Some((name, argument)) => (name, argument.trim()),
        None => (rest, ""),
    };
    let name = name.to_ascii_lowercase();
    let fields = match name.as_str() {
        "every" => return parse_every(argument),
        "yearly" | "annually" => "0 0 1 1 *",
        "monthly" => "0 0 1 * *",
        "weekly" => "0 0 * * 0",
        "daily" | "midnight" => "0 0 * * *",
        "hourly" => "0 * * * *",
        "reboot" => return Err("@reboot is not supported: a schedule must name times".into()),
        _ => {
            return Err(format!(
                "unknown macro \"@{name}\" (expected @yearly, @annually, @monthly, @weekly, @daily, @midnight, \
                 @hourly or @every <duration>)"
            ));
        }
    };
    if !argument.is_empty() {
        return Err(format!("@{name} takes no argument, found {argument:?}"));
    }
    Ok(Kind::Cron(
        parse_fields(fields).expect("macros expand to valid fields"),
    ))
}

fn parse_every(argument: &str) -> Result<Kind, String> {
    if argument.is_empty() {
        return Err("@every needs a duration, for example \"@every 30s\"".into());
    }
    let period =
        humantime::parse_duration(argument).map_err(|e| format!("@every {argument:?}: {e}"))?;
    if period < Duration::from_secs(1) {
        return Err(format!(
            "@every {argument:?}: the period must be at least 1s"
        ));
    }
    if period.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "@every {argument:?}: the period must be a whole number of milliseconds"
        ));
    }
    let period_ms = i64::try_from(period.as_millis())
        .map_err(|_| format!("@every {argument:?}: the period is too long"))?;
    Ok(Kind::Every { period_ms })
}

fn parse_fields(text: &str) -> Result<Fields, String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    if parts.len() != 5 {
        let hint = match parts.len() {
            6 | 7 => "; a seconds or year field is not supported",
            _ => "",
        };
        return Err(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), found {}{hint}",
            parts.len()
        ));
    }
    let mut weekdays = parse_field(&WEEKDAY, parts[4])?;
    if weekdays & (1 << 7) != 0 {
        weekdays = (weekdays & !(1 << 7)) | 1;
    }
    let fields = Fields {
        minutes: parse_field(&MINUTE, parts[0])?,
        hours: parse_field(&HOUR, parts[1])?,
        days: parse_field(&DAY, parts[2])?,
        months: parse_field(&MONTH, parts[3])?,
        weekdays,
        days_star: parts[2].starts_with('*'),
        weekdays_star: parts[4].starts_with('*'),
    };
    // With the AND rule, a day-of-month that no chosen month has (31 in February) means
    // the schedule never fires; say so now rather than never.
    if fields.and_rule() {
        let possible = (1..=12u32).any(|month| {
            fields.months & (1 << month) != 0
                && (1..=MAX_MONTH_DAYS[month as usize - 1]).any(|day| fields.days & (1 << day) != 0)
        });
        if !possible {
            return Err(format!(
                "day-of-month field {:?} and month field {:?} never meet: the schedule would never fire",
                parts[2], parts[3]
            ));
        }
    }
    Ok(fields)
}

fn parse_field(field: &Field, text: &str) -> Result<u64, String> {
    let error = |message: String| format!("{} field {text:?}: {message}", field.name);
    let mut bits = 0u64;
    for part in text.split(',') {
        if part.is_empty() {
            return Err(error("empty list element".into()));
        }
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| error(format!("step {step:?} is not a number")))?;
                if step == 0 {
                    return Err(error("step must be at least 1".into()));
                }
                (range, Some(step))
            }
            None => (part, None),
        };
        let (low, high) = if range == "*" {
            (field.min, field.max)
        } else if let Some((low, high)) = range.split_once('-') {
            let low = value(field, low).map_err(&error)?;
            let mut high = value(field, high).map_err(&error)?;
            // `fri-sun`: Sunday as the end of a weekday range means 7.
            if field.name == WEEKDAY.name && high == 0 && low > 0 {
                high = 7;
            }
            if low > high {
                return Err(error(format!("range {range} runs backwards")));
            }
            (low, high)
        } else {
            let low = value(field, range).map_err(&error)?;
            // `10/5` means from 10 to the end in steps of 5.
            (low, if step.is_some() { field.max } else { low })
        };
        for v in (low..=high).step_by(step.unwrap_or(1) as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

fn value(field: &Field, text: &str) -> Result<u32, String> {
    if text.is_empty() {
        return Err("a range needs a value on both sides of '-'".into());
    }
    let number = if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u32>().unwrap_or(u32::MAX)
    } else {
        let lower = text.to_ascii_lowercase();
        match field.names.iter().position(|name| *name == lower) {
            Some(index) => field.names_start + index as u32,
            None if field.names.is_empty() => return Err(format!("{text:?} is not a number")),
            None => {
                return Err(format!(
                    "{text:?} is not a number or a name ({}..{})",
                    field.names[0],
                    field.names[field.names.len() - 1]
                ));
            }
        }
    };
    if number < field.min || number > field.max {
        return Err(format!(
            "{text} is out of range {}-{}",
            field.min, field.max
        ));
    }
    Ok(number)
}

impl Fields {
    /// Vixie cron: if either day field starts with `*`, a day must match both (one of
    /// them being everything, usually); otherwise it must match either.
    fn and_rule(&self) -> bool {
        self.days_star || self.weekdays_star
    }

    fn day_matches(&self, year: i64, month: u32, day: u32) -> bool {
        let by_day = self.days & (1 << day) != 0;
        let weekday = (days_from_civil(year, month, day) + 4).rem_euclid(7);
        let by_weekday = self.weekdays & (1 << weekday) != 0;
        if self.and_rule() {
            by_day && by_weekday
        } else {
            by_day || by_weekday
        }
    }
}

/// The lowest value in `bits` that is at least `from`.
fn next_set(bits: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = bits & (u64::MAX << from);
    (rest != 0).then(|| rest.trailing_zeros())
}

/// The first minute strictly after `after` (Unix seconds) that the fields allow, in Unix
/// seconds. Searches at most 401 years ahead: a Gregorian cycle is 400.
fn next_cron(fields: &Fields, after: i64) -> Option<i64> {
    let start = after.div_euclid(60).checked_add(1)?.checked_mul(60)?;
    let (mut year, mut month, mut day) = civil_from_days(start.div_euclid(86_400));
    let seconds = start.rem_euclid(86_400);
    let mut hour = (seconds / 3600) as u32;
    let mut minute = (seconds % 3600 / 60) as u32;
    let last_year = year + 401;
    loop {
        if year > last_year {
            return None;
        }
        if fields.months & (1 << month) == 0 {
            match next_set(fields.months, month + 1) {
                Some(next) => month = next,
                None => {
                    year += 1;
                    month = next_set(fields.months, 1)?;
                }
            }
            (day, hour, minute) = (1, 0, 0);
            continue;
        }
        if day > days_in_month(year, month) {
            month += 1;
            if month > 12 {
                (year, month) = (year + 1, 1);
            }
            (day, hour, minute) = (1, 0, 0);
            continue;
        }
        if !fields.day_matches(year, month, day) {
            (day, hour, minute) = (day + 1, 0, 0);
            continue;
        }
        match next_set(fields.hours, hour) {
            None => {
                (day, hour, minute) = (day + 1, 0, 0);
                continue;
            }
            Some(next) if next != hour => (hour, minute) = (next, 0),
            Some(_) => {}
        }
        match next_set(fields.minutes, minute) {
            None => {
                (hour, minute) = (hour + 1, 0);
                if hour > 23 {
                    (day, hour) = (day + 1, 0);
                }
                continue;
            }
            Some(next) => minute = next,
        }
        return Some(
            days_from_civil(year, month, day) * 86_400
                + i64::from(hour) * 3600
                + i64::from(minute) * 60,
        );
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    if month == 2 && !is_leap(year) {
        28
    } else {
        MAX_MONTH_DAYS[month as usize - 1]
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day since 1970-01-01: (year, month 1-12, day 1-31).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UTC time from `YYYY-MM-DD HH:MM[:SS]`.
    fn at(text: &str) -> SystemTime {
        let text = if text.len() == 16 {
            format!("{text}:00")
        } else {
            text.to_owned()
        };
        humantime::parse_rfc3339(&format!("{}Z", text.replace(' ', "T"))).unwrap()
    }

    fn show(time: SystemTime) -> String {
        humantime::format_rfc3339_seconds(time).to_string()
    }

    /// The next `n` ticks of `schedule` after `from`, as RFC 3339 text.
    fn ticks(schedule: &str, from: &str, n: usize) -> Vec<String> {
        let schedule = Schedule::parse(schedule).unwrap_or_else(|e| panic!("{schedule}: {e}"));
        let mut time = at(from);
        (0..n)
            .map(|_| {
                time = schedule.next_after(time).expect("a next tick");
                show(time)
            })
            .collect()
    }

    fn error(schedule: &str) -> String {
        Schedule::parse(schedule).expect_err(schedule)
    }

    #[test]
    fn calendar_arithmetic_round_trips() {
        for days in -800_000..800_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(
            (days_from_civil(2024, 6, 2) + 4).rem_euclid(7),
            0,
            "2024-06-02 is a Sunday"
        );
    }

    #[test]
    fn every_minute_and_fixed_times() {
        assert_eq!(
            ticks("* * * * *", "2024-03-10 12:00:30", 2),
            ["2024-03-10T12:01:00Z", "2024-03-10T12:02:00Z"]
        );
        // Strictly after: a time on a tick gives the next one.
        assert_eq!(
            ticks("* * * * *", "2024-03-10 12:00", 1),
            ["2024-03-10T12:01:00Z"]
        );
        assert_eq!(
            ticks("30 9 * * *", "2024-03-10 09:30", 2),
            ["2024-03-11T09:30:00Z", "2024-03-12T09:30:00Z"]
        );
        assert_eq!(
            ticks("0 0 1 1 *", "2024-06-01 00:00", 1),
            ["2025-01-01T00:00:00Z"]
        );
        assert_eq!(
            ticks("59 23 31 12 *", "2024-12-31 23:59", 1),
            ["2025-12-31T23:59:00Z"]
        );
    }

    #[test]
    fn steps_ranges_and_lists() {
        assert_eq!(
            ticks("*/15 * * * *", "2024-01-01 10:50", 3),
            [
                "2024-01-01T11:00:00Z",
                "2024-01-01T11:15:00Z",
                "2024-01-01T11:30:00Z"
            ]
        );
        assert_eq!(
            ticks("10-30/10 8-9 * * *", "2024-01-01 08:25", 5),
            [
                "2024-01-01T08:30:00Z",
                "2024-01-01T09:10:00Z",
                "2024-01-01T09:20:00Z",
                "2024-01-01T09:30:00Z",
                "2024-01-02T08:10:00Z"
            ]
        );
        assert_eq!(
            ticks("0 1,13 * * *", "2024-01-01 02:00", 2),
            ["2024-01-01T13:00:00Z", "2024-01-02T01:00:00Z"]
        );
        // `N/step` runs from N to the end of the field.
        assert_eq!(
            ticks("50/5 0 * * *", "2024-01-01 00:00", 3),
            [
                "2024-01-01T00:50:00Z",
                "2024-01-01T00:55:00Z",
                "2024-01-02T00:50:00Z"
            ]
        );
        assert_eq!(
            ticks("0 0 */10 * *", "2024-01-25 00:00", 2),
            ["2024-01-31T00:00:00Z", "2024-02-01T00:00:00Z"]
        );
    }

    #[test]
    fn names_are_case_insensitive_and_sunday_is_zero_or_seven() {
        // 2024-06-03 is a Monday.
        assert_eq!(
            ticks("0 9 * * MON-fri", "2024-06-07 10:00", 2),
            ["2024-06-10T09:00:00Z", "2024-06-11T09:00:00Z"]
        );
        let sunday = ["2024-06-09T00:00:00Z"];
        assert_eq!(ticks("0 0 * * 0", "2024-06-03 00:00", 1), sunday);
        assert_eq!(ticks("0 0 * * 7", "2024-06-03 00:00", 1), sunday);
        assert_eq!(ticks("0 0 * * sun", "2024-06-03 00:00", 1), sunday);
        assert_eq!(
            ticks("0 0 * * fri-sun", "2024-06-03 00:00", 3),
            [
                "2024-06-07T00:00:00Z",
                "2024-06-08T00:00:00Z",
                "2024-06-09T00:00:00Z"
            ]
        );
        assert_eq!(
            ticks("0 0 * * 5-7", "2024-06-03 00:00", 3),
            [
                "2024-06-07T00:00:00Z",
                "2024-06-08T00:00:00Z",
                "2024-06-09T00:00:00Z"
            ]
        );
        assert_eq!(
            ticks("0 0 1 jan,Jul *", "2024-02-01 00:00", 2),
            ["2024-07-01T00:00:00Z", "2025-01-01T00:00:00Z"]
        );
    }

    #[test]
    fn month_ends_skip_short_months() {
        assert_eq!(
            ticks("0 0 31 * *", "2024-01-31 00:00", 3),
            [
                "2024-03-31T00:00:00Z",
                "2024-05-31T00:00:00Z",
                "2024-07-31T00:00:00Z"
            ]
        );
        assert_eq!(
            ticks("0 0 30 * *", "2024-01-30 00:00", 1),
            ["2024-03-30T00:00:00Z"]
        );
    }

    #[test]
    fn february_29_only_in_leap_years() {
        assert_eq!(
            ticks("0 0 29 2 *", "2024-03-01 00:00", 3),
            [
                "2028-02-29T00:00:00Z",
                "2032-02-29T00:00:00Z",
                "2036-02-29T00:00:00Z"
            ]
        );
        // 2100 is not a leap year (divisible by 100), 2400 is (divisible by 400).
        assert_eq!(
            ticks("0 0 29 2 *", "2097-01-01 00:00", 1),
            ["2104-02-29T00:00:00Z"]
        );
        assert_eq!(
            ticks("0 0 29 2 *", "2397-01-01 00:00", 1),
            ["2400-02-29T00:00:00Z"]
        );
    }

    #[test]
    fn both_day_fields_restricted_means_either() {
        // The 13th, or any Friday: 2024-09-06 and 2024-09-13 are Fridays.
        assert_eq!(
            ticks("0 0 13 * fri", "2024-09-01 00:00", 4),
            [
                "2024-09-06T00:00:00Z",
                "2024-09-13T00:00:00Z",
                "2024-09-20T00:00:00Z",
                "2024-09-27T00:00:00Z"
            ]
        );
        assert_eq!(
            ticks("0 0 1,15 * 3", "2024-05-02 00:00", 3),
            [
                "2024-05-08T00:00:00Z",
                "2024-05-15T00:00:00Z",
                "2024-05-22T00:00:00Z"
            ]
        );
    }

    #[test]
    fn a_day_field_starting_with_star_means_both() {
        // Odd days that are Mondays: `*/2` counts as unrestricted for the OR rule, as in
        // Vixie cron. 2024-06-03 (Mon, odd), 2024-06-17 (Mon, odd).
        assert_eq!(
            ticks("0 0 */2 * mon", "2024-06-01 00:00", 2),
            ["2024-06-03T00:00:00Z", "2024-06-17T00:00:00Z"]
        );
        // Weekday star: only the day of month counts.
        assert_eq!(
            ticks("0 0 15 * *", "2024-06-01 00:00", 1),
            ["2024-06-15T00:00:00Z"]
        );
    }

    #[test]
    fn macros() {
        assert_eq!(
            ticks("@hourly", "2024-06-01 10:59", 1),
            ["2024-06-01T11:00:00Z"]
        );
        assert_eq!(
            ticks("@daily", "2024-06-01 10:59", 1),
            ["2024-06-02T00:00:00Z"]
        );
        assert_eq!(
            ticks("@midnight", "2024-06-01 10:59", 1),
            ["2024-06-02T00:00:00Z"]
        );
        assert_eq!(
            ticks("@weekly", "2024-06-01 10:59", 1),
            ["2024-06-02T00:00:00Z"]
        );
        assert_eq!(
            ticks("@monthly", "2024-06-01 10:59", 1),
            ["2024-07-01T00:00:00Z"]
        );
        assert_eq!(
            ticks("@yearly", "2024-06-01 10:59", 1),
            ["2025-01-01T00:00:00Z"]
        );
        assert_eq!(
            ticks("@ANNUALLY", "2024-06-01 10:59", 1),
            ["2025-01-01T00:00:00Z"]
        );
    }

    #[test]
    fn every_is_aligned_to_the_epoch() {
        let schedule = Schedule::parse("@every 2s").unwrap();
        assert_eq!(schedule.period(), Some(Duration::from_secs(2)));
        let next = schedule
            .next_after(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_001_500))
            .unwrap();
        assert_eq!(
            next,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_002)
        );
        let next = schedule
            .next_after(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_002))
            .unwrap();
        assert_eq!(
            next,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_004)
        );
        assert_eq!(
            ticks("@every 1h 30m", "2024-01-01 00:10", 2),
            ["2024-01-01T01:30:00Z", "2024-01-01T03:00:00Z"]
        );
        let odd = Schedule::parse("@every 1500ms").unwrap();
        let next = odd
            .next_after(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
            .unwrap();
        assert_eq!(next, SystemTime::UNIX_EPOCH + Duration::from_millis(1500));
    }

    #[test]
    fn last_due_finds_the_latest_missed_tick() {
        let every = Schedule::parse("@every 10s").unwrap();
        assert_eq!(
            every
                .last_due(at("2024-01-01 00:00:00"), at("2024-01-01 00:01:05"))
                .map(show),
            Some("2024-01-01T00:01:00Z".into())
        );
        assert_eq!(
            every.last_due(at("2024-01-01 00:00:00"), at("2024-01-01 00:00:09")),
            None
        );
        let cron = Schedule::parse("0 3 * * *").unwrap();
        assert_eq!(
            cron.last_due(at("2024-01-01 03:00"), at("2024-01-05 12:00"))
                .map(show),
            Some("2024-01-05T03:00:00Z".into())
        );
        assert_eq!(
            cron.last_due(at("2024-01-01 03:00"), at("2024-01-02 02:59")),
            None
        );
        let yearly = Schedule::parse("@yearly").unwrap();
        assert_eq!(
            yearly
                .last_due(at("2019-01-01 00:00"), at("2024-06-01 00:00"))
                .map(show),
            Some("2024-01-01T00:00:00Z".into())
        );
        let leap_day = Schedule::parse("0 0 29 2 *").unwrap();
        assert_eq!(
            leap_day
                .last_due(at("2001-01-01 00:00"), at("2027-06-01 00:00"))
                .map(show),
            Some("2024-02-29T00:00:00Z".into())
        );
    }

    #[test]
    fn errors_name_the_field_and_the_value() {
        assert_eq!(error(""), "empty schedule");
        assert_eq!(
            error("61 * * * *"),
            "minute field \"61\": 61 is out of range 0-59"
        );
        assert_eq!(
            error("* 24 * * *"),
            "hour field \"24\": 24 is out of range 0-23"
        );
        assert_eq!(
            error("* * 0 * *"),
            "day-of-month field \"0\": 0 is out of range 1-31"
        );
        assert_eq!(
            error("* * * 13 *"),
            "month field \"13\": 13 is out of range 1-12"
        );
        assert_eq!(
            error("* * * * 8"),
            "day-of-week field \"8\": 8 is out of range 0-7"
        );
        assert_eq!(
            error("* * * foo *"),
            "month field \"foo\": \"foo\" is not a number or a name (jan..dec)"
        );
        assert_eq!(
            error("* * * * monday"),
            "day-of-week field \"monday\": \"monday\" is not a number or a name (sun..sat)"
        );
        assert_eq!(
            error("x * * * *"),
            "minute field \"x\": \"x\" is not a number"
        );
        assert_eq!(
            error("*/0 * * * *"),
            "minute field \"*/0\": step must be at least 1"
        );
        assert_eq!(
            error("*/a * * * *"),
            "minute field \"*/a\": step \"a\" is not a number"
        );
        assert_eq!(
            error("5-1 * * * *"),
            "minute field \"5-1\": range 5-1 runs backwards"
        );
        assert_eq!(
            error("1,,2 * * * *"),
            "minute field \"1,,2\": empty list element"
        );
        assert_eq!(
            error("1- * * * *"),
            "minute field \"1-\": a range needs a value on both sides of '-'"
        );
        assert_eq!(
            error("* * * *"),
            "expected 5 fields (minute hour day-of-month month day-of-week), found 4"
        );
        assert_eq!(
            error("0 * * * * *"),
            "expected 5 fields (minute hour day-of-month month day-of-week), found 6; a seconds or year field is not supported"
        );
        assert_eq!(
            error("0 0 31 2 *"),
            "day-of-month field \"31\" and month field \"2\" never meet: the schedule would never fire"
        );
        assert_eq!(
            error("0 0 30,31 feb *"),
            "day-of-month field \"30,31\" and month field \"feb\" never meet: the schedule would never fire"
        );
        assert_eq!(
            error("@every"),
            "@every needs a duration, for example \"@every 30s\""
        );
        assert_eq!(
            error("@every 500ms"),
            "@every \"500ms\": the period must be at least 1s"
        );
        assert!(
            error("@every soon").starts_with("@every \"soon\": "),
            "{}",
            error("@every soon")
        );
        assert!(error("@fortnightly").starts_with("unknown macro \"@fortnightly\""));
        assert_eq!(error("@daily 5"), "@daily takes no argument, found \"5\"");
        assert_eq!(
            error("@reboot"),
            "@reboot is not supported: a schedule must name times"
        );
        assert_eq!(
            error("TZ=Europe/Paris 0 9 * * *"),
            "time zones are not supported (TZ=Europe/Paris): schedules run in UTC"
        );
        assert_eq!(
            error("CRON_TZ=UTC 0 9 * * *"),
            "time zones are not supported (CRON_TZ=UTC): schedules run in UTC"
        );
    }

    #[test]
    fn restricted_days_with_the_or_rule_may_name_impossible_dates() {
        // Feb 31 never comes, but every Monday of February does.
        assert_eq!(
            ticks("0 0 31 2 mon", "2024-01-01 00:00", 1),
            ["2024-02-05T00:00:00Z"]
        );
    }

    #[test]
    fn display_gives_back_the_text() {
        let schedule: Schedule = "  */5 * * * *  ".parse().unwrap();
        assert_eq!(schedule.to_string(), "*/5 * * * *");
        assert_eq!(schedule.as_str(), "*/5 * * * *");
    }
}
