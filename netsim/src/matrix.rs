//! The NAT traversal matrix: a scenario with sites of several NAT kinds, run several times, its
//! pairs aggregated per pair of NAT kinds (a "cell").
//!
//! For each cell: how many pairs were measured, how many connected, how many ended direct, the
//! time to the first connection (from the later of the two joining the guild; the watcher
//! polls every 250 ms, and a pair may connect before it joins), the time from the first connection
//! to the first direct path, and the delivery latency of the messages that crossed a relayed
//! pair. Each cell has an expectation from the NATs' mapping and filtering (RFC 4787):
//!
//! - **direct** where both sides map endpoint-independently (open, full cone, address- and
//!   port-restricted, carrier-grade), or one side maps per destination (symmetric) and the other
//!   filters by address only (open, full cone, address-restricted): a hole punch can open it;
//! - **relayed** where a symmetric NAT meets a port-dependent filter (symmetric, port-restricted,
//!   carrier-grade): the punch cannot guess the port, so the pair must stay on the relay;
//! - **either** where a side has no UDP at all (UDP blocked, TCP 443 only): only the
//!   connection itself is required.
//!
//! Assertions: every cell connects in every attempt; "direct" cells end direct in at least 95%
//! of attempts and reach direct within 5 s at p95; "relayed" cells end relayed; a relayed
//! pair's messages arrive within 3 s at p95.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::report::Report;
use crate::scenario::{NatKind, Scenario};

/// The order kinds are shown in.
const ORDER: [NatKind; 8] = [
    NatKind::None,
    NatKind::FullCone,
    NatKind::AddressRestricted,
    NatKind::PortRestricted,
    NatKind::Symmetric,
    NatKind::Cgnat,
    NatKind::UdpBlocked,
    NatKind::Tcp443Only,
];

/// Required share of direct outcomes in a "direct" cell.
pub const DIRECT_SHARE: f64 = 0.95;
/// Required p95 of the time to direct, ms.
pub const DIRECT_P95_MS: u64 = 5_000;
/// Required p95 of a relayed pair's message latency, ms.
pub const RELAYED_MSG_P95_MS: u64 = 3_000;

fn rank(k: NatKind) -> usize {
    ORDER.iter().position(|o| *o == k).unwrap_or(ORDER.len())
}

/// A short name for tables.
pub fn short(k: NatKind) -> &'static str {
    match k {
        NatKind::None => "open",
        NatKind::FullCone => "full-cone",
        NatKind::AddressRestricted => "addr-restr",
        NatKind::PortRestricted => "port-restr",
        NatKind::Symmetric => "symmetric",
        NatKind::Cgnat => "cgnat",
        NatKind::UdpBlocked => "udp-blocked",
        NatKind::Tcp443Only => "tcp443-only",
    }
}

/// What a cell should end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// Hole punching can open it.
    Direct,
    /// It must stay relayed.
    Relayed,
    /// Either is fine (a side without UDP).
    Either,
}

/// The expectation for a pair of kinds (see the module documentation).
pub fn expect(a: NatKind, b: NatKind) -> Expect {
    use NatKind::*;
    let no_udp = |k| matches!(k, UdpBlocked | Tcp443Only);
    let address_filter_only = |k| matches!(k, None | FullCone | AddressRestricted);
    if no_udp(a) || no_udp(b) {
        Expect::Either
    } else if a == Symmetric || b == Symmetric {
        let other = if a == Symmetric { b } else { a };
        if address_filter_only(other) {
            Expect::Direct
        } else {
            Expect::Relayed
        }
    } else {
        Expect::Direct
    }
}

/// One cell's measurements and verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// First kind.
    #[serde(serialize_with = "ser_kind")]
    pub a: NatKind,
    /// Second kind.
    #[serde(serialize_with = "ser_kind")]
    pub b: NatKind,
    /// The expectation.
    pub expect: Expect,
    /// Pairs measured.
    pub samples: usize,
    /// Pairs that connected.
    pub connected: usize,
    /// Pairs that ended direct (as both sides saw it).
    pub direct: usize,
    /// Time from the later of the two joining the guild to their first connection, ms, sorted.
    pub first_connection_ms: Vec<u64>,
    /// Time from the first connection to the first direct path, ms, sorted.
    pub to_direct_ms: Vec<u64>,
    /// Delivery latency of messages across relayed pairs, ms, sorted.
    pub relayed_message_ms: Vec<u64>,
    /// Failed assertions.
    pub failures: Vec<String>,
}

fn ser_kind<S: serde::Serializer>(k: &NatKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(short(*k))
}

/// The nearest-rank percentile of sorted values (`p` in 0..=100).
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The aggregate over every attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    /// Attempts run.
    pub attempts: usize,
    /// Attempts whose run itself failed (setup error), with the error.
    pub run_errors: Vec<String>,
    /// Cells, in kind order.
    pub cells: Vec<Cell>,
    /// No failed assertion and no run error.
    pub passed: bool,
}

impl Matrix {
    /// Aggregates the reports of several runs of `scenario`.
    pub fn from_reports(scenario: &Scenario, reports: &[Report], run_errors: Vec<String>) -> Self {
        let kind_of: BTreeMap<&str, NatKind> = scenario
            .sites
            .iter()
            .flat_map(|s| s.hosts.iter().map(move |h| (h.as_str(), s.nat)))
            .collect();
        let key = |a: NatKind, b: NatKind| {
            if rank(a) <= rank(b) {
                (rank(a), rank(b))
            } else {
                (rank(b), rank(a))
            }
        };
        let mut cells: BTreeMap<(usize, usize), Cell> = BTreeMap::new();
        for r in reports {
            for p in &r.pairs {
                let (Some(&ka), Some(&kb)) = (kind_of.get(p.a.as_str()), kind_of.get(p.b.as_str()))
                else {
                    continue;
                };
                let k = key(ka, kb);
                let cell = cells.entry(k).or_insert_with(|| Cell {
                    a: ORDER[k.0],
                    b: ORDER[k.1],
                    expect: expect(ka, kb),
                    samples: 0,
                    connected: 0,
                    direct: 0,
                    first_connection_ms: Vec::new(),
                    to_direct_ms: Vec::new(),
                    relayed_message_ms: Vec::new(),
                    failures: Vec::new(),
                });
                cell.samples += 1;
                if p.connected() {
                    cell.connected += 1;
                }
                let direct =
                    p.a_to_b.as_deref() == Some("direct") && p.b_to_a.as_deref() == Some("direct");
                if direct {
                    cell.direct += 1;
                }
                if let Some(t) = p.first_connected_ms {
                    cell.first_connection_ms
                        .push(t.saturating_sub(p.both_joined_ms.unwrap_or(0)));
                    if let Some(d) = p.first_direct_ms {
                        cell.to_direct_ms.push(d.saturating_sub(t));
                    }
                }
                if !direct && p.connected() {
                    for m in &r.messages {
                        let other = if m.sender == p.a {
                            &p.b
                        } else if m.sender == p.b {
                            &p.a
                        } else {
                            continue;
                        };
                        if let Some(l) = m
                            .receipts
                            .iter()
                            .find(|x| x.host == *other)
                            .and_then(|x| x.latency_ms)
                        {
                            cell.relayed_message_ms.push(l);
                        }
                    }
                }
            }
        }
        let mut cells: Vec<Cell> = cells.into_values().collect();
        for c in &mut cells {
            c.first_connection_ms.sort_unstable();
            c.to_direct_ms.sort_unstable();
            c.relayed_message_ms.sort_unstable();
            let name = format!("{} x {}", short(c.a), short(c.b));
            if c.connected < c.samples {
                c.failures.push(format!(
                    "{name}: {} of {} pairs connected",
                    c.connected, c.samples
                ));
            }
            match c.expect {
                Expect::Direct => {
                    let share = c.direct as f64 / c.samples.max(1) as f64;
                    if share < DIRECT_SHARE {
                        c.failures.push(format!(
                            "{name}: {} of {} direct ({:.0}%, need {:.0}%)",
                            c.direct,
                            c.samples,
                            share * 100.0,
                            DIRECT_SHARE * 100.0
                        ));
                    }
                    if let Some(p95) = percentile(&c.to_direct_ms, 95.0)
                        && p95 > DIRECT_P95_MS
                    {
                        c.failures.push(format!(
                            "{name}: time to direct p95 {p95} ms > {DIRECT_P95_MS}"
                        ));
                    }
                }
                Expect::Relayed => {
                    if c.direct > 0 {
                        c.failures.push(format!(
                            "{name}: {} of {} ended direct, expected relayed (NAT mislabelled?)",
                            c.direct, c.samples
                        ));
                    }
                }
                Expect::Either => {}
            }
            if let Some(p95) = percentile(&c.relayed_message_ms, 95.0)
                && p95 > RELAYED_MSG_P95_MS
            {
                c.failures.push(format!(
                    "{name}: relayed message latency p95 {p95} ms > {RELAYED_MSG_P95_MS}"
                ));
            }
        }
        let passed = run_errors.is_empty() && cells.iter().all(|c| c.failures.is_empty());
        Self {
            attempts: reports.len() + run_errors.len(),
            run_errors,
            cells,
            passed,
        }
    }

    /// A Markdown table (also readable as plain text).
    pub fn markdown(&self) -> String {
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |x| x.to_string());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| pair of NATs | expected | pairs | connected | direct | join to connection p50 / p95 ms | to direct p95 ms | relayed message p95 ms | verdict |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        for c in &self.cells {
            let _ = writeln!(
                out,
                "| {} x {} | {} | {} | {} ({:.0}%) | {} ({:.0}%) | {} / {} | {} | {} | {} |",
                short(c.a),
                short(c.b),
                match c.expect {
                    Expect::Direct => "direct",
                    Expect::Relayed => "relayed",
                    Expect::Either => "either",
                },
                c.samples,
                c.connected,
                100.0 * c.connected as f64 / c.samples.max(1) as f64,
                c.direct,
                100.0 * c.direct as f64 / c.samples.max(1) as f64,
                ms(percentile(&c.first_connection_ms, 50.0)),
                ms(percentile(&c.first_connection_ms, 95.0)),
                ms(percentile(&c.to_direct_ms, 95.0)),
                ms(percentile(&c.relayed_message_ms, 95.0)),
                if c.failures.is_empty() { "ok" } else { "FAIL" },
            );
        }
        let _ = writeln!(
            out,
            "\n{} attempts, {} run errors: {}",
            self.attempts,
            self.run_errors.len(),
            if self.passed { "PASSED" } else { "FAILED" }
        );
        for e in &self.run_errors {
            let _ = writeln!(out, "- run error: {e}");
        }
        for c in &self.cells {
            for f in &c.failures {
                let _ = writeln!(out, "- {f}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{MessageAudit, PairReport, Receipt};

    #[test]
    fn expectations_follow_mapping_and_filtering() {
        use NatKind::*;
        assert_eq!(expect(PortRestricted, PortRestricted), Expect::Direct);
        assert_eq!(expect(Cgnat, FullCone), Expect::Direct);
        assert_eq!(expect(Symmetric, Symmetric), Expect::Relayed);
        assert_eq!(expect(Symmetric, PortRestricted), Expect::Relayed);
        assert_eq!(expect(PortRestricted, Symmetric), Expect::Relayed);
        assert_eq!(expect(Symmetric, Cgnat), Expect::Relayed);
        assert_eq!(expect(Symmetric, AddressRestricted), Expect::Direct);
        assert_eq!(expect(None, Symmetric), Expect::Direct);
        assert_eq!(expect(UdpBlocked, None), Expect::Either);
        assert_eq!(expect(FullCone, Tcp443Only), Expect::Either);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=20).collect();
        assert_eq!(percentile(&v, 95.0), Some(19));
        assert_eq!(percentile(&v, 50.0), Some(10));
        assert_eq!(percentile(&v, 100.0), Some(20));
        assert_eq!(percentile(&[7], 95.0), Some(7));
        assert_eq!(percentile(&[], 95.0), None);
    }

    fn scenario() -> Scenario {
        Scenario::from_toml(
            r#"
relays = ["r1"]
[[sites]]
name = "p1"
nat = "port-restricted"
hosts = ["pa"]
[[sites]]
name = "p2"
nat = "port-restricted"
hosts = ["pb"]
[[sites]]
name = "s1"
nat = "symmetric"
hosts = ["sa"]
"#,
        )
        .unwrap()
    }

    fn pair(
        a: &str,
        b: &str,
        path: Option<&str>,
        conn: Option<u64>,
        dir: Option<u64>,
    ) -> PairReport {
        PairReport {
            a: a.into(),
            b: b.into(),
            a_to_b: path.map(str::to_owned),
            b_to_a: path.map(str::to_owned),
            first_connected_ms: conn,
            first_direct_ms: dir,
            both_joined_ms: Some(0),
            path_changes: Vec::new(),
        }
    }

    fn report(pairs: Vec<PairReport>) -> Report {
        let mut r = Report::new("t", "scn000000", std::path::Path::new("/nonexistent"));
        r.pairs = pairs;
        r.messages = vec![MessageAudit {
            sender: "pa".into(),
            channel: "general".into(),
            text: "x #0".into(),
            receipts: vec![
                Receipt {
                    host: "pb".into(),
                    count: 1,
                    latency_ms: Some(40),
                },
                Receipt {
                    host: "sa".into(),
                    count: 1,
                    latency_ms: Some(4_000),
                },
            ],
            latency_exempt: Vec::new(),
            max_latency_ms: None,
            sent_ms: 0,
        }];
        r
    }

    #[test]
    fn cells_aggregate_and_judge() {
        let s = scenario();
        // Port-restricted pair direct in 19 of 20 attempts: 95% passes.
        let mut reports = Vec::new();
        for i in 0..20 {
            let pp = if i == 0 {
                pair("pa", "pb", Some("relayed"), Some(100), None)
            } else {
                pair("pa", "pb", Some("direct"), Some(100), Some(600))
            };
            reports.push(report(vec![
                pp,
                pair("pa", "sa", Some("relayed"), Some(300), None),
                pair("pb", "sa", Some("relayed"), Some(300), None),
            ]));
        }
        let m = Matrix::from_reports(&s, &reports, Vec::new());
        let pp = m
            .cells
            .iter()
            .find(|c| c.a == NatKind::PortRestricted && c.b == NatKind::PortRestricted)
            .unwrap();
        assert_eq!((pp.samples, pp.connected, pp.direct), (20, 20, 19));
        assert_eq!(percentile(&pp.to_direct_ms, 95.0), Some(500));
        assert!(pp.failures.is_empty(), "{:?}", pp.failures);
        // The symmetric cell: relayed as expected, but pa's message reached sa in 4 s.
        let ps = m.cells.iter().find(|c| c.b == NatKind::Symmetric).unwrap();
        assert_eq!(ps.samples, 40);
        assert_eq!(ps.failures.len(), 1, "{:?}", ps.failures);
        assert!(ps.failures[0].contains("latency"));
        assert!(!m.passed);
        assert!(
            m.markdown()
                .contains("| port-restr x port-restr | direct | 20 |")
        );

        // One unconnected pair more: 19 direct of 21 is below 95%, and not every pair connected.
        reports.push(report(vec![pair("pa", "pb", None, None, None)]));
        let m = Matrix::from_reports(&s, &reports, Vec::new());
        let pp = &m.cells[0];
        assert_eq!(pp.failures.len(), 2, "{:?}", pp.failures);
    }

    #[test]
    fn a_direct_outcome_where_relayed_is_expected_fails() {
        let s = scenario();
        let r = report(vec![pair("pa", "sa", Some("direct"), Some(10), Some(20))]);
        let m = Matrix::from_reports(&s, &[r], Vec::new());
        assert!(m.cells[0].failures[0].contains("expected relayed"));
    }
}
