//! Counters for the admin listener's `/metrics` (Prometheus text format):
//! per route, requests by status class and by decision, and a latency
//! histogram; process-wide gauges and counters live in `worker::Shared`.
//! Everything on the request path is a relaxed atomic add; a route keeps its
//! counters across reloads (matched by name).

use crate::mcp::method::Method;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency buckets, in microseconds.
pub(crate) const BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000, 30_000_000,
];

/// MCP methods counted by name; any other is counted as `other`, and a
/// request without a JSON-RPC body (GET, DELETE) as `none`.
pub(crate) const METHODS: [&str; 16] = [
    "initialize",
    "notifications/initialized",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "server/discover",
    "subscriptions/listen",
    "notifications/cancelled",
];
const OTHER: usize = METHODS.len();
const NONE: usize = METHODS.len() + 1;

/// The counter slot of a method (`None`: no JSON-RPC body).
pub(crate) fn method_slot(method: Option<Method<'_>>) -> u8 {
    match method {
        None => NONE as u8,
        Some(m) => m.index().filter(|&i| i < METHODS.len()).unwrap_or(OTHER) as u8,
    }
}

/// How portcullis decided a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forwarded to the upstream.
    Allowed,
    /// Refused by a policy rule or a rate limit.
    Denied,
    /// No valid token, a missing scope, a foreign session, a bad origin.
    Unauthenticated,
    /// Malformed: bad framing, bad JSON-RPC, header mismatch.
    Invalid,
    /// Upstream failure or timeout.
    Failed,
}

impl Decision {
    const ALL: [Decision; 5] = [
        Decision::Allowed,
        Decision::Denied,
        Decision::Unauthenticated,
        Decision::Invalid,
        Decision::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Invalid => "invalid",
            Decision::Failed => "failed",
        }
    }
}

/// One route's counters.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// By status class: 1xx .. 5xx.
    status: [AtomicU64; 5],
    decisions: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS_US.len()],
    latency_sum_us: AtomicU64,
    count: AtomicU64,
    /// By MCP method (`METHODS`, then other, then none).
    methods: [AtomicU64; METHODS.len() + 2],
    /// Requests that raised each behaviour signal (by signal index).
    anomalies: [AtomicU64; 8],
}

impl RouteMetrics {
    /// Count one finished request.
    pub fn record(&self, status: u16, decision: Decision, method: u8, micros: u64) {
        if let Some(c) = self.methods.get(usize::from(method)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.status[class].fetch_add(1, Ordering::Relaxed);
        self.decisions[decision as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(i) = BUCKETS_US.iter().position(|&b| micros <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// One request raised behaviour signal number `signal`.
    pub fn anomaly(&self, signal: usize) {
        if let Some(c) = self.anomalies.get(signal) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `portcullis_anomalies_total` for the signals that were raised, named
    /// by `names` (in signal index order).
    pub fn render_anomalies(&self, route: &str, names: &[&str], out: &mut String) {
        let route = escape(route);
        for (name, c) in names.iter().zip(&self.anomalies) {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "portcullis_anomalies_total{{route=\"{route}\",signal=\"{name}\"}} {n}"
                );
            }
        }
    }

    /// Append this route's series to `out` (Prometheus text format).
    pub fn render(&self, route: &str, out: &mut String) {
        let route = escape(route);
        for (i, c) in self.status.iter().enumerate() {
            let _ = writeln!(
                out,
                "portcullis_requests_total{{route=\"{route}\",status=\"{}xx\"}} {}",
                i + 1,
                c.load(Ordering::Relaxed)
            );
        }
        for d in Decision::ALL {
            let _ = writeln!(
                out,
                "portcullis_decisions_total{{route=\"{route}\",decision=\"{}\"}} {}",
                d.as_str(),
                self.decisions[d as usize].load(Ordering::Relaxed)
            );
        }
        let mut cumulative = 0;
        for (b, c) in BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "portcullis_request_duration_seconds_bucket{{route=\"{route}\",le=\"{}\"}} {cumulative}",
                *b as f64 / 1e6
            );
        }
        for (i, c) in self.methods.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let name = match i {
                OTHER => "other",
                NONE => "none",
                _ => METHODS[i],
            };
            let _ = writeln!(
                out,
                "portcullis_mcp_requests_total{{route=\"{route}\",method=\"{name}\"}} {n}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "portcullis_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "portcullis_request_duration_seconds_sum{{route=\"{route}\"}} {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "portcullis_request_duration_seconds_count{{route=\"{route}\"}} {count}"
        );
    }
}

/// A label value with `\`, `"` and newlines escaped.
pub(crate) fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_methods_are_the_first_named_ones() {
        assert_eq!(METHODS[..], Method::NAMES[..METHODS.len()]);
        assert_eq!(method_slot(Some(Method::ResourcesUnsubscribe)), OTHER as u8);
    }

    #[test]
    fn records_render_as_prometheus_series() {
        let m = RouteMetrics::default();
        m.record(
            200,
            Decision::Allowed,
            method_slot(Some(Method::ToolsCall)),
            80,
        );
        m.record(
            200,
            Decision::Denied,
            method_slot(Some(Method::Other("x/unknown"))),
            3_000,
        );
        m.record(
            401,
            Decision::Unauthenticated,
            method_slot(None),
            40_000_000,
        );
        let mut out = String::new();
        m.render("a\"b", &mut out);
        assert!(
            out.contains("portcullis_requests_total{route=\"a\\\"b\",status=\"2xx\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("status=\"4xx\"} 1\n"), "{out}");
        assert!(out.contains("decision=\"denied\"} 1\n"), "{out}");
        assert!(out.contains("le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("le=\"0.005\"} 2\n"), "{out}");
        assert!(
            out.contains("le=\"30\"} 2\n"),
            "beyond the last bucket: {out}"
        );
        assert!(out.contains("le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("_count{route=\"a\\\"b\"} 3\n"), "{out}");
        assert!(out.contains("method=\"tools/call\"} 1\n"), "{out}");
        assert!(out.contains("method=\"other\"} 1\n"), "{out}");
        assert!(out.contains("method=\"none\"} 1\n"), "{out}");
    }
}

/// A route's content-screening counters: findings per (direction, detector,
/// action), for `portcullis_screen_findings_total`. Made with the route's
/// compiled screen (a reload starts them again, as Prometheus counters may).
pub struct ScreenCounts {
    names: Vec<Box<str>>,
    cells: Box<[AtomicU64]>,
}

/// The directions and actions counted, in cell order.
const SCREEN_DIRECTIONS: [&str; 2] = ["request", "response"];
const SCREEN_ACTIONS: [&str; 4] = ["audit", "redact", "block", "withheld"];

impl std::fmt::Debug for ScreenCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScreenCounts")
            .field("detectors", &self.names.len())
            .finish_non_exhaustive()
    }
}

impl ScreenCounts {
    /// Counters for these detector names (in the screen's order).
    pub fn new<'a>(names: impl Iterator<Item = &'a str>) -> ScreenCounts {
        let names: Vec<Box<str>> = names.map(Box::from).collect();
        let n = names.len() * SCREEN_DIRECTIONS.len() * SCREEN_ACTIONS.len();
        ScreenCounts {
            names,
            cells: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// One more finding of detector `index`; `direction` and `action` as
    /// the audit record names them (others are not counted).
    pub fn bump(&self, index: usize, direction: &str, action: &str) {
        let d = SCREEN_DIRECTIONS.iter().position(|x| *x == direction);
        let a = SCREEN_ACTIONS.iter().position(|x| *x == action);
        if let (Some(d), Some(a)) = (d, a) {
            let i = (index * SCREEN_DIRECTIONS.len() + d) * SCREEN_ACTIONS.len() + a;
            if let Some(c) = self.cells.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The series that counted something (Prometheus text format).
    pub fn render(&self, route: &str, out: &mut String) {
        let route = escape(route);
        for (i, c) in self.cells.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let a = i % SCREEN_ACTIONS.len();
            let d = i / SCREEN_ACTIONS.len() % SCREEN_DIRECTIONS.len();
            let name = &self.names[i / SCREEN_ACTIONS.len() / SCREEN_DIRECTIONS.len()];
            let _ = writeln!(
                out,
                "portcullis_screen_findings_total{{route=\"{route}\",direction=\"{}\",detector=\"{}\",action=\"{}\"}} {n}",
                SCREEN_DIRECTIONS[d],
                escape(name),
                SCREEN_ACTIONS[a]
            );
        }
    }
}

/// The kinds of pinned definitions, as `portcullis_pin_*` label them.
pub(crate) const PIN_KINDS: [&str; 3] = ["tool", "prompt", "resource_template"];
/// The changes `portcullis_pin_changes_total` counts.
pub(crate) const PIN_CHANGES: [&str; 3] = ["added", "removed", "changed"];

/// A route's pinning counters: changes per kind and change, definitions
/// flagged for injection markers per kind (bumped by the control plane
/// when it records them).
#[derive(Debug, Default)]
pub(crate) struct PinCounts {
    changes: [[AtomicU64; 3]; 3],
    flagged: [AtomicU64; 3],
}

impl PinCounts {
    /// One more change of kind `kind` (`PIN_KINDS` index); other changes are not counted.
    pub(crate) fn changed(&self, kind: usize, change: &str) {
        let c = PIN_CHANGES.iter().position(|x| *x == change);
        if let (Some(row), Some(c)) = (self.changes.get(kind), c) {
            row[c].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn flagged(&self, kind: usize) {
        if let Some(c) = self.flagged.get(kind) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The `portcullis_pin_changes_total` series that counted something.
    pub(crate) fn render_changes(&self, route: &str, out: &mut String) {
        let route = escape(route);
        for (k, row) in self.changes.iter().enumerate() {
            for (c, n) in row.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "portcullis_pin_changes_total{{route=\"{route}\",kind=\"{}\",change=\"{}\"}} {n}",
                        PIN_KINDS[k], PIN_CHANGES[c]
                    );
                }
            }
        }
    }

    /// The `portcullis_pin_flagged_total` series that counted something.
    pub(crate) fn render_flagged(&self, route: &str, out: &mut String) {
        let route = escape(route);
        for (k, n) in self.flagged.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "portcullis_pin_flagged_total{{route=\"{route}\",kind=\"{}\"}} {n}",
                    PIN_KINDS[k]
                );
            }
        }
    }
}

#[cfg(test)]
mod pin_counts_tests {
    use super::PinCounts;

    #[test]
    fn pin_changes_and_flags_are_counted_per_kind() {
        let c = PinCounts::default();
        c.changed(0, "changed");
        c.changed(0, "changed");
        c.changed(2, "added");
        c.changed(1, "renamed");
        c.changed(7, "added");
        c.flagged(1);
        let mut out = String::new();
        c.render_changes("gh", &mut out);
        c.render_flagged("gh", &mut out);
        let want = [
            "portcullis_pin_changes_total{route=\"gh\",kind=\"tool\",change=\"changed\"} 2",
            "portcullis_pin_changes_total{route=\"gh\",kind=\"resource_template\",change=\"added\"} 1",
            "portcullis_pin_flagged_total{route=\"gh\",kind=\"prompt\"} 1",
        ];
        assert_eq!(out.lines().collect::<Vec<_>>(), want);
    }
}

#[cfg(test)]
mod screen_counts_tests {
    use super::ScreenCounts;

    #[test]
    fn findings_are_counted_per_direction_detector_and_action() {
        let c = ScreenCounts::new(["aws_key", "email"].into_iter());
        c.bump(0, "response", "redact");
        c.bump(0, "response", "redact");
        c.bump(1, "request", "audit");
        c.bump(1, "sideways", "audit");
        c.bump(7, "request", "audit");
        let mut out = String::new();
        c.render("gh", &mut out);
        let want = [
            "portcullis_screen_findings_total{route=\"gh\",direction=\"response\",detector=\"aws_key\",action=\"redact\"} 2",
            "portcullis_screen_findings_total{route=\"gh\",direction=\"request\",detector=\"email\",action=\"audit\"} 1",
        ];
        assert_eq!(out.lines().collect::<Vec<_>>(), want);
    }
}
