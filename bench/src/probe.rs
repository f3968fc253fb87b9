//! What the benchmark reads from the services themselves: their Prometheus
//! counters (`OBT_METRICS_LISTEN`) and their CPU time and memory
//! (`/proc/PID/stat`, `/proc/PID/status`).

use std::collections::BTreeMap;
use std::time::Duration;

use obt_check::http::Http;
use prometheus_parse::{Scrape, Value};

use crate::BenchError;

/// One scrape of a service's `/metrics`.
#[derive(Debug)]
pub struct Metrics(Scrape);

impl Metrics {
    /// Parses the Prometheus text format.
    pub fn parse(text: &str) -> Result<Self, String> {
        Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// The sum of the samples `name` (over all their labels); 0 when none.
    pub fn total(&self, name: &str) -> f64 {
        self.by_label(name, None).values().sum()
    }

    /// The samples `name` summed by the value of `label` (all under "" when
    /// `label` is `None`).
    pub fn by_label(&self, name: &str, label: Option<&str>) -> BTreeMap<String, f64> {
        let mut sums = BTreeMap::new();
        for sample in self.0.samples.iter().filter(|s| s.metric == name) {
            let value = match sample.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                _ => continue,
            };
            let key = label
                .and_then(|l| sample.labels.get(l))
                .unwrap_or_default()
                .to_owned();
            *sums.entry(key).or_insert(0.0) += value;
        }
        sums
    }

    /// The requests a service made, by `aws OPERATION` and `mysql
    /// OPERATION`.
    pub fn requests(&self) -> BTreeMap<String, f64> {
        let mut all = BTreeMap::new();
        for (kind, name) in [
            ("aws", "obt_aws_requests_total"),
            ("mysql", "obt_db_queries_total"),
        ] {
            for (operation, count) in self.by_label(name, Some("operation")) {
                all.insert(format!("{kind} {operation}"), count);
            }
        }
        all
    }
}

/// A service's metrics endpoint.
#[derive(Clone)]
pub struct MetricsEndpoint {
    pub service: String,
    http: Http,
}

impl MetricsEndpoint {
    pub fn new(service: &str, port: u16) -> Result<Self, BenchError> {
        let http = Http::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(5),
        )
        .map_err(|e| BenchError::Setup(e.to_string()))?;
        Ok(Self {
            service: service.to_owned(),
            http,
        })
    }

    /// One scrape, or why there is none.
    pub async fn try_scrape(&self) -> Result<Metrics, String> {
        let answer = self.http.get("/metrics").await.map_err(|e| e.to_string())?;
        if !answer.status.is_success() {
            return Err(format!("/metrics answered {}", answer.status));
        }
        Metrics::parse(&String::from_utf8_lossy(&answer.body))
    }

    pub async fn scrape(&self) -> Result<Metrics, BenchError> {
        self.try_scrape()
            .await
            .map_err(|detail| BenchError::Metrics {
                service: self.service.clone(),
                detail,
            })
    }
}

/// A process's CPU time (user + system) and resident memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    pub cpu: Duration,
    pub rss_mb: f64,
}

/// Reads `/proc/PID/stat` (fields 14 and 15, utime and stime, in clock
/// ticks) and VmRSS of `/proc/PID/status`.
pub fn proc_sample(pid: u32) -> Result<ProcSample, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    Ok(ProcSample {
        cpu: parse_cpu(&stat, clock_ticks()).ok_or_else(|| format!("unreadable stat: {stat}"))?,
        rss_mb: parse_rss_mb(&status).ok_or("no VmRSS in /proc/PID/status")?,
    })
}

/// utime + stime of a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces: fields are counted after its
/// closing parenthesis.
pub fn parse_cpu(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: field 3 (state) is fields[0]; utime (14) is [11].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_sec as f64))
}

/// VmRSS of a `/proc/PID/status`, in MB (10^6 bytes).
pub fn parse_rss_mb(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0 / 1e6)
}

/// Clock ticks a second (`getconf CLK_TCK`); 100 on every Linux this
/// project runs on, read from the command when it answers.
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_even_with_spaces_in_the_name() {
        let stat = "4242 (stream relay) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 9 0 \
                    12345 123456789 4000 18446744073709551615";
        assert_eq!(parse_cpu(stat, 100), Some(Duration::from_secs(3)));
        assert_eq!(parse_cpu("garbage", 100), None);
        let status = "Name:\tapi\nVmPeak:\t  99999 kB\nVmRSS:\t   15000 kB\n";
        let mb = parse_rss_mb(status).expect("VmRSS");
        assert!((mb - 15.36).abs() < 1e-9, "{mb}");
        let own = proc_sample(std::process::id()).expect("this process");
        assert!(own.rss_mb > 0.0);
    }

    #[test]
    fn requests_are_summed_by_operation_over_services_labels() {
        let metrics = Metrics::parse(
            "# TYPE obt_aws_requests_total counter\n\
             obt_aws_requests_total{service=\"DynamoDB\",operation=\"UpdateItem\"} 3\n\
             obt_aws_requests_total{service=\"SQS\",operation=\"SendMessageBatch\"} 2\n\
             # TYPE obt_db_queries_total counter\n\
             obt_db_queries_total{operation=\"insert_spending\"} 5\n\
             # TYPE obt_relay_events_published_total counter\n\
             obt_relay_events_published_total 7\n",
        )
        .expect("valid");
        let requests = metrics.requests();
        assert_eq!(requests.get("aws UpdateItem"), Some(&3.0));
        assert_eq!(requests.get("aws SendMessageBatch"), Some(&2.0));
        assert_eq!(requests.get("mysql insert_spending"), Some(&5.0));
        assert_eq!(metrics.total("obt_relay_events_published_total"), 7.0);
        assert_eq!(metrics.total("absent"), 0.0);
    }
}
