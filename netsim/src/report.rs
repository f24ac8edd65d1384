//! The run report: NAT self-test observations, per-pair paths, the message audit, timings; as
//! JSON and as a readable table.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::probe::Observation;
use crate::scenario::NatKind;

/// One router's self-test.
#[derive(Debug, Clone, Serialize)]
pub struct SelfTestReport {
    /// Site.
    pub site: String,
    /// Its label.
    #[serde(serialize_with = "debug_str")]
    pub label: NatKind,
    /// What the probes saw.
    pub observed: Observation,
}

fn debug_str<S: serde::Serializer, T: std::fmt::Debug>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:?}"))
}

/// The connection between two members, as each side reports it (`direct`, `relayed`, or none).
#[derive(Debug, Clone, Serialize)]
pub struct PairReport {
    /// First host.
    pub a: String,
    /// Second host.
    pub b: String,
    /// Path as `a` sees it.
    pub a_to_b: Option<String>,
    /// Path as `b` sees it.
    pub b_to_a: Option<String>,
    /// First time either side listed the other as connected, ms after every node was up.
    pub first_connected_ms: Option<u64>,
    /// First time either side listed a direct path, ms after every node was up.
    pub first_direct_ms: Option<u64>,
    /// When the later of the two finished joining the guild, ms after every node was up.
    #[serde(default)]
    pub both_joined_ms: Option<u64>,
    /// The pair's path each time it changed (ms, "none" | "relayed" | "direct").
    #[serde(default)]
    pub path_changes: Vec<(u64, String)>,
}

impl PairReport {
    /// Whether either side has a connection.
    pub fn connected(&self) -> bool {
        self.a_to_b.is_some() || self.b_to_a.is_some()
    }
}

/// One member's receipt of one message.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    /// The member.
    pub host: String,
    /// How many times the message is in its history (must be 1).
    pub count: usize,
    /// From `send` returning to the first audit poll that found it (poll rounds take tens of ms).
    pub latency_ms: Option<u64>,
}

/// One sent message and who got it.
#[derive(Debug, Clone, Serialize)]
pub struct MessageAudit {
    /// Sender.
    pub sender: String,
    /// Channel.
    pub channel: String,
    /// Text (with its ` #<step>` suffix).
    pub text: String,
    /// Every member that should have it (the sender included).
    pub receipts: Vec<Receipt>,
    /// Members exempt from the latency bound (cut off by a partition when it was sent).
    #[serde(default)]
    pub latency_exempt: Vec<String>,
    /// This message's own latency bound, ms (else the report's).
    #[serde(default)]
    pub max_latency_ms: Option<u64>,
    /// When it was sent, ms after every node was up.
    #[serde(default)]
    pub sent_ms: u64,
}

/// A fault or action of the timeline, for plots.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEvent {
    /// When, ms after every node was up.
    pub at_ms: u64,
    /// What happened ("kill relay1", "partition cafe", ...).
    pub what: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Run prefix (namespace names).
    pub prefix: String,
    /// Run directory (logs and data; kept on failure).
    pub run_dir: String,
    /// NAT self-test.
    pub selftest: Vec<SelfTestReport>,
    /// Topology built and self-tested, ms from start.
    pub build_ms: u64,
    /// Guild keyed, ms from start.
    pub setup_ms: u64,
    /// Whole run, ms.
    pub total_ms: u64,
    /// Pairs of members.
    pub pairs: Vec<PairReport>,
    /// Message audit.
    pub messages: Vec<MessageAudit>,
    /// Timeline actions other than sends.
    pub events: Vec<TimelineEvent>,
    /// The scenario's latency bound, ms.
    pub max_latency_ms: Option<u64>,
    /// Voice calls.
    pub calls: Vec<CallReport>,
    /// Every failed assertion.
    pub failures: Vec<String>,
    /// No failures.
    pub passed: bool,
}

impl Report {
    /// An empty report.
    pub fn new(scenario: &str, prefix: &str, run_dir: &Path) -> Self {
        Self {
            scenario: scenario.to_owned(),
            prefix: prefix.to_owned(),
            run_dir: run_dir.display().to_string(),
            selftest: Vec::new(),
            build_ms: 0,
            setup_ms: 0,
            total_ms: 0,
            pairs: Vec::new(),
            messages: Vec::new(),
            events: Vec::new(),
            max_latency_ms: None,
            calls: Vec::new(),
            failures: Vec::new(),
            passed: false,
        }
    }

    /// Evaluates the assertions: every pair connected, every message exactly once everywhere.
    pub fn finish(&mut self) {
        self.failures.clear();
        for p in &self.pairs {
            if !p.connected() {
                self.failures
                    .push(format!("{} and {} are not connected", p.a, p.b));
            }
        }
        for m in &self.messages {
            for r in &m.receipts {
                if r.count != 1 {
                    self.failures.push(format!(
                        "{:?} from {}: {} has it {} times, expected exactly once",
                        m.text, m.sender, r.host, r.count
                    ));
                }
                if let Some(max) = m.max_latency_ms.or(self.max_latency_ms)
                    && !m.latency_exempt.contains(&r.host)
                    && r.latency_ms.is_some_and(|l| l > max)
                {
                    self.failures.push(format!(
                        "{:?} from {}: {} had it after {} ms, bound {max} ms",
                        m.text,
                        m.sender,
                        r.host,
                        r.latency_ms.unwrap_or_default()
                    ));
                }
            }
        }
        for c in &self.calls {
            for p in &c.paths {
                if p.path != "direct" && p.path != "relayed" {
                    self.failures.push(format!(
                        "call in {}: {} has no media path to {} ({})",
                        c.channel, p.from, p.to, p.path
                    ));
                }
            }
            for h in &c.scores {
                match h.pesq {
                    Some(q) if q >= c.min_pesq => {}
                    Some(q) => self.failures.push(format!(
                        "call in {}: {} hears {} at PESQ {q:.2}, below {:.2}",
                        c.channel, h.listener, h.speaker, c.min_pesq
                    )),
                    None => self.failures.push(format!(
                        "call in {}: {} does not hear {}",
                        c.channel, h.listener, h.speaker
                    )),
                }
            }
        }
        self.passed = self.failures.is_empty();
    }

    /// A readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "scenario {} (run {})", self.scenario, self.prefix);
        let _ = writeln!(
            s,
            "timings: topology+self-test {} ms, guild keyed {} ms, total {} ms",
            self.build_ms, self.setup_ms, self.total_ms
        );
        let _ = writeln!(
            s,
            "\n{:<12} {:<18} {:<10} {:<24} filtering",
            "site", "label", "udp", "mapping"
        );
        for t in &self.selftest {
            let o = &t.observed;
            let _ = writeln!(
                s,
                "{:<12} {:<18} {:<10} {:<24} {}",
                t.site,
                format!("{:?}", t.label),
                o.udp,
                o.mapping.map_or("-".into(), |m| format!("{m:?}")),
                o.filtering.map_or("-".into(), |f| format!("{f:?}")),
            );
        }
        let _ = writeln!(
            s,
            "\n{:<12} {:<12} {:<10} {:<10} {:<14} first direct ms",
            "a", "b", "a->b", "b->a", "first conn ms"
        );
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        for p in &self.pairs {
            let _ = writeln!(
                s,
                "{:<12} {:<12} {:<10} {:<10} {:<14} {}",
                p.a,
                p.b,
                p.a_to_b.as_deref().unwrap_or("none"),
                p.b_to_a.as_deref().unwrap_or("none"),
                ms(p.first_connected_ms),
                ms(p.first_direct_ms)
            );
        }
        let _ = writeln!(
            s,
            "\n{:<30} {:<10} receipts (count, latency ms)",
            "message", "sender"
        );
        for m in &self.messages {
            let r: Vec<String> = m
                .receipts
                .iter()
                .map(|r| {
                    format!(
                        "{}:{}x/{}",
                        r.host,
                        r.count,
                        r.latency_ms.map_or("-".into(), |l| l.to_string())
                    )
                })
                .collect();
            let _ = writeln!(s, "{:<30} {:<10} {}", m.text, m.sender, r.join(" "));
        }
        for c in &self.calls {
            let _ = writeln!(
                s,
                "\ncall in {} ({} participants)\n{:<12} {:<12} {:<10} {:<8} {:<7} {:<8} {:<10} PESQ-WB",
                c.channel,
                c.hosts.len(),
                "listener",
                "speaker",
                "path",
                "rtt ms",
                "loss",
                "jb ms",
                "path at ms",
            );
            for p in &c.paths {
                let q = c
                    .scores
                    .iter()
                    .find(|h| h.listener == p.from && h.speaker == p.to)
                    .and_then(|h| h.pesq)
                    .map_or("not heard".to_owned(), |q| format!("{q:.2}"));
                let _ = writeln!(
                    s,
                    "{:<12} {:<12} {:<10} {:<8} {:<7} {:<8} {:<10} {}",
                    p.from,
                    p.to,
                    p.path,
                    p.rtt_ms.map_or("-".into(), |r| format!("{r:.1}")),
                    format!("{:.1}%", p.loss * 100.0),
                    format!("{:.0}", p.jitter_buffer_ms),
                    p.connected_ms.map_or("-".into(), |m| m.to_string()),
                    q
                );
            }
        }
        let _ = writeln!(s, "\n{}", if self.passed { "PASSED" } else { "FAILED:" });
        for f in &self.failures {
            let _ = writeln!(s, "  - {f}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut r = Report::new("t", "scn000000", Path::new("/tmp/x"));
        r.pairs.push(PairReport {
            a: "alice".into(),
            b: "bob".into(),
            a_to_b: Some("relayed".into()),
            b_to_a: None,
            first_connected_ms: Some(120),
            first_direct_ms: None,
            both_joined_ms: Some(100),
            path_changes: vec![(120, "relayed".into())],
        });
        r.messages.push(MessageAudit {
            sender: "alice".into(),
            channel: "general".into(),
            text: "hi #0".into(),
            receipts: vec![
                Receipt {
                    host: "alice".into(),
                    count: 1,
                    latency_ms: Some(3),
                },
                Receipt {
                    host: "bob".into(),
                    count: 1,
                    latency_ms: Some(12),
                },
            ],
            latency_exempt: Vec::new(),
            max_latency_ms: None,
            sent_ms: 500,
        });
        r
    }

    #[test]
    fn the_latency_bound_holds_except_for_the_cut_off() {
        let mut r = report();
        r.max_latency_ms = Some(10);
        r.finish();
        assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
        assert!(r.failures[0].contains("bob had it after 12 ms, bound 10 ms"));
        r.messages[0].latency_exempt = vec!["bob".into()];
        r.finish();
        assert!(r.passed, "{:?}", r.failures);
        // A message's own bound overrides the scenario's.
        r.messages[0].latency_exempt.clear();
        r.messages[0].max_latency_ms = Some(20);
        r.finish();
        assert!(r.passed, "{:?}", r.failures);
    }

    #[test]
    fn a_clean_run_passes() {
        let mut r = report();
        r.finish();
        assert!(r.passed, "{:?}", r.failures);
        let t = r.table();
        assert!(t.contains("PASSED") && t.contains("bob:1x/12"), "{t}");
    }

    #[test]
    fn lost_duplicated_and_unconnected_are_failures() {
        let mut r = report();
        r.messages[0].receipts[1].count = 0;
        r.messages[0].receipts[0].count = 2;
        r.pairs[0].a_to_b = None;
        r.finish();
        assert!(!r.passed);
        assert_eq!(r.failures.len(), 3, "{:?}", r.failures);
        assert!(r.failures[0].contains("not connected"));
        assert!(r.failures[1].contains("alice has it 2 times"));
        assert!(r.failures[2].contains("bob has it 0 times"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["passed"], false);
        assert_eq!(json["messages"][0]["receipts"][1]["count"], 0);
    }
}

/// One direction of a call: `from`'s view of `to`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallPath {
    /// The listener.
    pub from: String,
    /// The participant it receives.
    pub to: String,
    /// `direct`, `relayed`, `connecting`, or `missing` (not a participant at all).
    pub path: String,
    /// Round trip on the direct path, ms.
    pub rtt_ms: Option<f64>,
    /// Loss the jitter buffer estimated.
    pub loss: f64,
    /// Jitter-buffer target, ms.
    pub jitter_buffer_ms: f64,
    /// Frames received through the media relay and directly.
    pub via_relay: u64,
    /// See `via_relay`.
    pub via_direct: u64,
    /// When the path was first usable, ms after the listener joined.
    pub connected_ms: Option<u64>,
}

/// One speaker in one listener's recording.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallScore {
    /// Who recorded.
    pub listener: String,
    /// Who spoke.
    pub speaker: String,
    /// PESQ-WB of the speaker's turn in the recording.
    pub pesq: Option<f64>,
    /// Delay of the turn relative to where it was expected, ms.
    pub offset_ms: Option<i64>,
    /// Envelope correlation where the turn was found.
    pub match_r: f64,
}

impl CallScore {
    /// A score from what [`crate::voice::score`] found.
    pub fn new(listener: &str, speaker: &str, heard: crate::voice::Heard) -> Self {
        Self {
            listener: listener.to_owned(),
            speaker: speaker.to_owned(),
            pesq: heard.pesq,
            offset_ms: heard.offset_ms,
            match_r: heard.match_r,
        }
    }
}

/// A voice call step.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallReport {
    /// Voice channel.
    pub channel: String,
    /// Participants.
    pub hosts: Vec<String>,
    /// The bound every score must meet.
    pub min_pesq: f64,
    /// Every ordered pair of participants.
    pub paths: Vec<CallPath>,
    /// Every (listener, speaker) pair.
    pub scores: Vec<CallScore>,
}
