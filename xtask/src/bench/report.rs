//! Turning bench results into a markdown section and merging it into BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::probe::Startup;
use super::wrk::WrkResult;

/// The section this harness owns in BENCHMARKS.md; everything else in the file is kept.
pub const SECTION_HEADING: &str = "## Hello world: tessera vs wasmtime serve vs native hyper";

/// One server's line in the table; `result` is `None` when the server was skipped.
pub struct Row {
    pub server: String,
    pub description: String,
    pub result: Option<WrkResult>,
}

pub struct Report {
    pub date: String,
    pub machine: String,
    pub versions: Vec<String>,
    pub command: String,
    pub wrk_command: String,
    pub warmup: Duration,
    pub body: String,
    /// The tessera rows first: the ratios compare each of them with every later row.
    pub rows: Vec<Row>,
    pub startups: Vec<(String, Startup)>,
    pub notes: Vec<String>,
}

impl Report {
    /// The results table alone (also printed to the terminal).
    pub fn table(&self) -> String {
        let mut cells = vec![[
            "server".to_owned(),
            "req/s".to_owned(),
            "p50".to_owned(),
            "p99".to_owned(),
            "errors".to_owned(),
        ]];
        for row in &self.rows {
            cells.push(match &row.result {
                Some(r) => [
                    row.server.clone(),
                    format!("{:.0}", r.requests_per_sec),
                    format_duration(r.p50),
                    format_duration(r.p99),
                    r.errors_summary(),
                ],
                None => [
                    row.server.clone(),
                    "skipped".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                ],
            });
        }
        // Numbers right-aligned, names and error lists left-aligned.
        render_table(&cells, &[0, 4])
    }

    /// "tessera / X: ..." lines comparing tessera with every other measured server.
    /// Each tessera row against every row after it.
    pub fn ratios(&self) -> Vec<String> {
        let pairs = self.rows.iter().enumerate().flat_map(|(i, first)| {
            let ours = first.server.starts_with("tessera");
            self.rows[i + 1..]
                .iter()
                .filter(move |_| ours)
                .map(move |other| (first, other))
        });
        pairs
            .map(|(first, other)| match (&first.result, &other.result) {
                (Some(a), Some(b)) => format!(
                    "{} / {}: {:.2}× the requests/s, {:.2}× the p50 latency, {:.2}× the p99 latency",
                    first.server,
                    other.server,
                    a.requests_per_sec / b.requests_per_sec,
                    a.p50.as_secs_f64() / b.p50.as_secs_f64(),
                    a.p99.as_secs_f64() / b.p99.as_secs_f64(),
                ),
                _ => {
                    let missing = if first.result.is_none() { first } else { other };
                    format!(
                        "{} / {}: n/a ({} was not measured)",
                        first.server, other.server, missing.server
                    )
                }
            })
            .collect()
    }

    pub fn startup_lines(&self) -> Vec<String> {
        self.startups
            .iter()
            .map(|(label, s)| {
                format!(
                    "{label}: listening {} after spawn; first `GET /` took {} (ready {} after spawn); median of the next 50: {}",
                    format_duration(s.listening),
                    format_duration(s.first_request),
                    format_duration(s.ready),
                    format_duration(s.median_after),
                )
            })
            .collect()
    }

    /// The whole BENCHMARKS.md section, starting with [`SECTION_HEADING`].
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "{SECTION_HEADING}\n");
        let _ = writeln!(
            md,
            "Measured {} on {}. wrk runs on the same machine, so the load generator and \
             each server share those cores.\n",
            self.date, self.machine
        );
        let _ = writeln!(
            md,
            "Command: `{}`, which for each server in turn runs",
            self.command
        );
        let _ = writeln!(
            md,
            "`{}` after an unreported {} s warm-up.\n",
            self.wrk_command,
            self.warmup.as_secs()
        );
        let _ = writeln!(
            md,
            "Every server answers `GET /` with 200 `{}` (text/plain):\n",
            self.body.escape_default()
        );
        for row in &self.rows {
            let _ = writeln!(md, "- **{}**: {}", row.server, row.description);
        }
        let _ = writeln!(md, "\n{}", self.table());
        for line in self.ratios() {
            let _ = writeln!(md, "- {line}");
        }
        let _ = writeln!(
            md,
            "\nStart-up, from a client's point of view (each request on a new connection: \
             connect, request, full response):\n"
        );
        for line in self.startup_lines() {
            let _ = writeln!(md, "- {line}");
        }
        if !self.versions.is_empty() {
            let _ = writeln!(md, "\nVersions: {}.", self.versions.join("; "));
        }
        if !self.notes.is_empty() {
            md.push('\n');
            for note in &self.notes {
                let _ = writeln!(md, "Note: {note}");
            }
        }
        md
    }
}

/// A markdown table whose first row is the header, padded so it also reads well as plain
/// text. Columns listed in `left_aligned` are left-aligned, all others (numbers) right.
pub fn render_table<R: AsRef<[String]>>(cells: &[R], left_aligned: &[usize]) -> String {
    let columns = cells.first().map_or(0, |row| row.as_ref().len());
    let widths: Vec<usize> = (0..columns)
        .map(|col| {
            cells
                .iter()
                .map(|row| row.as_ref()[col].chars().count())
                .max()
                .unwrap_or(0)
                // The separator of a right-aligned column needs room for `-:`.
                .max(2)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in cells.iter().enumerate() {
        out.push('|');
        for (col, cell) in row.as_ref().iter().enumerate() {
            let w = widths[col];
            if left_aligned.contains(&col) {
                let _ = write!(out, " {cell:<w$} |");
            } else {
                let _ = write!(out, " {cell:>w$} |");
            }
        }
        out.push('\n');
        if i == 0 {
            out.push('|');
            for (col, width) in widths.iter().enumerate() {
                let dashes = "-".repeat(*width);
                if left_aligned.contains(&col) {
                    let _ = write!(out, " {dashes} |");
                } else {
                    let _ = write!(out, " {}: |", &dashes[1..]);
                }
            }
            out.push('\n');
        }
    }
    out
}

/// Writes `section` into `path`, replacing the old copy of the section under `heading` if
/// there is one.
pub fn update_benchmarks_md(path: &Path, heading: &str, section: &str) -> Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let updated = match existing {
        Some(text) => replace_section(&text, heading, section),
        None => format!(
            "# Benchmarks\n\nProduced by `cargo xtask bench`, `bench-data`, `bench-events` and \
             `bench-scale`; numbers are only comparable within one run on one machine.\n\n{section}"
        ),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

/// Replaces the lines from `heading` up to the next `## ` heading (or the end) with
/// `section`, or appends `section` if `heading` isn't there.
fn replace_section(text: &str, heading: &str, section: &str) -> String {
    let section = section.trim_end();
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|line| line.trim_end() == heading) else {
        let mut out = text.trim_end().to_owned();
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(section);
        out.push('\n');
        return out;
    };
    let end = lines[start + 1..]
        .iter()
        .position(|line| line.starts_with("## "))
        .map_or(lines.len(), |offset| start + 1 + offset);
    let mut out = String::new();
    for line in &lines[..start] {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(section);
    out.push('\n');
    if end < lines.len() {
        out.push('\n');
        for line in &lines[end..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The nearest-rank `percent`th percentile of sorted values (0 for none).
pub fn nearest_rank(sorted: &[u64], percent: usize) -> u64 {
    match sorted.len() {
        0 => 0,
        n => sorted[(percent * n).div_ceil(100).clamp(1, n) - 1],
    }
}

/// Human-scale durations: µs below a millisecond (with a decimal below 100 µs, where key-value
/// reads live), ms below a second, else s.
pub fn format_duration(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 100.0 {
        format!("{micros:.1} µs")
    } else if micros < 1_000.0 {
        format!("{micros:.0} µs")
    } else if micros < 1_000_000.0 {
        format!("{:.2} ms", micros / 1e3)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

/// The current time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

fn format_utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm), so we
/// need neither a date crate nor `date`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// "N cores (CPU model), Linux release, load average", from the same sources as `nproc`.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| format!(", Linux {}", release.trim()))
        .unwrap_or_default();
    // Other work on the machine skews results; the load average makes that visible.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .map(|one_minute| format!(", load average {one_minute} before the run"))
        .unwrap_or_default();
    format!("{cores} cores ({model}){kernel}{load}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_our_section() {
        let text = "# Benchmarks\n\nintro\n\n## Hello world: tessera vs wasmtime serve vs native hyper\n\nold\n| a |\n\n## Other\n\nkeep me\n";
        let new = "## Hello world: tessera vs wasmtime serve vs native hyper\n\nnew\n";
        assert_eq!(
            replace_section(text, SECTION_HEADING, new),
            "# Benchmarks\n\nintro\n\n## Hello world: tessera vs wasmtime serve vs native hyper\n\nnew\n\n## Other\n\nkeep me\n"
        );
    }

    #[test]
    fn replaces_section_at_end_of_file() {
        let text = "# B\n\n## Hello world: tessera vs wasmtime serve vs native hyper\nold\nold\n";
        let new = "## Hello world: tessera vs wasmtime serve vs native hyper\nnew";
        assert_eq!(
            replace_section(text, SECTION_HEADING, new),
            "# B\n\n## Hello world: tessera vs wasmtime serve vs native hyper\nnew\n"
        );
    }

    #[test]
    fn appends_missing_section() {
        let new = "## Hello world: tessera vs wasmtime serve vs native hyper\nnew\n";
        assert_eq!(
            replace_section("# B\n\n## Other\nx\n", SECTION_HEADING, new),
            "# B\n\n## Other\nx\n\n## Hello world: tessera vs wasmtime serve vs native hyper\nnew\n"
        );
    }

    #[test]
    fn renders_aligned_markdown_tables() {
        let cells = [
            vec!["op".to_owned(), "ops/s".to_owned()],
            vec!["kv-get".to_owned(), "7".to_owned()],
        ];
        assert_eq!(
            render_table(&cells, &[0]),
            "| op     | ops/s |\n| ------ | ----: |\n| kv-get |     7 |\n"
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&values, 50), 50);
        assert_eq!(nearest_rank(&values, 99), 99);
        assert_eq!(nearest_rank(&[7], 99), 7);
        assert_eq!(nearest_rank(&[], 50), 0);
    }

    #[test]
    fn formats_dates_and_durations() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400 + 3_661), "2000-02-29 01:01 UTC");
        assert_eq!(format_utc(1_764_401_400), "2025-11-29 07:30 UTC");
        assert_eq!(format_duration(Duration::from_micros(350)), "350 µs");
        assert_eq!(format_duration(Duration::from_nanos(4_560)), "4.6 µs");
        assert_eq!(format_duration(Duration::from_micros(1210)), "1.21 ms");
        assert_eq!(format_duration(Duration::from_millis(2500)), "2.50 s");
    }
}
