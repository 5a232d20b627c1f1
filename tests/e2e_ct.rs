//! End-to-end conntrack tests: real TCP and UDP flows through loxilight in a
//! namespace lab, watched with `loxicmd get ct`: TCP through established to
//! time-wait and closed, ageing after a short configured timeout, filters,
//! counts and `delete ct`. Needs root.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{ct_entries, ct_json, Lab, CLIENT_IP, UDP_PORT, VIP};
use serde_json::Value;

/// The VIP's port for the echo service, and the echo servers' port.
const ECHO_VIP_PORT: u16 = 3030;
const ECHO_PORT: u16 = 7070;
/// The VIP's port for the backends' UDP service.
const UDP_VIP_PORT: u16 = 2020;

/// Echo servers on ECHO_PORT in the backends' namespaces: each connection
/// is echoed until the client closes its side, then closed.
struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Echo {
    fn start(lab: &Lab) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = lab
            .backends
            .iter()
            .map(|b| {
                let listener = lab
                    .in_ns(&b.ns, || TcpListener::bind(("0.0.0.0", ECHO_PORT)))
                    .unwrap_or_else(|e| panic!("{}: binding port {ECHO_PORT}: {e}", b.name));
                listener
                    .set_nonblocking(true)
                    .expect("non-blocking listener");
                let stop = stop.clone();
                thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((conn, _)) => {
                                thread::spawn(move || echo(conn));
                            }
                            Err(_) => thread::sleep(Duration::from_millis(10)),
                        }
                    }
                })
            })
            .collect();
        Echo { stop, threads }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn echo(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 1024];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
}

/// A TCP connection from the client namespace to the VIP's echo service.
fn connect(lab: &Lab) -> TcpStream {
    let addr: SocketAddr = format!("{VIP}:{ECHO_VIP_PORT}").parse().unwrap();
    let conn = lab
        .in_ns(&lab.client, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        })
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("read timeout");
    conn
}

/// Sends a line through `conn` and checks that it comes back.
fn ping(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(b"ping\n")?;
    let mut back = [0u8; 5];
    conn.read_exact(&mut back)?;
    assert_eq!(&back, b"ping\n");
    Ok(())
}

fn local_port(conn: &TcpStream) -> u16 {
    conn.local_addr().expect("local address").port()
}

fn field(e: &Value, f: &str) -> String {
    match &e[f] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The states of the entries of the flow from the client's `port`.
fn states(lab: &Lab, port: u16) -> Vec<String> {
    let v = ct_json(lab, &["--ctport", &port.to_string()]);
    ct_entries(&v).iter().map(|e| field(e, "state")).collect()
}

/// Polls `probe` until `ok` holds for what it returns (bounded).
fn wait_until<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl FnMut() -> T,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = probe();
        if ok(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never happened; last seen {seen:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A lab with the daemon (with `config` as its config file, if any) and
/// the echo and UDP services on the VIP.
fn lab(tag: &str, backends: usize, config: Option<&str>) -> (Lab, Echo) {
    let mut lab = Lab::with_backends(tag, backends);
    let echo = Echo::start(&lab);
    match config {
        Some(text) => {
            let path = lab.daemon_log_path().with_file_name("loxilight.toml");
            std::fs::write(&path, text).expect("writing the config file");
            lab.start_daemon(&["--config", path.to_str().unwrap()]);
        }
        None => lab.start_daemon(&[]),
    }
    let eps: Vec<String> = lab.backends.iter().map(|b| format!("{}:1", b.ip)).collect();
    let eps = format!("--endpoints={}", eps.join(","));
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP,
        &format!("--tcp={ECHO_VIP_PORT}:{ECHO_PORT}"),
        &format!("--udp={UDP_VIP_PORT}:{UDP_PORT}"),
        &eps,
    ]);
    (lab, echo)
}

#[test]
fn tcp_flows_go_from_established_to_time_wait_or_closed() {
    let (lab, _echo) = lab("ctstate", 1, None);

    let mut conn = connect(&lab);
    ping(&mut conn).expect("echo through the VIP");
    let port = local_port(&conn);
    assert_eq!(states(&lab, port), ["est", "est"]);

    // Both sides close: FINs each way and their ACKs.
    conn.shutdown(Shutdown::Write).expect("closing our side");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("reading to the server's FIN");
    assert!(rest.is_empty());
    wait_until(
        "the closed flow reaching time-wait",
        || states(&lab, port),
        |s| s == &["time-wait", "time-wait"],
    );

    // A connection reset (SO_LINGER 0) is closed at once.
    let mut conn = connect(&lab);
    ping(&mut conn).expect("echo through the VIP");
    let port = local_port(&conn);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a valid linger struct.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(conn);
    wait_until(
        "the reset flow being closed",
        || states(&lab, port),
        |s| s == &["closed", "closed"],
    );
}

#[test]
fn ageing_removes_an_idle_udp_flow_and_keeps_a_live_one() {
    let config = "[conntrack]\nudp = \"1s\"\nudp_replied = \"2s\"\nsweep_interval = \"200ms\"\n";
    let (lab, _echo) = lab("ctage", 1, Some(config));

    let mut conn = connect(&lab);
    ping(&mut conn).expect("echo through the VIP");
    let tcp_port = local_port(&conn);
    let answer = lab
        .udp_request(VIP, UDP_VIP_PORT, Some(40400))
        .expect("UDP through the VIP");
    assert_eq!(answer, "b1");
    assert_eq!(states(&lab, 40400), ["udp-est", "udp-est"]);

    // Idle for its 2 s timeout, the UDP flow goes; the TCP one (1 h) stays
    // and still works.
    wait_until(
        "the idle UDP flow being aged out",
        || states(&lab, 40400),
        |s| s.is_empty(),
    );
    assert_eq!(states(&lab, tcp_port), ["est", "est"]);
    ping(&mut conn).expect("the TCP flow still works");
    let v = ct_json(&lab, &[]);
    assert!(v["table"]["aged"].as_u64().unwrap_or(0) >= 2, "{v}");
}

#[test]
fn delete_ct_removes_only_the_matching_flows() {
    let (lab, _echo) = lab("ctdel", 2, None);
    // Round robin: the first connection goes to b1, the second to b2.
    let mut to_b1 = connect(&lab);
    ping(&mut to_b1).expect("echo through the VIP");
    let mut to_b2 = connect(&lab);
    ping(&mut to_b2).expect("echo through the VIP");
    let b1 = lab.backend("b1").ip.clone();
    let b2 = lab.backend("b2").ip.clone();
    let flows_via = |ip: &str| ct_entries(&ct_json(&lab, &["--ip", ip])).len();
    assert_eq!((flows_via(&b1), flows_via(&b2)), (2, 2));

    // A bare `delete ct` is refused, naming what is missing.
    let out = lab.loxicmd(&["delete", "ct"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--all"), "{err}");
    assert_eq!(flows_via(&b1) + flows_via(&b2), 4, "nothing was deleted");

    let out = lab.loxicmd_ok(&["delete", "ct", "--ip", &b1]);
    assert_eq!(out.trim(), "Deleted 1 flow (2 entries)");
    assert_eq!((flows_via(&b1), flows_via(&b2)), (0, 2));
    // The other flow carries on, untouched.
    ping(&mut to_b2).expect("the flow via b2 still works");
    assert_eq!(states(&lab, local_port(&to_b2)), ["est", "est"]);

    let out = lab.loxicmd_ok(&["delete", "ct", "--all"]);
    assert!(out.trim().starts_with("Deleted "), "{out}");
    let v = ct_json(&lab, &[]);
    assert_eq!(v["matched"].as_u64(), Some(0), "{v}");
}

#[test]
fn get_ct_filters_counts_and_refuses_bad_filters() {
    let (mut lab, _echo) = lab("ctget", 1, None);
    let mut conn = connect(&lab);
    ping(&mut conn).expect("echo through the VIP");
    let tcp_port = local_port(&conn);
    lab.udp_request(VIP, UDP_VIP_PORT, Some(40500))
        .expect("UDP through the VIP");

    let protos = |args: &[&str]| -> Vec<String> {
        let mut p: Vec<String> = ct_entries(&ct_json(&lab, args))
            .iter()
            .map(|e| field(e, "protocol"))
            .collect();
        p.sort();
        p
    };
    assert_eq!(protos(&[]), ["tcp", "tcp", "udp", "udp"]);
    assert_eq!(protos(&["--proto", "udp"]), ["udp", "udp"]);
    assert_eq!(protos(&["--state", "est"]), ["tcp", "tcp"]);
    assert_eq!(
        protos(&["--proto", "udp", "--state", "est"]),
        ["udp", "udp"]
    );
    assert_eq!(protos(&["--ip", CLIENT_IP]), ["tcp", "tcp", "udp", "udp"]);
    assert_eq!(protos(&["--ctport", &tcp_port.to_string()]), ["tcp", "tcp"]);
    assert_eq!(protos(&["--ctport", &UDP_PORT.to_string()]), ["udp", "udp"]);
    assert!(protos(&["--ip", "10.99.99.99"]).is_empty());

    // The table ends with what matched, by state, and the table's figures.
    let table = lab.loxicmd_ok(&["get", "ct", "--ip", CLIENT_IP]);
    assert!(
        table.contains("Matched 4 entries (2 flows: tcp est 1, udp udp-est 1)"),
        "{table}"
    );
    assert!(table.contains("Table: 4 of 1000000 entries"), "{table}");
    let rows = common::parse_table(&table);
    assert_eq!(rows.len(), 4, "{table}");
    // --count prints the counts only.
    let counted = lab.loxicmd_ok(&["get", "ct", "--count", "--proto", "tcp"]);
    assert!(!counted.contains('|'), "{counted}");
    assert!(
        counted.starts_with("Matched 2 entries (1 flow: tcp est 1)"),
        "{counted}"
    );
    // --limit shows the first entries of all that matched.
    let limited = lab.loxicmd_ok(&["get", "ct", "--limit", "1"]);
    assert_eq!(common::parse_table(&limited).len(), 1, "{limited}");
    assert!(limited.contains("Matched 4 entries") && limited.contains("showing the first 1"));

    let cases: [(&[&str], &str); 8] = [
        (&["--ip", "1.2.3"], "filter.ip"),
        (&["--ctport", "70000"], "filter.port"),
        (&["--ctport", "http"], "--ctport"),
        (&["--proto", "gre"], "filter.protocol"),
        (&["--state", "open"], "filter.state"),
        (&["--proto", "tcp", "--state", "udp-est"], "filter.state"),
        (&["--limit", "20000"], "limit"),
        (&["--limit=-1"], "--limit"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["get", "ct"];
        all.extend_from_slice(args);
        let out = lab.loxicmd(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{all:?} succeeded");
        assert_eq!(err.trim().lines().count(), 1, "{all:?}: {err}");
        assert!(
            err.contains(needle),
            "{all:?}: {err:?} does not name {needle}"
        );
    }
    assert!(lab.daemon_alive(), "the daemon died on bad input");
    ping(&mut conn).expect("the flow still works");
}
