//! The state file: the rule set as JSON, written atomically, and next to
//! it a journal of the load-balancer rule changes made since, one JSON line
//! each, appended and synced per change. Rewriting the whole file on every
//! change made creating N rules cost O(N²) (6 minutes for 10,000); the
//! journal makes a change cost its own size, and is folded into the file
//! when it grows as long as the rule set. Both are read back at start.
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    Endpoint, EndpointProbe, Error, FwRule, LbRule, Result, ServiceKey, StoredFwRule, StoredRule,
};
use crate::datapath::MAX_ENDPOINTS;

/// Files without firewall rules are written as version 1, which every
/// daemon reads; with them, as version 2, so that a daemon from before the
/// firewall refuses the file instead of starting without its rules.
const VERSION: u32 = 1;
const VERSION_FIREWALL: u32 = 2;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// Which journal continues this file (journal_path): one written for
    /// an older file is stale. Absent from files before the journal.
    #[serde(default)]
    generation: u64,
    load_balancers: Vec<Persisted>,
    /// Absent from files written before health checks.
    #[serde(default)]
    endpoint_probes: Vec<EndpointProbe>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    firewall_rules: Vec<PersistedFw>,
}

#[derive(Serialize, Deserialize)]
struct PersistedFw {
    id: u32,
    #[serde(flatten)]
    rule: FwRule,
}

/// What the state file and its journal hold.
#[derive(Debug, Default)]
pub struct State {
    pub rules: Vec<StoredRule>,
    pub probes: Vec<EndpointProbe>,
    pub firewall: Vec<StoredFwRule>,
    /// The file's generation, and how many journal entries followed it.
    pub generation: u64,
    pub journaled: usize,
}

/// One load-balancer rule change, a line of the journal.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    Put(Persisted),
    Delete(ServiceKey),
}

/// The journal that continues the state file `path` of `generation`.
fn journal_path(path: &Path, generation: u64) -> PathBuf {
    path.with_extension(format!("journal.{generation}"))
}

/// A rule with its datapath id, kept so that a restarted daemon adopts the
/// pinned counters and flows under the same ids.
#[derive(Serialize, Deserialize)]
struct Persisted {
    id: u32,
    #[serde(flatten)]
    rule: LbRule,
    /// The datapath's endpoint array, draining endpoints included (indices
    /// are what counters and flows refer to). Absent from older files: the
    /// rule's endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    datapath_endpoints: Vec<Endpoint>,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Persist(format!("{what} {}: {e}", path.display()))
}

/// The rules and probes in `path`, validated; none when the file does not exist.
pub fn load(path: &Path) -> Result<State> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
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
    let mut rules = std::collections::BTreeMap::new();
    for (i, p) in file.load_balancers.into_iter().enumerate() {
        let s = stored(path, &format!("load_balancers[{i}]"), p)?;
        rules.insert(s.rule.key, s);
    }
    let journaled = replay(path, file.generation, &mut rules)?;
    let rules = rules.into_values().collect();
    let probes = file
        .endpoint_probes
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            p.normalize(&format!("endpoint_probes[{i}]"))
                .map_err(|e| io_err("validating", path, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let firewall = file
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
        .collect::<Result<Vec<_>>>()?;
    Ok(State {
        rules,
        probes,
        firewall,
        generation: file.generation,
        journaled,
    })
}

/// A rule read back, validated; its datapath endpoint array when complete.
fn stored(path: &Path, field: &str, p: Persisted) -> Result<StoredRule> {
    p.rule
        .validate(field)
        .map_err(|e| io_err("validating", path, e))?;
    // An array that lost one of the rule's endpoints is not trusted.
    let complete = p.datapath_endpoints.len() <= MAX_ENDPOINTS
        && p.rule.endpoints.iter().all(|e| {
            p.datapath_endpoints
                .iter()
                .any(|d| (d.ip, d.port) == (e.ip, e.port))
        });
    let slots = match complete && !p.datapath_endpoints.is_empty() {
        true => p.datapath_endpoints,
        false => p.rule.endpoints.clone(),
    };
    Ok(StoredRule {
        id: p.id,
        rule: p.rule,
        slots,
    })
}

/// Applies the journal of state file `path` (of `generation`) to `rules`;
/// returns its number of entries. A last line cut short (a crash while
/// appending) is dropped: that change was never acknowledged.
fn replay(
    path: &Path,
    generation: u64,
    rules: &mut std::collections::BTreeMap<ServiceKey, StoredRule>,
) -> Result<usize> {
    let jpath = journal_path(path, generation);
    let text = match fs::read_to_string(&jpath) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("reading", &jpath, e)),
    };
    let mut n = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let entry: Entry = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(_) if !line.ends_with('\n') => break,
            Err(e) => return Err(io_err("parsing", &jpath, format!("line {}: {e}", i + 1))),
        };
        match entry {
            Entry::Put(p) => {
                let s = stored(&jpath, &format!("line {}", i + 1), p)?;
                rules.insert(s.rule.key, s);
            }
            Entry::Delete(key) => {
                rules.remove(&key);
            }
        }
        n += 1;
    }
    Ok(n)
}

fn persisted(s: &StoredRule) -> Persisted {
    Persisted {
        id: s.id,
        rule: s.rule.clone(),
        // Only worth writing when it differs from the rule's list.
        datapath_endpoints: match s.slots == s.rule.endpoints {
            true => Vec::new(),
            false => s.slots.clone(),
        },
    }
}

/// Appends rule changes (`puts` created or updated, `deletes` removed) to
/// the journal of state file `path` of `generation`, and syncs it. A write
/// that fails is cut off again, so the journal never holds half a change
/// before a whole one.
pub fn append<'a>(
    path: &Path,
    generation: u64,
    puts: impl Iterator<Item = &'a StoredRule>,
    deletes: impl Iterator<Item = &'a ServiceKey>,
) -> Result<()> {
    let jpath = journal_path(path, generation);
    let mut lines = Vec::new();
    let entries = puts
        .map(|s| Entry::Put(persisted(s)))
        .chain(deletes.map(|k| Entry::Delete(*k)));
    for e in entries {
        serde_json::to_writer(&mut lines, &e).map_err(|e| io_err("encoding", &jpath, e))?;
        lines.push(b'\n');
    }
    let created = !jpath.exists();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&jpath)
        .map_err(|e| io_err("opening", &jpath, e))?;
    let len = f
        .metadata()
        .map_err(|e| io_err("reading", &jpath, e))?
        .len();
    if let Err(e) = f.write_all(&lines).and_then(|()| f.sync_data()) {
        let _ = f.set_len(len);
        return Err(io_err("writing", &jpath, e));
    }
    if created {
        sync_dir(path)?;
    }
    Ok(())
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing", dir, e))
}

/// Writes the rule set to `path` as `generation` (one more than the file's
/// before) so that a crash leaves either the old file and its journal or
/// the new one: a temporary file, fsync, rename, fsync of the directory.
/// Then the old generation's journal, folded into the file, goes.
pub fn save<'a>(
    path: &Path,
    generation: u64,
    rules: impl Iterator<Item = &'a StoredRule>,
    probes: impl Iterator<Item = &'a EndpointProbe>,
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
        generation,
        load_balancers: rules.map(persisted).collect(),
        endpoint_probes: probes.cloned().collect(),
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
    sync_dir(path)?;
    remove_stale_journals(path, generation);
    Ok(())
}

/// Removes the state file `path` and its journals; returns what it removed.
pub fn remove_all(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    match fs::remove_file(path) {
        Ok(()) => removed.push(path.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for journal in journals(path) {
        fs::remove_file(&journal)?;
        removed.push(journal);
    }
    Ok(removed)
}

/// The journals of state file `path`, of any generation.
fn journals(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem()) else {
        return Vec::new();
    };
    let prefix = format!("{}.journal.", stem.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Removes the journals of generations other than `generation` (folded
/// into the file, or left by a crash after it was written). A failure only
/// leaves a file that is never read.
fn remove_stale_journals(path: &Path, generation: u64) {
    let current = journal_path(path, generation);
    for journal in journals(path).into_iter().filter(|j| *j != current) {
        let _ = fs::remove_file(journal);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::rules::{
        FwAction, FwMatch, IpPrefix, Mode, PortRange, ProbeType, Protocol, Selection, ServiceKey,
    };

    fn ep(last: u8) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(31, 31, 31, last).into(),
            port: 53,
            weight: 3,
        }
    }

    fn rule(port: u16) -> StoredRule {
        let endpoints = vec![ep(1)];
        StoredRule {
            id: u32::from(port),
            slots: endpoints.clone(),
            rule: LbRule {
                key: ServiceKey {
                    ip: Ipv4Addr::new(20, 20, 20, 1).into(),
                    port,
                    port_max: 0,
                    proto: Protocol::Udp,
                },
                name: "dns".into(),
                selection: Selection::Hash,
                mode: Mode::Default,
                endpoints,
                inactivity_timeout: 0,
                monitor: true,
                bgp: false,
                sources: vec![],
                mark: 0,
            },
        }
    }

    fn probe() -> EndpointProbe {
        EndpointProbe {
            ip: Ipv4Addr::new(31, 31, 31, 1).into(),
            probe: ProbeType::Http,
            port: 8080,
            request: "/health".into(),
            response: "OK".into(),
            period_s: 5,
            retries: 3,
            rise: 2,
        }
    }

    fn temp(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("loxilight-persist-{tag}-{}", std::process::id()));
        (dir.clone(), dir.join("state.json"))
    }

    /// Changes appended to the journal come back on top of the file; a
    /// last line cut short by a crash is dropped; a new generation of the
    /// file leaves the old journal unread, and removed.
    #[test]
    fn the_journal_replays_over_the_file() {
        let (dir, path) = temp("journal");
        save(&path, 1, [rule(53), rule(54)].iter(), [].iter(), [].iter()).unwrap();
        let mut changed = rule(54);
        changed.rule.name = "changed".into();
        append(&path, 1, [rule(55), changed.clone()].iter(), [].iter()).unwrap();
        append(&path, 1, [].iter(), [rule(53).rule.key].iter()).unwrap();
        let back = load(&path).unwrap();
        let ids: Vec<u32> = back.rules.iter().map(|s| s.id).collect();
        assert_eq!(ids, [54, 55]);
        assert_eq!(back.rules[0].rule.name, "changed");
        assert_eq!((back.generation, back.journaled), (1, 3));

        // A crash in the middle of an append.
        let journal = journal_path(&path, 1);
        let mut f = OpenOptions::new().append(true).open(&journal).unwrap();
        f.write_all(br#"{"put":{"id":56,"#).unwrap();
        assert_eq!(load(&path).unwrap().journaled, 3, "torn line dropped");
        // Anything else that does not parse is refused, naming the line.
        f.write_all(b"\n").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains("state.journal.1") && err.contains("line 4"),
            "{err}"
        );

        save(&path, 2, back.rules.iter(), [].iter(), [].iter()).unwrap();
        assert!(!journal.exists(), "the folded journal is removed");
        let again = load(&path).unwrap();
        assert_eq!(
            (again.generation, again.journaled, again.rules.len()),
            (2, 0, 2)
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rules_round_trip_and_a_missing_file_is_empty() {
        let (dir, path) = temp("rt");
        let empty = load(&path).unwrap();
        assert!(empty.rules.is_empty() && empty.probes.is_empty());
        let mut draining = rule(54);
        draining.slots.insert(0, ep(9));
        let rules = [rule(53), draining];
        save(&path, 1, rules.iter(), [probe()].iter(), [].iter()).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.rules.len(), 2);
        assert_eq!(
            (back.rules[1].id, &back.rules[1].rule),
            (54, &rules[1].rule)
        );
        assert_eq!(
            back.rules[1].slots, rules[1].slots,
            "a draining entry stays"
        );
        assert_eq!(back.rules[0].slots, rules[0].slots);
        assert_eq!(back.probes, [probe()]);
        assert!(!path.with_extension("json.tmp").exists());
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"selection\": \"hash\"") && text.contains("\"proto\": \"udp\""),
            "{text}"
        );
        assert_eq!(text.matches("datapath_endpoints").count(), 1, "{text}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn files_from_before_health_checks_still_load() {
        let (dir, path) = temp("old");
        fs::create_dir_all(&dir).unwrap();
        let old = r#"{"version":1,"load_balancers":[{"id":3,"key":{"ip":"20.20.20.1","port":80,
            "proto":"tcp"},"name":"","selection":"rr","mode":"default","endpoints":[
            {"ip":"31.31.31.1","port":8080,"weight":1}]}]}"#;
        fs::write(&path, old).unwrap();
        let back = load(&path).unwrap();
        let r = &back.rules[0];
        assert_eq!((r.id, r.rule.monitor, r.rule.bgp), (3, false, false));
        assert_eq!(r.slots, r.rule.endpoints);
        assert!(back.probes.is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ranges_round_trip_and_files_without_them_still_load() {
        let dir =
            std::env::temp_dir().join(format!("loxilight-persist-range-{}", std::process::id()));
        let path = dir.join("state.json");
        let mut range = rule(8080);
        range.rule.key.port_max = 8089;
        save(&path, 1, [range.clone()].iter(), [].iter(), [].iter()).unwrap();
        assert_eq!(load(&path).unwrap().rules[0].rule, range.rule);
        // A file written before ranges existed has no port_max.
        let old = fs::read_to_string(&path)
            .unwrap()
            .replace("\"port_max\": 8089,", "");
        assert!(!old.contains("port_max"), "{old}");
        fs::write(&path, old).unwrap();
        assert_eq!(load(&path).unwrap().rules[0].rule.key.port_max, 0);
        // A range that ends before it starts is refused.
        range.rule.key.port_max = 80;
        save(&path, 1, [range].iter(), [].iter(), [].iter()).unwrap();
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .contains("service.port_max: 8080-80 is not a port range"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_files_are_refused_with_the_path() {
        let (dir, path) = temp("bad");
        fs::create_dir_all(&dir).unwrap();
        for bad in ["{", r#"{"version":9,"load_balancers":[]}"#] {
            fs::write(&path, bad).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(e.contains("state.json"), "{e}");
        }
        let mut r = rule(53);
        r.rule.endpoints.clear();
        save(&path, 1, [r].iter(), [].iter(), [].iter()).unwrap();
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .contains("at least one endpoint"));
        let mut p = probe();
        p.period_s = 99999;
        save(&path, 1, [rule(53)].iter(), [p].iter(), [].iter()).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("endpoint_probes[0].period"), "{e}");
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
        let (dir, path) = temp("fw");
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
        save(&path, 1, [rule(53)].iter(), [].iter(), fw.iter()).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"version\": 2") && text.contains("\"source\": \"10.0.0.0/8\""),
            "{text}"
        );
        let back = load(&path).unwrap();
        assert_eq!(back.rules.len(), 1);
        assert_eq!(back.firewall, fw);

        // A file written before the firewall existed.
        fs::write(&path, r#"{"version":1,"load_balancers":[]}"#).unwrap();
        assert!(load(&path).unwrap().firewall.is_empty());

        let mut bad = fw_rule(0, FwAction::Drop);
        bad.rule.matches.protocol = None;
        save(&path, 1, [].iter(), [].iter(), [bad].iter()).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("firewall_rules[0].match.min_destination_port"),
            "{e}"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
