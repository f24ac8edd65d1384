//! The scenario file: topology, NAT types, impairments and a timeline, validated before anything
//! touches the kernel, so a typo is a clear error rather than a half-built network.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a scenario was refused.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// Not valid TOML, or unknown or mistyped keys.
    #[error("invalid scenario: {0}")]
    Parse(#[from] toml::de::Error),
    /// Two hosts, sites or relays share a name.
    #[error("duplicate name {0:?}")]
    DuplicateName(String),
    /// A name is unusable as a namespace name.
    #[error("invalid name {0:?}: use 1-12 characters from [a-z0-9-]")]
    BadName(String),
    /// A reference points at nothing.
    #[error("{context} refers to unknown {kind} {name:?}")]
    UnknownRef {
        /// Where the reference is.
        context: String,
        /// What kind of thing was expected.
        kind: &'static str,
        /// The missing name.
        name: String,
    },
    /// An impairment value is out of range.
    #[error("link {link}: {field} must be at most {max}, got {got}")]
    Impairment {
        /// The link's name.
        link: String,
        /// The offending field.
        field: &'static str,
        /// Largest allowed value.
        max: f64,
        /// The value found.
        got: f64,
    },
    /// Too many relays, sites or hosts for the address plan, or a site without hosts.
    #[error("{what}: expected {expected}, got {got}")]
    Size {
        /// What is out of range.
        what: String,
        /// The allowed range.
        expected: &'static str,
        /// The count found.
        got: usize,
    },
    /// The timeline is not in time order.
    #[error("timeline step {index} at {at_ms} ms comes before the previous step")]
    TimelineOrder {
        /// Step index.
        index: usize,
        /// Its time.
        at_ms: u64,
    },
}

/// A NAT router's behaviour (RFC 4787 mapping and filtering, plus the special sites).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// No NAT: the site's hosts have public addresses.
    None,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Address-and-port-dependent mapping and filtering.
    Symmetric,
    /// A port-restricted NAT behind a second, carrier-grade NAT layer.
    Cgnat,
    /// All UDP dropped at the router.
    UdpBlocked,
    /// Only outbound TCP to port 443 allowed.
    Tcp443Only,
}

/// Link impairment, applied in user space (the kernel here has no netem): see
/// [`crate::impair`].
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Impairment {
    /// One-way delay in milliseconds.
    pub delay_ms: f64,
    /// Jitter (standard deviation) in milliseconds.
    pub jitter_ms: f64,
    /// Random loss probability in percent.
    pub loss_pct: f64,
    /// Mean burst length in packets for bursty (Gilbert) loss; below 1 for independent loss.
    pub loss_burst: f64,
    /// Bandwidth limit in kbit/s; 0 for unlimited.
    pub rate_kbit: f64,
}

/// A site: a LAN behind one router.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Site name.
    pub name: String,
    /// Router behaviour.
    pub nat: NatKind,
    /// Hosts on the site's LAN.
    pub hosts: Vec<String>,
    /// Impairment of the site's uplink.
    #[serde(default)]
    pub uplink: Impairment,
}

/// One timeline step. (serde cannot deny unknown fields through `flatten`; the action's own
/// fields are still checked by type.)
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Step {
    /// Milliseconds after the start.
    pub at_ms: u64,
    /// What happens.
    #[serde(flatten)]
    pub action: Action,
}

/// Actions and faults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Kill a relay process.
    KillRelay {
        /// The relay.
        relay: String,
    },
    /// Restart a killed relay.
    StartRelay {
        /// The relay.
        relay: String,
    },
    /// Cut a site off from the internet.
    Partition {
        /// The site.
        site: String,
    },
    /// Reconnect a partitioned site.
    Heal {
        /// The site.
        site: String,
    },
    /// Flush a site router's NAT mappings.
    FlushNat {
        /// The site.
        site: String,
    },
    /// Give a site's router a new public address.
    ChangeAddress {
        /// The site.
        site: String,
    },
    /// Have a host join the guild (with a fresh invite from the owner).
    Join {
        /// The joining host.
        host: String,
    },
    /// Have a host send a text message to a channel.
    Send {
        /// The sending host.
        host: String,
        /// Channel name.
        channel: String,
        /// Message text.
        text: String,
        /// This message's own latency bound, ms (overrides the scenario's `max_latency_ms`).
        #[serde(default)]
        within_ms: Option<u64>,
    },
    /// A voice call: `hosts` join voice channel `channel` (created by the owner), each speaks a
    /// sentence in its own turn and records; every recording is scored (see `crate::voice`).
    Call {
        /// The participants.
        hosts: Vec<String>,
        /// Voice channel name.
        channel: String,
        /// Length of each speaker's turn, ms.
        #[serde(default = "default_turn_ms")]
        turn_ms: u64,
        /// Silence before the first turn while the call connects, ms.
        #[serde(default = "default_lead_ms")]
        lead_ms: u64,
        /// Lowest acceptable PESQ-WB of any speaker in any recording.
        #[serde(default = "default_min_pesq")]
        min_pesq: f64,
    },
}

fn default_turn_ms() -> u64 {
    5000
}

fn default_lead_ms() -> u64 {
    8000
}

fn default_min_pesq() -> f64 {
    3.0
}

impl Action {
    /// A short description for plots and logs.
    pub fn label(&self) -> String {
        match self {
            Self::KillRelay { relay } => format!("kill {relay}"),
            Self::StartRelay { relay } => format!("start {relay}"),
            Self::Partition { site } => format!("partition {site}"),
            Self::Heal { site } => format!("heal {site}"),
            Self::FlushNat { site } => format!("flush NAT {site}"),
            Self::ChangeAddress { site } => format!("new address {site}"),
            Self::Join { host } => format!("{host} joins"),
            Self::Send { host, .. } => format!("{host} sends"),
            Self::Call { hosts, channel, .. } => format!("call in {channel} ({})", hosts.len()),
        }
    }
}

/// The guild the scenario's nodes share.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuildSpec {
    /// The host that creates the guild and issues invites.
    pub owner: String,
    /// Hosts that join before the timeline starts (default: every host).
    #[serde(default)]
    pub members: Option<Vec<String>>,
}

/// A whole scenario.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The shared guild (default: owned by the first host, every host a member).
    #[serde(default)]
    pub guild: Option<GuildSpec>,
    /// Relays on the internet segment.
    pub relays: Vec<String>,
    /// Sites behind routers.
    pub sites: Vec<Site>,
    /// Timeline, in time order.
    #[serde(default)]
    pub timeline: Vec<Step>,
    /// Every member reachable when a message is sent must have it within this many ms (members
    /// of a partitioned site, and every receiver of a message sent from one, are exempt: they
    /// catch up after the heal). None: no bound.
    #[serde(default)]
    pub max_latency_ms: Option<u64>,
}

fn check_name(name: &str, seen: &mut BTreeSet<String>) -> Result<(), ScenarioError> {
    let ok = !name.is_empty()
        && name.len() <= 12
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(ScenarioError::BadName(name.into()));
    }
    if !seen.insert(name.into()) {
        return Err(ScenarioError::DuplicateName(name.into()));
    }
    Ok(())
}

fn check_impairment(link: &str, i: &Impairment) -> Result<(), ScenarioError> {
    let limits = [
        ("delay_ms", i.delay_ms, 10_000.0),
        ("jitter_ms", i.jitter_ms, 5_000.0),
        ("loss_pct", i.loss_pct, 100.0),
        ("loss_burst", i.loss_burst, 1_000.0),
        ("rate_kbit", i.rate_kbit, 10_000_000.0),
    ];
    for (field, got, max) in limits {
        if !(0.0..=max).contains(&got) {
            return Err(ScenarioError::Impairment {
                link: link.into(),
                field,
                max,
                got,
            });
        }
    }
    Ok(())
}

impl Scenario {
    /// The guild owner: the configured one, or the first host.
    pub fn owner(&self) -> Option<&str> {
        match &self.guild {
            Some(g) => Some(g.owner.as_str()),
            None => self
                .sites
                .iter()
                .flat_map(|s| &s.hosts)
                .next()
                .map(String::as_str),
        }
    }

    /// Hosts in the guild before the timeline starts, owner first.
    pub fn initial_members(&self) -> Vec<String> {
        let all: Vec<String> = self.sites.iter().flat_map(|s| s.hosts.clone()).collect();
        let owner = self.owner().map(str::to_owned);
        let mut out: Vec<String> = owner.iter().cloned().collect();
        let listed = self
            .guild
            .as_ref()
            .and_then(|g| g.members.clone())
            .unwrap_or(all);
        out.extend(listed.into_iter().filter(|h| Some(h) != owner.as_ref()));
        out
    }

    /// The site of a host.
    pub fn site_of(&self, host: &str) -> Option<&Site> {
        self.sites
            .iter()
            .find(|s| s.hosts.iter().any(|h| h == host))
    }

    /// Parses and validates a scenario file.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Self = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    /// Checks names, references, ranges and time order.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let size = |what: String, expected, got| ScenarioError::Size {
            what,
            expected,
            got,
        };
        // Address plan: relays 198.18.0.10+i, sites 198.18.1.(i+1) with LAN 10.(i+1).0.0/24,
        // hosts 10.(i+1).0.(10+j).
        if self.relays.len() > 200 {
            return Err(size("relays".into(), "at most 200", self.relays.len()));
        }
        if self.sites.len() > 200 {
            return Err(size("sites".into(), "at most 200", self.sites.len()));
        }
        for s in &self.sites {
            if !(1..=200).contains(&s.hosts.len()) {
                return Err(size(
                    format!("hosts of site {:?}", s.name),
                    "1 to 200",
                    s.hosts.len(),
                ));
            }
        }
        let mut names = BTreeSet::new();
        for r in &self.relays {
            check_name(r, &mut names)?;
        }
        let mut hosts = BTreeSet::new();
        for s in &self.sites {
            check_name(&s.name, &mut names)?;
            check_impairment(&s.name, &s.uplink)?;
            for h in &s.hosts {
                check_name(h, &mut names)?;
                hosts.insert(h.clone());
            }
        }
        if let Some(g) = &self.guild {
            let refs = std::iter::once(&g.owner).chain(g.members.iter().flatten());
            for h in refs {
                if !hosts.contains(h) {
                    return Err(ScenarioError::UnknownRef {
                        context: "guild".into(),
                        kind: "host",
                        name: h.clone(),
                    });
                }
            }
        }
        let relays: BTreeSet<&String> = self.relays.iter().collect();
        let sites: BTreeSet<&String> = self.sites.iter().map(|s| &s.name).collect();
        let mut last = 0;
        for (index, step) in self.timeline.iter().enumerate() {
            if step.at_ms < last {
                return Err(ScenarioError::TimelineOrder {
                    index,
                    at_ms: step.at_ms,
                });
            }
            last = step.at_ms;
            let context = format!("timeline step {index}");
            let missing = |kind: &'static str, name: &String| ScenarioError::UnknownRef {
                context: context.clone(),
                kind,
                name: name.clone(),
            };
            match &step.action {
                Action::KillRelay { relay } | Action::StartRelay { relay }
                    if !relays.contains(relay) =>
                {
                    return Err(missing("relay", relay));
                }
                Action::Partition { site }
                | Action::Heal { site }
                | Action::FlushNat { site }
                | Action::ChangeAddress { site }
                    if !sites.contains(site) =>
                {
                    return Err(missing("site", site));
                }
                Action::Send { host, .. } | Action::Join { host } if !hosts.contains(host) => {
                    return Err(missing("host", host));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
relays = ["relay1", "relay2"]

[[sites]]
name = "home"
nat = "port-restricted"
hosts = ["alice"]
uplink = { delay_ms = 20, jitter_ms = 5, loss_pct = 1 }

[[sites]]
name = "mobile"
nat = "cgnat"
hosts = ["bob"]

[[timeline]]
at_ms = 1000
action = "send"
host = "alice"
channel = "general"
text = "hi"

[[timeline]]
at_ms = 2000
action = "kill-relay"
relay = "relay1"
"#;

    #[test]
    fn example_parses() {
        let s = Scenario::from_toml(EXAMPLE).unwrap();
        assert_eq!(s.sites[1].nat, NatKind::Cgnat);
        assert_eq!(s.sites[0].uplink.delay_ms, 20.0);
        assert_eq!(
            s.timeline[1].action,
            Action::KillRelay {
                relay: "relay1".into()
            }
        );
    }

    #[test]
    fn bad_scenarios_are_clear_errors() {
        let unknown = EXAMPLE.replace("relay = \"relay1\"", "relay = \"relay9\"");
        assert_eq!(
            Scenario::from_toml(&unknown).unwrap_err().to_string(),
            "timeline step 1 refers to unknown relay \"relay9\""
        );
        let dup = EXAMPLE.replace("hosts = [\"bob\"]", "hosts = [\"alice\"]");
        assert!(
            matches!(Scenario::from_toml(&dup).unwrap_err(), ScenarioError::DuplicateName(n) if n == "alice")
        );
        let loss = EXAMPLE.replace("loss_pct = 1", "loss_pct = 101");
        assert!(matches!(
            Scenario::from_toml(&loss).unwrap_err(),
            ScenarioError::Impairment {
                field: "loss_pct",
                ..
            }
        ));
        let order = EXAMPLE.replace("at_ms = 2000", "at_ms = 10");
        assert!(matches!(
            Scenario::from_toml(&order).unwrap_err(),
            ScenarioError::TimelineOrder { index: 1, .. }
        ));
        let nat = EXAMPLE.replace("\"cgnat\"", "\"moon\"");
        assert!(matches!(
            Scenario::from_toml(&nat).unwrap_err(),
            ScenarioError::Parse(_)
        ));
        let empty = EXAMPLE.replace("hosts = [\"bob\"]", "hosts = []");
        assert_eq!(
            Scenario::from_toml(&empty).unwrap_err().to_string(),
            "hosts of site \"mobile\": expected 1 to 200, got 0"
        );
        let name = EXAMPLE.replace("\"home\"", "\"Home Network\"");
        assert!(matches!(
            Scenario::from_toml(&name).unwrap_err(),
            ScenarioError::BadName(_)
        ));
    }
}
