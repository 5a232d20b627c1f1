//! The state file: the rule set as JSON, written atomically on every change
//! and read back at start.
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Error, FwRule, LbRule, Result, StoredFwRule, StoredRule};

/// Files without firewall rules are written as version 1, which every
/// daemon reads; with them, as version 2, so that a daemon from before the
/// firewall refuses the file instead of starting without its rules.
const VERSION: u32 = 1;
const VERSION_FIREWALL: u32 = 2;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    load_balancers: Vec<Persisted>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    firewall_rules: Vec<PersistedFw>,
}

#[derive(Serialize, Deserialize)]
struct PersistedFw {
    id: u32,
    #[serde(flatten)]
    rule: FwRule,
}

/// What the state file holds.
#[derive(Debug, Default)]
pub struct Saved {
    pub load_balancers: Vec<StoredRule>,
    pub firewall_rules: Vec<StoredFwRule>,
}

/// A rule with its datapath id, kept so that a restarted daemon adopts the
/// pinned counters and flows under the same ids.
#[derive(Serialize, Deserialize)]
struct Persisted {
    id: u32,
    #[serde(flatten)]
    rule: LbRule,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Persist(format!("{what} {}: {e}", path.display()))
}

/// The rules in `path`, validated; none when the file does not exist.
pub fn load(path: &Path) -> Result<Saved> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Saved::default()),
        Err(e) => return Err(io_err("reading", path, e)),
    };
    let file: StateFile = serde_json::from_str(&text).map_err(|e| io_err("parsing", path, e))?;
    if file.version != VERSION && file.version != VERSION_FIREWALL {
        return Err(io_err(
            "reading",
            path,
            format!("unknown version {}", file.version),
        ));
    }
    let load_balancers = file
        .load_balancers
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            p.rule
                .validate(&format!("load_balancers[{i}]"))
                .map_err(|e| io_err("validating", path, e))?;
            Ok(StoredRule {
                id: p.id,
                rule: p.rule,
            })
        })
        .collect::<Result<_>>()?;
    let firewall_rules = file
        .firewall_rules
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let f = format!("firewall_rules[{i}]");
            p.rule
                .validate(&format!("{f}.match"), &f)
                .map_err(|e| io_err("validating", path, e))?;
            Ok(StoredFwRule {
                id: p.id,
                rule: p.rule,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Saved {
        load_balancers,
        firewall_rules,
    })
}

/// Writes the rules to `path` so that a crash leaves either the old file or
/// the new one: a temporary file, fsync, rename, fsync of the directory.
pub fn save<'a>(
    path: &Path,
    rules: impl Iterator<Item = &'a StoredRule>,
    firewall: impl Iterator<Item = &'a StoredFwRule>,
) -> Result<()> {
    let firewall_rules: Vec<PersistedFw> = firewall
        .map(|s| PersistedFw {
            id: s.id,
            rule: s.rule.clone(),
        })
        .collect();
    let file = StateFile {
        version: if firewall_rules.is_empty() {
            VERSION
        } else {
            VERSION_FIREWALL
        },
        load_balancers: rules
            .map(|s| Persisted {
                id: s.id,
                rule: s.rule.clone(),
            })
            .collect(),
        firewall_rules,
    };
    let json = serde_json::to_vec_pretty(&file).map_err(|e| io_err("encoding", path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp).map_err(|e| io_err("creating", &tmp, e))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err("writing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err("renaming to", path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing", dir, e))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::rules::{
        Endpoint, FwAction, FwMatch, IpPrefix, Mode, PortRange, Protocol, Selection, ServiceKey,
    };

    fn rule(port: u16) -> StoredRule {
        StoredRule {
            id: u32::from(port),
            rule: LbRule {
                key: ServiceKey {
                    ip: Ipv4Addr::new(20, 20, 20, 1),
                    port,
                    proto: Protocol::Udp,
                },
                name: "dns".into(),
                selection: Selection::Hash,
                mode: Mode::Default,
                endpoints: vec![Endpoint {
                    ip: Ipv4Addr::new(31, 31, 31, 1),
                    port: 53,
                    weight: 3,
                }],
                inactivity_timeout: 0,
            },
        }
    }

    #[test]
    fn rules_round_trip_and_a_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("loxilight-persist-{}", std::process::id()));
        let path = dir.join("state.json");
        assert!(load(&path).unwrap().load_balancers.is_empty());
        let rules = [rule(53), rule(54)];
        save(&path, rules.iter(), [].iter()).unwrap();
        let back = load(&path).unwrap().load_balancers;
        assert_eq!(back.len(), 2);
        assert_eq!((back[1].id, &back[1].rule), (54, &rules[1].rule));
        assert!(!path.with_extension("json.tmp").exists());
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"selection\": \"hash\"") && text.contains("\"proto\": \"udp\""),
            "{text}"
        );
        // Without firewall rules the file stays readable by older daemons.
        assert!(
            text.contains("\"version\": 1") && !text.contains("firewall"),
            "{text}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    fn fw_rule(id: u32, action: FwAction) -> StoredFwRule {
        StoredFwRule {
            id,
            rule: FwRule {
                matches: FwMatch {
                    source: Some(IpPrefix::parse("s", "10.0.0.0/8").unwrap()),
                    destination: None,
                    source_ports: PortRange::ANY,
                    destination_ports: PortRange { min: 80, max: 90 },
                    protocol: Some(6),
                    port_name: Some("eth1".into()),
                    preference: id,
                },
                action,
                record: true,
                mark: Some(7),
            },
        }
    }

    #[test]
    fn firewall_rules_round_trip_and_old_files_still_load() {
        let dir = std::env::temp_dir().join(format!("loxilight-persist-fw-{}", std::process::id()));
        let path = dir.join("state.json");
        let fw = [
            fw_rule(0, FwAction::Drop),
            fw_rule(1, FwAction::Redirect("eth2".into())),
            fw_rule(
                2,
                FwAction::Snat {
                    ip: "192.0.2.1".parse().unwrap(),
                    port: Some(4000),
                },
            ),
            fw_rule(3, FwAction::Masquerade),
        ];
        save(&path, [rule(53)].iter(), fw.iter()).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"version\": 2") && text.contains("\"source\": \"10.0.0.0/8\""),
            "{text}"
        );
        let back = load(&path).unwrap();
        assert_eq!(back.load_balancers.len(), 1);
        assert_eq!(back.firewall_rules, fw);

        // A file written before the firewall existed.
        fs::write(&path, r#"{"version":1,"load_balancers":[]}"#).unwrap();
        assert!(load(&path).unwrap().firewall_rules.is_empty());

        let mut bad = fw_rule(0, FwAction::Drop);
        bad.rule.matches.protocol = None;
        save(&path, [].iter(), [bad].iter()).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("firewall_rules[0].match.min_destination_port"),
            "{e}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_files_are_refused_with_the_path() {
        let dir =
            std::env::temp_dir().join(format!("loxilight-persist-bad-{}", std::process::id()));
        let path = dir.join("state.json");
        fs::create_dir_all(&dir).unwrap();
        for bad in ["{", r#"{"version":9,"load_balancers":[]}"#] {
            fs::write(&path, bad).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(e.contains("state.json"), "{e}");
        }
        let mut r = rule(53);
        r.rule.endpoints.clear();
        save(&path, [r].iter(), [].iter()).unwrap();
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .contains("at least one endpoint"));
        fs::remove_dir_all(dir).unwrap();
    }
}
