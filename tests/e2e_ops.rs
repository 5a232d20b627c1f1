//! End-to-end tests of operations: rules kept across restarts, `save` and
//! `apply`, hitless restarts and `loxilight cleanup`, with the real daemon,
//! loxicmd and traffic in a namespace lab. Needs root.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cell, parse_table, Lab, VIP};
use serde_json::Value;

fn lb_rows(lab: &Lab) -> Vec<Vec<(String, String)>> {
    parse_table(&lab.loxicmd_ok(&["get", "lb"]))
}

fn tc_filters(lab: &Lab, dev: &str) -> String {
    let out = Command::new("tc")
        .args(["-n", &lab.lb, "filter", "show", "dev", dev, "ingress"])
        .output()
        .expect("running tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rules_survive_a_restart_and_counters_go_on() {
    let mut lab = Lab::new("persist");
    lab.start_daemon(&[]);
    let eps = format!("--endpoints={}", lab.endpoints_arg());
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP,
        "--tcp=2020:8080",
        "--udp=2020:9000",
        "--name=web",
        &eps,
    ]);
    for _ in 0..4 {
        lab.http_get(VIP, 2020).expect("HTTP through the VIP");
    }
    let packets = |lab: &Lab| -> u64 {
        lb_rows(lab)
            .iter()
            .filter(|r| cell(r, "PROTO") == "tcp")
            .map(|r| cell(r, "PACKETS").parse::<u64>().unwrap())
            .sum()
    };
    let before = packets(&lab);
    assert!(before > 0);

    lab.stop_daemon();
    lab.start_daemon(&[]);
    let rows = lb_rows(&lab);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows
        .iter()
        .all(|r| cell(r, "NAME") == "web" && cell(r, "EXT IP") == VIP));
    assert!(
        packets(&lab) >= before,
        "counters were reset across the restart"
    );
    lab.http_get(VIP, 2020).expect("HTTP after the restart");
    assert!(lab.udp_request(VIP, 2020, None).is_ok());
    assert!(lab.daemon_log().contains("next start adopts it"));
}

#[test]
fn a_corrupt_state_file_stops_the_start_with_one_line() {
    let lab = Lab::new("badstate");
    std::fs::create_dir_all(lab.state_dir()).unwrap();
    std::fs::write(lab.state_dir().join("state.json"), "{not json").unwrap();
    let out = lab.run_daemon_to_exit(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("state.json"), "{err}");
}

/// A TCP echo server on `port` in backend `ns`, until the lab goes away.
fn echo_server(lab: &Lab, ns: &str, port: u16) {
    let listener = lab
        .in_ns(ns, || TcpListener::bind(("0.0.0.0", port)))
        .expect("binding the echo port");
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

#[test]
fn an_established_flow_keeps_flowing_across_a_restart() {
    let mut lab = Lab::new("hitless");
    lab.set_linux_forwarding(false);
    lab.start_daemon(&[]);
    let b1 = lab.backends[0].ip.clone();
    echo_server(&lab, &lab.backends[0].ns, 7000);
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP,
        "--tcp=7000:7000",
        &format!("--endpoints={b1}:1"),
    ]);

    let vip: SocketAddr = format!("{VIP}:7000").parse().unwrap();
    let mut stream = lab
        .in_ns(&lab.client, || {
            (0..3).find_map(|_| TcpStream::connect_timeout(&vip, Duration::from_secs(2)).ok())
        })
        .expect("connecting through the VIP");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The flow runs on its own thread while this one restarts the daemon.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let flow = std::thread::spawn(move || {
        let (mut errors, mut longest, mut rounds) = (0u32, Duration::ZERO, 0u32);
        let mut last = Instant::now();
        while rx.try_recv().is_err() {
            let mut buf = [0u8; 8];
            if stream.write_all(b"loxilite").is_ok()
                && stream.read_exact(&mut buf).is_ok()
                && &buf == b"loxilite"
            {
                longest = longest.max(last.elapsed());
                last = Instant::now();
                rounds += 1;
            } else {
                errors += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (errors, longest, rounds)
    });
    std::thread::sleep(Duration::from_millis(300));
    lab.stop_daemon();
    std::thread::sleep(Duration::from_millis(300));
    lab.start_daemon(&[]);
    std::thread::sleep(Duration::from_millis(300));
    tx.send(()).unwrap();
    let (errors, longest, rounds) = flow.join().unwrap();
    eprintln!(
        "across the restart: {rounds} round trips, {errors} errors, longest stall {longest:?}"
    );
    assert_eq!(errors, 0);
    assert!(rounds > 10, "only {rounds} round trips");
    // A lost packet would cost a TCP retransmission timeout (>= 200 ms,
    // usually 1 s); the datapath never stops, so there must be none.
    assert!(
        longest < Duration::from_secs(1),
        "the flow stalled for {longest:?}"
    );
}

#[test]
fn save_then_apply_makes_the_rules_match_the_file() {
    let mut lab = Lab::new("apply");
    lab.start_daemon(&[]);
    let (b1, b2) = (lab.backends[0].ip.clone(), lab.backends[1].ip.clone());
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP,
        "--tcp=80:8080",
        &format!("--endpoints={b1}:1"),
    ]);
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP,
        "--tcp=81:8080",
        &format!("--endpoints={b1}:1"),
    ]);
    let file = lab.state_dir().with_file_name("rules.json");
    lab.loxicmd_ok(&["save", "-f", file.to_str().unwrap()]);
    let mut rules: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let lbs = rules["loadBalancers"].as_array_mut().unwrap();
    assert_eq!(lbs.len(), 2);
    assert!(lbs[0].get("counters").is_none(), "save writes no counters");
    // Port 80 gets a second endpoint, port 81 goes, port 82 comes.
    lbs[0]["endpoints"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"ip": b2, "targetPort": 8080, "weight": 1}));
    let mut new = lbs[1].clone();
    new["service"]["port"] = 82.into();
    lbs[1] = new;
    std::fs::write(&file, serde_json::to_string_pretty(&rules).unwrap()).unwrap();
    let f = file.to_str().unwrap();

    let dry = lab.loxicmd_ok(&["apply", "-f", f, "--dry-run"]);
    for line in [
        format!("+ lb {VIP}:82/tcp"),
        format!("~ lb {VIP}:80/tcp"),
        format!("- lb {VIP}:81/tcp"),
        "1 created, 1 updated, 1 deleted, 0 unchanged (would be changed)".into(),
    ] {
        assert!(dry.contains(&line), "{line:?} not in:\n{dry}");
    }
    let ports = |lab: &Lab| {
        lb_rows(lab)
            .iter()
            .map(|r| cell(r, "PORT").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ports(&lab), ["80", "81"], "a dry run changed the rules");

    lab.loxicmd_ok(&["apply", "-f", f]);
    assert_eq!(ports(&lab), ["80", "82"]);
    let eps: Vec<String> = lb_rows(&lab)
        .iter()
        .map(|r| cell(r, "# OF ENDPOINTS").to_owned())
        .collect();
    assert_eq!(eps, ["2", "1"]);
    assert!(lab
        .loxicmd_ok(&["apply", "-f", f])
        .contains("0 created, 0 updated, 0 deleted, 2 unchanged"));
    // The applied rules carry traffic, and survive a restart.
    assert!(lab.http_get(VIP, 82).is_ok());
    lab.stop_daemon();
    lab.start_daemon(&[]);
    assert_eq!(ports(&lab), ["80", "82"]);

    // A bad rule anywhere refuses the whole file, naming it; nothing changes.
    rules["loadBalancers"][1]["service"]["port"] = 0.into();
    std::fs::write(&file, serde_json::to_string(&rules).unwrap()).unwrap();
    let out = lab.loxicmd(&["apply", "-f", f]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("load_balancers[1].service.port"), "{err}");
    assert_eq!(ports(&lab), ["80", "82"]);
    let out = lab.loxicmd(&["apply", "-f", "/nonexistent/rules.json"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("/nonexistent/rules.json")
    );
}

#[test]
fn apply_programs_ten_thousand_rules_in_one_call() {
    let mut lab = Lab::new("apply10k");
    let config = lab.state_dir().with_file_name("loxilight.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "max_services = 16384\n").unwrap();
    lab.start_daemon(&["--config", config.to_str().unwrap()]);
    let b1 = lab.backends[0].ip.clone();
    let rules: Vec<Value> = (0..10_000u32)
        .map(|i| {
            serde_json::json!({
                "service": {"externalIp": format!("20.20.{}.{}", i / 250, i % 250 + 1), "port": 80, "protocol": "tcp"},
                "endpoints": [{"ip": b1, "targetPort": 8080, "weight": 1}],
            })
        })
        .collect();
    let file = lab.state_dir().with_file_name("rules10k.json");
    std::fs::write(
        &file,
        serde_json::json!({ "loadBalancers": rules }).to_string(),
    )
    .unwrap();
    let started = Instant::now();
    let out = lab.loxicmd_ok(&["apply", "-f", file.to_str().unwrap()]);
    eprintln!(
        "apply of 10,000 rules took {:?} (loxicmd included)",
        started.elapsed()
    );
    assert!(
        out.contains("10000 created, 0 updated, 0 deleted, 0 unchanged"),
        "{out}"
    );
    let listed: Value =
        serde_json::from_str(&lab.loxicmd_ok(&["get", "lb", "-o", "json"])).unwrap();
    assert_eq!(listed["loadBalancers"].as_array().unwrap().len(), 10_000);
    assert_eq!(lab.http_get("20.20.39.250", 80).as_deref().ok(), Some("b1"));
}

#[test]
fn cleanup_removes_the_datapath_pins_and_state() {
    let mut lab = Lab::new("cleanup");
    lab.start_daemon(&[]);
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP,
        "--tcp=80:8080",
        &format!("--endpoints={}:1", lab.backends[0].ip.clone()),
    ]);
    lab.stop_daemon();
    assert!(
        tc_filters(&lab, "veth-c").contains("ll_tc_ingress"),
        "stopping detached the datapath"
    );
    assert!(lab.state_dir().join("state.json").exists());

    let out = lab.run_daemon_to_exit(&["cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for dev in ["veth-c", "veth-b1", "veth-b2"] {
        assert!(
            !tc_filters(&lab, dev).contains("ll_tc_ingress"),
            "{dev} still has the datapath"
        );
    }
    assert!(!lab.pin_dir().exists());
    assert!(!lab.state_dir().join("state.json").exists());
    // A start after cleanup begins from nothing.
    lab.start_daemon(&[]);
    assert!(lb_rows(&lab).is_empty());
}
