//! End-to-end tests of the kernel mirror and fast-path forwarding: the real
//! daemon in a namespace lab, changes made with `ip`, state read back with
//! the real loxicmd, and real traffic. Needs root.
mod common;

use std::time::{Duration, Instant};

use common::{cell, ip, parse_table, Lab, HTTP_PORT, UDP_PORT, VIP};

/// Polls `f` every 50 ms until it holds; panics after `secs` seconds.
fn wait_until(lab: &Lab, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            lab.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Rows of `loxicmd get <what>`.
fn rows(lab: &Lab, what: &str) -> Vec<Vec<(String, String)>> {
    parse_table(&lab.loxicmd_ok(&["get", what]))
}

fn has_row(lab: &Lab, what: &str, pred: impl Fn(&[(String, String)]) -> bool) -> bool {
    rows(lab, what).iter().any(|r| pred(r))
}

/// A UDP request that may need a few tries: with Linux forwarding off, the
/// first packet towards an unresolved next hop is lost while the datapath
/// gets it resolved.
fn udp_retry(lab: &Lab, ip: &str) -> Option<String> {
    (0..5).find_map(|_| lab.udp_request(ip, UDP_PORT, None).ok())
}

fn http_retry(lab: &Lab, ip: &str, port: u16) -> Option<String> {
    (0..3).find_map(|_| lab.http_get(ip, port).ok())
}

fn forwards_by_itself(hook: &str) -> Lab {
    let lab = Lab::forwarding_off(hook, hook);
    let eps = format!("--endpoints={}", lab.endpoints_arg());
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP,
        "--tcp=2020:8080",
        "--udp=2020:9000",
        &eps,
    ]);

    // Transit, straight to each backend, IPv4 and IPv6, TCP and UDP.
    for b in &lab.backends {
        for addr in [&b.ip, &b.ip6] {
            assert_eq!(
                udp_retry(&lab, addr).as_deref(),
                Some(b.name.as_str()),
                "UDP to {addr}"
            );
            assert_eq!(
                http_retry(&lab, addr, HTTP_PORT).as_deref(),
                Some(b.name.as_str()),
                "HTTP to {addr}"
            );
        }
    }
    // Load balanced, both protocols, both backends.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(lab.http_get(VIP, 2020).expect("HTTP to the VIP"));
        seen.insert(lab.udp_request(VIP, 2020, None).expect("UDP to the VIP"));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // The daemon did not switch Linux forwarding on to get there.
    let forwarding = lab.in_ns(&lab.lb, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()
            + &std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap()
    });
    assert_eq!(forwarding, "0\n0\n");
    lab
}

#[test]
fn tc_hook_forwards_with_linux_forwarding_off() {
    forwards_by_itself("tc");
}

#[test]
fn xdp_hook_forwards_with_linux_forwarding_off() {
    let mut lab = forwards_by_itself("xdp");
    let xdp_progs = |lab: &Lab| {
        let out = std::process::Command::new("ip")
            .args(["-n", &lab.lb, "link", "show"])
            .output()
            .expect("running ip");
        String::from_utf8_lossy(&out.stdout)
            .matches("prog/xdp")
            .count()
    };
    // Stopping the daemon leaves the datapath in place (restarts are
    // hitless); `loxilight cleanup` takes it off every interface.
    lab.stop_daemon();
    assert_eq!(xdp_progs(&lab), 3);
    let out = lab.run_daemon_to_exit(&["cleanup"]);
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(xdp_progs(&lab), 0);
    assert!(!lab.pin_dir().exists());
}

fn route_via(lab: &Lab, dst: &str, gw: &str) -> bool {
    has_row(lab, "route", |r| {
        cell(r, "DESTINATION") == dst && cell(r, "NEXT HOPS").contains(gw)
    })
}

#[test]
fn route_changes_show_up_and_steer_packets() {
    let lab = Lab::forwarding_off("route", "tc");
    // Both backends answer for one address, so the route decides who does.
    // (HTTP, not UDP: a UDP reply from a wildcard socket would come from
    // the backend's interface address.)
    for b in &lab.backends {
        ip(&format!("-n {} addr add 198.51.100.7/32 dev lo", b.ns));
        ip(&format!(
            "-n {} -6 addr add 2001:db8:77::7/128 dev lo",
            b.ns
        ));
    }
    let cases = [
        (
            "198.51.100.0/24",
            "198.51.100.7",
            ["10.77.2.2", "10.77.3.2"],
            "",
        ),
        (
            "2001:db8:77::/64",
            "2001:db8:77::7",
            ["fd77:2::2", "fd77:3::2"],
            "-6",
        ),
    ];
    for (prefix, target, [gw1, gw2], family) in cases {
        ip(&format!(
            "-n {} {family} route add {prefix} via {gw1}",
            lab.lb
        ));
        wait_until(&lab, &format!("{prefix} via {gw1}"), 5, || {
            route_via(&lab, prefix, gw1)
        });
        assert_eq!(http_retry(&lab, target, HTTP_PORT).as_deref(), Some("b1"));

        ip(&format!(
            "-n {} {family} route replace {prefix} via {gw2}",
            lab.lb
        ));
        wait_until(&lab, &format!("{prefix} via {gw2}"), 5, || {
            route_via(&lab, prefix, gw2)
        });
        assert_eq!(http_retry(&lab, target, HTTP_PORT).as_deref(), Some("b2"));

        ip(&format!("-n {} {family} route del {prefix}", lab.lb));
        wait_until(&lab, &format!("{prefix} gone"), 5, || {
            !has_row(&lab, "route", |r| cell(r, "DESTINATION") == prefix)
        });
        assert!(
            lab.http_get_timeout(target, HTTP_PORT, Duration::from_secs(1))
                .is_err(),
            "{target} answered without a route"
        );
    }
    assert!(
        lab.daemon_log().contains("mirror resynchronised"),
        "IPv6 routes are re-read"
    );
}

#[test]
fn ecmp_and_blackhole_routes_are_mirrored() {
    let lab = Lab::forwarding_off("ecmp", "tc");
    ip(&format!(
        "-n {} route add 198.51.100.0/24 nexthop via 10.77.2.2 nexthop via 10.77.3.2",
        lab.lb
    ));
    ip(&format!("-n {} route add blackhole 203.0.113.0/24", lab.lb));
    wait_until(&lab, "ECMP route", 5, || {
        route_via(&lab, "198.51.100.0/24", "via 10.77.2.2")
            && route_via(&lab, "198.51.100.0/24", "via 10.77.3.2")
    });
    wait_until(&lab, "blackhole route", 5, || {
        has_row(&lab, "route", |r| {
            cell(r, "DESTINATION") == "203.0.113.0/24" && cell(r, "TYPE") == "blackhole"
        })
    });
    // Flows spread over both next hops (each backend answers for the prefix).
    for b in &lab.backends {
        ip(&format!("-n {} addr add 198.51.100.7/32 dev lo", b.ns));
    }
    // Each connection has its own source port, so its own flow hash.
    let seen: std::collections::BTreeSet<String> = (0..32)
        .filter_map(|_| http_retry(&lab, "198.51.100.7", HTTP_PORT))
        .collect();
    assert_eq!(seen.len(), 2, "ECMP used {seen:?}");
}

#[test]
fn neighbour_changes_show_up_and_flushes_are_relearned() {
    let lab = Lab::forwarding_off("neigh", "tc");
    let neigh = |ip: &str, mac: &str| {
        has_row(&lab, "neighbor", |r| {
            cell(r, "IP") == ip && cell(r, "MAC") == mac
        })
    };
    ip(&format!(
        "-n {} neigh add 10.77.2.99 lladdr 02:00:00:00:00:99 dev veth-b1 nud permanent",
        lab.lb
    ));
    wait_until(&lab, "permanent neighbour", 5, || {
        neigh("10.77.2.99", "02:00:00:00:00:99")
    });
    ip(&format!(
        "-n {} neigh change 10.77.2.99 lladdr 02:00:00:00:00:98 dev veth-b1 nud permanent",
        lab.lb
    ));
    wait_until(&lab, "changed neighbour", 5, || {
        neigh("10.77.2.99", "02:00:00:00:00:98")
    });
    ip(&format!("-n {} neigh del 10.77.2.99 dev veth-b1", lab.lb));
    wait_until(&lab, "deleted neighbour", 5, || {
        !has_row(&lab, "neighbor", |r| cell(r, "IP") == "10.77.2.99")
    });

    // Traffic resolves b1; a flush removes it; traffic resolves it again.
    let b1 = &lab.backends[0];
    assert_eq!(udp_retry(&lab, &b1.ip).as_deref(), Some("b1"));
    wait_until(&lab, "b1 learnt", 5, || {
        has_row(&lab, "neighbor", |r| cell(r, "IP") == b1.ip)
    });
    ip(&format!("-n {} neigh flush dev veth-b1", lab.lb));
    wait_until(&lab, "b1 flushed", 5, || {
        !has_row(&lab, "neighbor", |r| cell(r, "IP") == b1.ip)
    });
    assert_eq!(udp_retry(&lab, &b1.ip).as_deref(), Some("b1"));
}

#[test]
fn link_down_and_up_change_where_packets_go() {
    let lab = Lab::forwarding_off("link", "tc");
    let b1 = lab.backends[0].ip.clone();
    let state = |lab: &Lab| {
        rows(lab, "port")
            .into_iter()
            .find(|r| cell(r, "NAME") == "veth-b1")
            .map(|r| cell(&r, "STATE").to_owned())
    };
    assert_eq!(udp_retry(&lab, &b1).as_deref(), Some("b1"));

    ip(&format!("-n {} link set veth-b1 down", lab.lb));
    wait_until(&lab, "veth-b1 down", 5, || {
        state(&lab).as_deref() == Some("down")
    });
    assert!(
        lab.udp_request(&b1, UDP_PORT, None).is_err(),
        "b1 answered through a down link"
    );

    ip(&format!("-n {} link set veth-b1 up", lab.lb));
    wait_until(&lab, "veth-b1 up", 5, || {
        state(&lab).as_deref() == Some("up")
    });
    // The connected route comes back with the link.
    wait_until(&lab, "b1 reachable again", 10, || {
        lab.udp_request(&b1, UDP_PORT, None).is_ok()
    });
}

#[test]
fn an_interface_added_at_run_time_carries_traffic() {
    let mut lab = Lab::forwarding_off("newif", "tc");
    let i = lab.add_backend();
    let b3 = (lab.backends[i].name.clone(), lab.backends[i].ip.clone());
    wait_until(&lab, "veth-b3 attached", 5, || {
        has_row(&lab, "port", |r| {
            cell(r, "NAME") == "veth-b3" && cell(r, "DATAPATH") == "attached"
        })
    });
    assert_eq!(udp_retry(&lab, &b3.1).as_deref(), Some(b3.0.as_str()));
    let eps = format!("--endpoints={}:1", b3.1);
    lab.loxicmd_ok(&["create", "lb", VIP, "--tcp=2020:8080", &eps]);
    assert_eq!(http_retry(&lab, VIP, 2020).as_deref(), Some(b3.0.as_str()));
}

#[test]
fn a_netlink_overrun_is_resynchronised_without_loss() {
    let mut lab = Lab::new("overrun");
    // A tiny event buffer: a burst of route changes must overrun it.
    let config =
        std::env::temp_dir().join(format!("loxilight-overrun-{}.toml", std::process::id()));
    std::fs::write(&config, "netlink_rcvbuf = 4096\n").unwrap();
    lab.start_daemon(&["--config", config.to_str().unwrap()]);
    let _ = std::fs::remove_file(&config);

    let batch = std::env::temp_dir().join(format!("loxilight-routes-{}.batch", std::process::id()));
    let adds: String = (0..3000)
        .map(|i| {
            format!(
                "route add 198.{}.{}.0/24 via 10.77.2.2\n",
                18 + i / 256,
                i % 256
            )
        })
        .collect();
    std::fs::write(&batch, adds).unwrap();
    // Frozen, the daemon cannot read: the burst must overflow its socket.
    lab.signal_daemon(libc::SIGSTOP);
    ip(&format!("-n {} -batch {}", lab.lb, batch.display()));
    lab.signal_daemon(libc::SIGCONT);
    let _ = std::fs::remove_file(&batch);

    let count = |lab: &Lab| {
        rows(lab, "route")
            .iter()
            .filter(|r| cell(r, "DESTINATION").starts_with("198."))
            .count()
    };
    wait_until(&lab, "3000 routes", 30, || count(&lab) == 3000);
    assert!(
        lab.daemon_log().contains("overran"),
        "the burst did not overrun:\n{}",
        lab.daemon_log()
    );
}

#[test]
fn mtu_mac_and_name_changes_are_mirrored() {
    let lab = Lab::forwarding_off("ifchg", "tc");
    let port = |lab: &Lab, name: &str| {
        rows(lab, "port")
            .into_iter()
            .find(|r| cell(r, "NAME") == name)
    };
    ip(&format!("-n {} link set veth-b2 mtu 1400", lab.lb));
    wait_until(&lab, "MTU 1400", 5, || {
        port(&lab, "veth-b2").is_some_and(|r| cell(&r, "MTU") == "1400")
    });
    ip(&format!(
        "-n {} link set veth-b2 address 02:11:22:33:44:55",
        lab.lb
    ));
    wait_until(&lab, "new MAC", 5, || {
        port(&lab, "veth-b2").is_some_and(|r| cell(&r, "MAC") == "02:11:22:33:44:55")
    });
    // Forwarding out of it uses the new MAC: b2 still answers.
    assert_eq!(udp_retry(&lab, &lab.backends[1].ip).as_deref(), Some("b2"));

    ip(&format!("-n {} link set veth-b2 down", lab.lb));
    ip(&format!("-n {} link set veth-b2 name lbside2", lab.lb));
    ip(&format!("-n {} link set lbside2 up", lab.lb));
    wait_until(&lab, "renamed", 5, || {
        port(&lab, "lbside2").is_some_and(|r| cell(&r, "STATE") == "up")
            && port(&lab, "veth-b2").is_none()
    });
    wait_until(&lab, "b2 reachable after the rename", 10, || {
        lab.udp_request(&lab.backends[1].ip, UDP_PORT, None).is_ok()
    });
}
