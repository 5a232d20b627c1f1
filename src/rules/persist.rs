//! The state file: the rule set as JSON, written atomically on every change
//! and read back at start.
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Error, LbRule, Result, StoredRule};

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    load_balancers: Vec<Persisted>,
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
pub fn load(path: &Path) -> Result<Vec<StoredRule>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("reading", path, e)),
    };
    let file: StateFile = serde_json::from_str(&text).map_err(|e| io_err("parsing", path, e))?;
    if file.version != VERSION {
        return Err(io_err(
            "reading",
            path,
            format!("unknown version {}", file.version),
        ));
    }
    file.load_balancers
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
        .collect()
}

/// Writes `rules` to `path` so that a crash leaves either the old file or
/// the new one: a temporary file, fsync, rename, fsync of the directory.
pub fn save<'a>(path: &Path, rules: impl Iterator<Item = &'a StoredRule>) -> Result<()> {
    let file = StateFile {
        version: VERSION,
        load_balancers: rules
            .map(|s| Persisted {
                id: s.id,
                rule: s.rule.clone(),
            })
            .collect(),
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
    use crate::rules::{Endpoint, Mode, Protocol, Selection, ServiceKey};

    fn rule(port: u16) -> StoredRule {
        StoredRule {
            id: u32::from(port),
            rule: LbRule {
                key: ServiceKey {
                    ip: Ipv4Addr::new(20, 20, 20, 1),
                    port,
                    port_max: 0,
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
        assert!(load(&path).unwrap().is_empty());
        let rules = [rule(53), rule(54)];
        save(&path, rules.iter()).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!((back[1].id, &back[1].rule), (54, &rules[1].rule));
        assert!(!path.with_extension("json.tmp").exists());
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"selection\": \"hash\"") && text.contains("\"proto\": \"udp\""),
            "{text}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ranges_round_trip_and_files_without_them_still_load() {
        let dir =
            std::env::temp_dir().join(format!("loxilight-persist-range-{}", std::process::id()));
        let path = dir.join("state.json");
        let mut range = rule(8080);
        range.rule.key.port_max = 8089;
        save(&path, [range.clone()].iter()).unwrap();
        assert_eq!(load(&path).unwrap()[0].rule, range.rule);
        // A file written before ranges existed has no port_max.
        let old = fs::read_to_string(&path)
            .unwrap()
            .replace("\"port_max\": 8089,", "");
        assert!(!old.contains("port_max"), "{old}");
        fs::write(&path, old).unwrap();
        assert_eq!(load(&path).unwrap()[0].rule.key.port_max, 0);
        // A range that ends before it starts is refused.
        range.rule.key.port_max = 80;
        save(&path, [range].iter()).unwrap();
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .contains("service.port_max: 8080-80 is not a port range"));
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
        save(&path, [r].iter()).unwrap();
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .contains("at least one endpoint"));
        fs::remove_dir_all(dir).unwrap();
    }
}
