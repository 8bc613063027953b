//! What `bench-scale` reads about a running node from outside: samples of its Prometheus
//! metrics (OpenMetrics text from the admin listener's `/metrics`) and the memory and open
//! files of its process from `/proc`.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::super::probe;

/// One sample line of the metrics text: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// Whether every `(label, value)` pair of `wanted` is among the sample's labels.
    pub fn has(&self, wanted: &[(&str, &str)]) -> bool {
        wanted.iter().all(|(k, v)| {
            self.labels
                .iter()
                .any(|(name, value)| name == k && value == v)
        })
    }
}

/// The node's metrics at one moment.
pub struct Metrics(Vec<Sample>);

impl Metrics {
    /// Scrapes `GET /metrics` on the admin listener.
    pub fn scrape(admin_port: u16) -> Result<Metrics> {
        let reply = probe::get(admin_port, "/metrics", Duration::from_secs(30))
            .context("scraping /metrics")?;
        if reply.status != 200 {
            bail!("GET /metrics answered {}", reply.status);
        }
        Metrics::parse(&String::from_utf8_lossy(&reply.body))
    }

    pub fn parse(text: &str) -> Result<Metrics> {
        text.lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_sample(line).with_context(|| format!("bad metrics line {line:?}")))
            .collect::<Result<_>>()
            .map(Metrics)
    }

    /// The samples of `name` that carry every label of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0
            .iter()
            .filter(move |s| s.name == name && s.has(labels))
    }

    /// The sum of the samples of `name` that carry every label of `labels` (0 if none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// How many samples of `name` with `labels` have the value `value`.
    pub fn count_equal(&self, name: &str, labels: &[(&str, &str)], value: f64) -> usize {
        self.matching(name, labels)
            .filter(|s| s.value == value)
            .count()
    }
}

fn parse_sample(line: &str) -> Result<Sample> {
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let (labels, rest) = parse_labels(&line[i + 1..])?;
            (&line[..i], labels, rest)
        }
        Some(i) => (&line[..i], Vec::new(), &line[i..]),
        None => bail!("no value"),
    };
    // A timestamp or exemplar may follow the value; only the value matters here.
    let value = rest.split_whitespace().next().context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` (after the `{`); returns the labels and what follows the `}`.
fn parse_labels(mut text: &str) -> Result<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(rest) = text.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (name, rest) = text
            .split_once("=\"")
            .context("label without a quoted value")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value"),
                },
                Some((_, c)) => value.push(c),
                None => bail!("unterminated label value"),
            }
        };
        labels.push((name.trim().to_owned(), value));
        text = &rest[end + 1..];
    }
}

/// A process's resident memory now and at its peak, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`, bytes.
    pub rss: u64,
    /// `VmHWM`, the peak of `VmRSS`, bytes.
    pub hwm: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        parse_status(&status).with_context(|| format!("{path} has no VmRSS/VmHWM"))
    }
}

fn parse_status(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?.trim();
            let kib: u64 = value.strip_suffix("kB")?.trim().parse().ok()?;
            Some(kib * 1024)
        })
    };
    Some(Memory {
        rss: field("VmRSS")?,
        hwm: field("VmHWM")?,
    })
}

/// How many files (including sockets) a process has open.
pub fn open_files(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("listing {dir}"))?
        .count())
}

/// The soft limit on open files of a process (`Max open files` in `/proc/PID/limits`);
/// `None` when it is unlimited.
pub fn open_files_limit(pid: u32) -> Result<Option<u64>> {
    let path = format!("/proc/{pid}/limits");
    let limits = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_open_files_limit(&limits).with_context(|| format!("{path} has no `Max open files`"))
}

fn parse_open_files_limit(limits: &str) -> Option<Option<u64>> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(None),
        soft => soft.parse().ok().map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP tessera_service_loaded Whether a revision's code is loaded (1) or not (0).
# TYPE tessera_service_loaded gauge
tessera_service_loaded{app="scale",service="cold",revision="r1"} 0
tessera_service_loaded{app="scale",service="hello",revision="r1"} 1
# TYPE tessera_cold_start_seconds histogram
# UNIT tessera_cold_start_seconds seconds
tessera_cold_start_seconds_sum{app="scale",service="cold",revision="r1"} 0.0125
tessera_cold_start_seconds_count{app="scale",service="cold",revision="r1"} 5
tessera_cold_start_seconds_bucket{le="+Inf",app="scale",service="cold",revision="r1"} 5
tessera_code_memory_bytes 262144
odd{path="a\"b\\c,}"} 1.5e3 1700000000
# EOF
"#;

    #[test]
    fn reads_openmetrics_samples() {
        let m = Metrics::parse(TEXT).unwrap();
        let cold = [("app", "scale"), ("service", "cold")];
        assert_eq!(m.sum("tessera_cold_start_seconds_sum", &cold), 0.0125);
        assert_eq!(m.sum("tessera_cold_start_seconds_count", &cold), 5.0);
        assert_eq!(m.sum("tessera_service_loaded", &cold), 0.0);
        assert_eq!(m.count_equal("tessera_service_loaded", &[], 1.0), 1);
        assert_eq!(m.count_equal("tessera_service_loaded", &[], 0.0), 1);
        assert_eq!(m.sum("tessera_code_memory_bytes", &[]), 262_144.0);
        let bucket = m
            .matching("tessera_cold_start_seconds_bucket", &cold)
            .next()
            .unwrap();
        assert!(bucket.has(&[("le", "+Inf")]));
        let odd = m.matching("odd", &[]).next().unwrap();
        assert_eq!(odd.labels, [("path".to_owned(), "a\"b\\c,}".to_owned())]);
        assert_eq!(odd.value, 1500.0);
        assert_eq!(m.sum("missing", &[]), 0.0);
    }

    #[test]
    fn rejects_broken_metrics_lines() {
        assert!(Metrics::parse("name_without_value\n").is_err());
        assert!(Metrics::parse("x{a=\"1\" 2\n").is_err());
        assert!(Metrics::parse("x{a=1} 2\n").is_err());
        assert!(Metrics::parse("x 1 2\ny abc\n").is_err());
    }

    #[test]
    fn reads_memory_from_proc_status() {
        let status = "Name:\ttessera\nVmPeak:\t  900000 kB\nVmHWM:\t   81234 kB\nVmRSS:\t   40960 kB\nThreads:\t9\n";
        assert_eq!(
            parse_status(status),
            Some(Memory {
                rss: 40960 * 1024,
                hwm: 81234 * 1024
            })
        );
        assert_eq!(parse_status("Name:\ttessera\nVmRSS:\t1 kB\n"), None);
        // This process has both.
        let own = Memory::of(std::process::id()).unwrap();
        assert!(own.rss > 0 && own.hwm >= own.rss);
        assert!(open_files(std::process::id()).unwrap() >= 3);
    }

    #[test]
    fn reads_the_soft_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
            Max processes             94000                94000                processes \n\
            Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(Some(1024)));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), Some(None));
        assert_eq!(
            parse_open_files_limit("Max processes 1 1 processes\n"),
            None
        );
        assert!(open_files_limit(std::process::id()).is_ok());
    }
}
