//! End-to-end tests of endpoint health checks and endpoint changes: the
//! daemon and loxicmd in a namespace lab, probes against servers the tests
//! start and stop in the backend namespaces, real client traffic. Needs root.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{cell, parse_table, stderr_line, Lab, VIP};
use serde_json::Value;

/// The load balancer's external port.
const PORT: u16 = 2020;
/// Where the tests' own servers listen in the backends.
const TARGET: u16 = 7070;
/// Generous: probes run every second, the machine may be loaded.
const DEADLINE: Duration = Duration::from_secs(60);

/// How a NameServer answers.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Plain,
    /// Every other HTTP answer is a 503.
    Flapping,
    /// Over TLS, with a self-signed certificate for a name that is not the
    /// backend's.
    Tls,
}

/// A TCP server on TARGET in one backend namespace that answers with the
/// backend's name: a line for every line received (a long-lived
/// connection), or an HTTP answer to a GET (probes). Stopping it closes the
/// listener, so connects are refused, as with a crashed server.
struct NameServer {
    stop: Arc<AtomicBool>,
    gets: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    let key = rcgen::generate_simple_self_signed(vec!["backend.invalid".to_owned()]).unwrap();
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![key.cert.der().clone()], der.into())
        .unwrap();
    Arc::new(cfg)
}

impl NameServer {
    fn start(lab: &Lab, backend: &str, kind: Kind) -> NameServer {
        let b = lab.backend(backend);
        let listener = lab
            .in_ns(&b.ns, || TcpListener::bind(("0.0.0.0", TARGET)))
            .unwrap_or_else(|e| panic!("{backend}: binding {TARGET}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let tls = (kind == Kind::Tls).then(tls_config);
        let stop = Arc::new(AtomicBool::new(false));
        let gets = Arc::new(AtomicUsize::new(0));
        let (name, s, g) = (b.name.clone(), stop.clone(), gets.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((conn, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let (name, s, g) = (name.clone(), s.clone(), g.clone());
                let flap = kind == Kind::Flapping;
                match &tls {
                    Some(cfg) => {
                        let tls = rustls::ServerConnection::new(cfg.clone()).unwrap();
                        let conn = rustls::StreamOwned::new(tls, conn);
                        thread::spawn(move || serve(conn, &name, &s, &g, flap));
                    }
                    None => {
                        thread::spawn(move || serve(conn, &name, &s, &g, flap));
                    }
                }
            }
        });
        NameServer {
            stop,
            gets,
            thread: Some(thread),
        }
    }

    /// HTTP GETs answered (the probes).
    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(conn: impl Read + Write, name: &str, stop: &AtomicBool, gets: &AtomicUsize, flap: bool) {
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) {
        match conn.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.starts_with("GET ") => {
                let n = gets.fetch_add(1, Ordering::SeqCst);
                let status = if flap && n % 2 == 1 {
                    "503 Unavailable"
                } else {
                    "200 OK"
                };
                let w = conn.get_mut();
                let _ = write!(
                    w,
                    "HTTP/1.0 {status}\r\nContent-Length: {}\r\n\r\n{name}",
                    name.len()
                );
                let _ = w.flush();
                return;
            }
            Ok(_) => {
                if writeln!(conn.get_mut(), "{name}").is_err() {
                    return;
                }
                line.clear();
            }
            // A read timeout keeps a partial line: only check the stop flag.
            Err(_) => {}
        }
    }
}

/// A long-lived connection from the client to the VIP.
struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open(lab: &Lab) -> Conn {
        let addr = SocketAddr::new(VIP.parse().unwrap(), PORT);
        let s = lab
            .in_ns(&lab.client, || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            })
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Conn(BufReader::new(s))
    }

    /// Who answers on this connection now.
    fn ask(&mut self) -> String {
        writeln!(self.0.get_mut(), "who").expect("writing on the connection");
        let mut line = String::new();
        self.0
            .read_line(&mut line)
            .expect("reading on the connection");
        assert!(line.ends_with('\n'), "connection closed: {line:?}");
        line.trim().to_owned()
    }
}

/// Who answers a new connection.
fn new_flow(lab: &Lab) -> String {
    Conn::open(lab).ask()
}

fn new_flows(lab: &Lab, n: usize) -> Vec<String> {
    (0..n).map(|_| new_flow(lab)).collect()
}

fn lb_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["create", "lb", VIP];
    v.extend_from_slice(extra);
    v
}

fn tcp_map() -> String {
    format!("--tcp={PORT}:{TARGET}")
}

/// The probe of `ip` in `get endpoint -o json`.
fn probe_state(lab: &Lab, ip: &str) -> Value {
    let out = lab.loxicmd_ok(&["get", "endpoint", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["probes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["ip"] == ip).cloned())
        .unwrap_or_else(|| panic!("no probe of {ip}: {out}"))
}

/// The STATE column of `get lb -o wide` for each endpoint.
fn lb_states(lab: &Lab) -> Vec<(String, String)> {
    parse_table(&lab.loxicmd_ok(&["get", "lb", "-o", "wide"]))
        .iter()
        .filter(|r| !cell(r, "ENDPOINT").is_empty())
        .map(|r| (cell(r, "ENDPOINT").to_owned(), cell(r, "STATE").to_owned()))
        .collect()
}

/// Polls until `ip`'s probe is in `state`; returns how long that took.
fn wait_state(lab: &Lab, ip: &str, state: &str) -> Duration {
    let start = Instant::now();
    loop {
        let p = probe_state(lab, ip);
        if p["state"] == state {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{ip} not {state} after {DEADLINE:?}: {p}\n{}",
            lab.daemon_log()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// A lab with the daemon running and a NameServer in each backend.
fn lab_with_servers(tag: &str) -> (Lab, Vec<NameServer>) {
    let mut lab = Lab::new(tag);
    lab.start_daemon(&[]);
    let servers = ["b1", "b2"]
        .iter()
        .map(|b| NameServer::start(&lab, b, Kind::Plain))
        .collect();
    (lab, servers)
}

#[test]
fn a_stopped_backend_is_taken_out_and_comes_back() {
    let (mut lab, mut servers) = lab_with_servers("hcdown");
    let (b1, b2) = (lab.backends[0].ip.clone(), lab.backends[1].ip.clone());
    for ip in [&b1, &b2] {
        lab.loxicmd_ok(&[
            "create",
            "endpoint",
            ip,
            "--probetype=http",
            &format!("--probeport={TARGET}"),
            "--probereq=/health",
            "--proberesp=b",
            "--period=1",
            "--retries=2",
            "--rise=2",
        ]);
    }
    let eps = format!("--endpoints={b1}:1,{b2}:1");
    lab.loxicmd_ok(&lb_args(&[&tcp_map(), &eps, "--monitor"]));
    let mut flows = new_flows(&lab, 4);
    flows.sort();
    assert_eq!(flows, ["b1", "b1", "b2", "b2"]);

    // b2's server dies: probes fail, b2 goes down, new flows go to b1 only.
    servers[1].stop();
    let took = wait_state(&lab, &b2, "down");
    eprintln!("b2 marked down {took:?} after its server stopped (period 1 s, retries 2)");
    assert_eq!(
        lb_states(&lab),
        [(b1.clone(), "up".into()), (b2.clone(), "down".into())]
    );
    assert!(probe_state(&lab, &b2)["lastError"]
        .as_str()
        .unwrap()
        .contains("refused"));
    assert_eq!(new_flows(&lab, 6), ["b1"; 6]);
    let up = |ip: &str| {
        let endpoint = format!("endpoint=\"{ip}:{TARGET}\"");
        metric(&lab, &["loxilight_endpoint_up", &endpoint])
    };
    assert_eq!((up(&b1), up(&b2)), (vec![1], vec![0]));

    // b2 back: up after `rise` good probes, and it gets flows again.
    servers[1] = NameServer::start(&lab, "b2", Kind::Plain);
    let took = wait_state(&lab, &b2, "up");
    eprintln!("b2 back up {took:?} after its server restarted (rise 2)");
    let flows = new_flows(&lab, 6);
    assert!(flows.contains(&"b2".to_owned()), "{flows:?}");

    // The probes are kept across a restart.
    lab.stop_daemon();
    lab.start_daemon(&[]);
    let p = probe_state(&lab, &b1);
    assert_eq!(
        (&p["probeType"], &p["port"], &p["request"], &p["configured"]),
        (
            &"http".into(),
            &TARGET.into(),
            &"/health".into(),
            &true.into()
        )
    );
    lab.loxicmd_ok(&["delete", "endpoint", &b1]);
    // Without its own probe, b1 is probed by the rule's default TCP connect.
    let p = probe_state(&lab, &b1);
    assert_eq!(
        (&p["probeType"], &p["configured"]),
        (&"tcp".into(), &false.into())
    );
}

#[test]
fn a_flapping_endpoint_does_not_go_down() {
    let mut lab = Lab::new("hcflap");
    lab.start_daemon(&[]);
    let server = NameServer::start(&lab, "b1", Kind::Flapping);
    let b1 = lab.backends[0].ip.clone();
    lab.loxicmd_ok(&[
        "create",
        "endpoint",
        &b1,
        "--probetype=http",
        &format!("--probeport={TARGET}"),
        "--period=1",
        "--retries=2",
    ]);
    let eps = format!("--endpoints={b1}:1");
    lab.loxicmd_ok(&lb_args(&[&tcp_map(), &eps, "--monitor"]));
    // Every other probe fails, never two in a row: b1 must stay up.
    let start = Instant::now();
    while server.gets() < 10 {
        assert!(start.elapsed() < DEADLINE, "only {} probes", server.gets());
        assert_eq!(probe_state(&lab, &b1)["state"], "up");
        thread::sleep(Duration::from_millis(200));
    }
    let p = probe_state(&lab, &b1);
    assert_eq!(p["state"], "up", "{p}");
    assert!(p["lastError"].as_str().unwrap().contains("503"), "{p}");
    assert_eq!(new_flow(&lab), "b1");
}

#[test]
fn ping_and_udp_probes_see_real_answers() {
    let mut lab = Lab::new("hcprobes");
    lab.start_daemon(&[]);
    let b1 = lab.backends[0].ip.clone();
    let b1_6 = lab.backends[0].ip6.clone();
    let b2 = lab.backends[1].ip.clone();
    // Nobody has these addresses on b1's link: no echo reply ever comes.
    let (nobody, nobody6) = ("10.77.2.99", "fd77:2::99");
    for (ip, args) in [
        (b1.as_str(), vec!["--probetype=ping", "--period=1"]),
        (
            nobody,
            vec!["--probetype=ping", "--period=1", "--retries=1"],
        ),
        // ICMPv6 echo.
        (b1_6.as_str(), vec!["--probetype=ping", "--period=1"]),
        (
            nobody6,
            vec!["--probetype=ping", "--period=1", "--retries=1"],
        ),
        // The lab's UDP servers answer with their name.
        (
            b2.as_str(),
            vec![
                "--probetype=udp",
                "--probeport=9000",
                "--probereq=hello",
                "--proberesp=b2",
                "--period=1",
            ],
        ),
    ] {
        let mut cmd = vec!["create", "endpoint", ip];
        cmd.extend(args);
        lab.loxicmd_ok(&cmd);
    }
    wait_state(&lab, nobody, "down");
    wait_state(&lab, nobody6, "down");
    // b1's echoes reach it over IPv6 (the probes of b1 stay up, below).
    let b1_ns = lab.backends[0].ns.clone();
    let start = Instant::now();
    while lab.icmp6_echoes_received(&b1_ns) < 2 {
        assert!(start.elapsed() < DEADLINE, "no ICMPv6 probes reached b1");
        thread::sleep(Duration::from_millis(100));
    }
    // Up from the start, so wait for a probe to have answered: the counters
    // of the lab's UDP server, and the absence of errors.
    let start = Instant::now();
    while lab.backends[1].udp_hits() < 3 {
        assert!(start.elapsed() < DEADLINE, "no UDP probes reached b2");
        thread::sleep(Duration::from_millis(100));
    }
    for ip in [&b1, &b1_6, &b2] {
        let p = probe_state(&lab, ip);
        assert_eq!(
            (&p["state"], &p["lastError"]),
            (&"up".into(), &"".into()),
            "{p}"
        );
    }
    // A closed UDP port answers with an ICMP port unreachable.
    lab.loxicmd_ok(&[
        "create",
        "endpoint",
        &b2,
        "--probetype=udp",
        "--probeport=9001",
        "--period=1",
    ]);
    wait_state(&lab, &b2, "down");
    assert!(probe_state(&lab, &b2)["lastError"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
}

#[test]
fn https_probes_take_any_certificate_and_check_the_body() {
    let mut lab = Lab::new("hctls");
    lab.start_daemon(&[]);
    let server = NameServer::start(&lab, "b1", Kind::Tls);
    let b1 = lab.backends[0].ip.clone();
    let probe = |resp: &str| {
        lab.loxicmd_ok(&[
            "create",
            "endpoint",
            &b1,
            "--probetype=https",
            &format!("--probeport={TARGET}"),
            &format!("--proberesp={resp}"),
            "--period=1",
            "--retries=1",
        ]);
    };
    // A self-signed certificate for another name: still up.
    probe("b1");
    let start = Instant::now();
    while server.gets() < 2 {
        assert!(start.elapsed() < DEADLINE, "no https probe got through");
        thread::sleep(Duration::from_millis(100));
    }
    let p = probe_state(&lab, &b1);
    assert_eq!(
        (&p["state"], &p["lastError"]),
        (&"up".into(), &"".into()),
        "{p}"
    );
    // The body is checked.
    probe("nope");
    wait_state(&lab, &b1, "down");
    let err = probe_state(&lab, &b1)["lastError"].clone();
    assert!(err.as_str().unwrap().contains("does not contain"), "{err}");
}

#[test]
fn attached_and_detached_endpoints_leave_open_connections_alone() {
    let (lab, _servers) = lab_with_servers("hcattach");
    let (b1, b2) = (lab.backends[0].ip.clone(), lab.backends[1].ip.clone());
    let only_b1 = format!("--endpoints={b1}:1");
    lab.loxicmd_ok(&lb_args(&[&tcp_map(), &only_b1]));
    let mut open = Conn::open(&lab);
    assert_eq!(open.ask(), "b1");

    // The identical rule again is refused, as before.
    let out = lab.loxicmd(&lb_args(&[&tcp_map(), &only_b1]));
    assert!(!out.status.success());
    assert!(stderr_line(&out).contains("already exists"), "{out:?}");

    let attach = format!("--attachEP={b2}:1");
    assert!(lab
        .loxicmd_ok(&lb_args(&[&tcp_map(), &attach]))
        .contains("Updated lb"));
    assert_eq!(open.ask(), "b1", "the open connection keeps its backend");
    assert!(lab
        .loxicmd_ok(&lb_args(&[&tcp_map(), &attach]))
        .contains("Unchanged lb"));
    let mut flows = new_flows(&lab, 4);
    flows.sort();
    assert_eq!(flows, ["b1", "b1", "b2", "b2"]);

    // b1 detached: it drains. The open connection still works on b1, new
    // ones go to b2 only.
    lab.loxicmd_ok(&lb_args(&[&tcp_map(), &format!("--detachEP={b1}")]));
    assert_eq!(new_flows(&lab, 4), ["b2"; 4]);
    assert_eq!(open.ask(), "b1", "a draining endpoint's connection goes on");
    let wide = lab.loxicmd_ok(&["get", "lb", "-o", "wide"]);
    assert!(
        !wide.contains(&b1),
        "a detached endpoint is not listed: {wide}"
    );

    // A new list with Create: an update too; b1 comes back at its old index.
    let both = format!("--endpoints={b1}:1,{b2}:3");
    lab.loxicmd_ok(&lb_args(&[&tcp_map(), &both]));
    assert_eq!(open.ask(), "b1");
    let mut flows = new_flows(&lab, 8);
    flows.sort();
    assert_eq!(flows.iter().filter(|f| *f == "b2").count(), 6, "{flows:?}");
}

#[test]
fn bad_endpoint_input_is_refused_naming_the_field() {
    let mut lab = Lab::new("hcbad");
    lab.start_daemon(&[]);
    for (args, expected) in [
        (vec!["1.2.3"], "probe.ip"),
        (vec!["10.77.2.2", "--probetype=icmp"], "probe.probe_type"),
        (vec!["10.77.2.2", "--probetype=tcp"], "probe.port"),
        (vec!["10.77.2.2", "--probeport=80"], "probe.port"),
        (vec!["10.77.2.2", "--period=99999"], "probe.period"),
        (vec!["10.77.2.2", "--retries=1000"], "probe.retries"),
        (
            vec!["10.77.2.2", "--probetype=http", "--probereq=health"],
            "probe.request",
        ),
        (vec!["10.77.2.2", "--retries=x"], "--retries"),
    ] {
        let mut cmd = vec!["create", "endpoint"];
        cmd.extend(args.iter());
        let out = lab.loxicmd(&cmd);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = stderr_line(&out);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let out = lab.loxicmd(&["delete", "endpoint", "10.77.2.2"]);
    assert!(stderr_line(&out).contains("not found"), "{out:?}");
    // Attaching to a rule that does not exist.
    let out = lab.loxicmd(&lb_args(&[&tcp_map(), "--attachEP=10.77.2.2:1"]));
    assert!(stderr_line(&out).contains("not found"), "{out:?}");
    let out = lab.loxicmd(&lb_args(&[&tcp_map(), "--attachEP=10.77.2.2:0"]));
    assert!(stderr_line(&out).contains("--attachEP"), "{out:?}");
    // Nothing was stored.
    let out = lab.loxicmd_ok(&["get", "endpoint", "-o", "json"]);
    assert!(!out.contains("10.77.2.2"), "{out}");
}

/// The daemon's metrics.
fn scrape(lab: &Lab) -> String {
    let addr = "127.0.0.1:11112".parse().unwrap();
    lab.http_get_in(&lab.lb, addr, "/metrics")
        .unwrap_or_else(|e| panic!("scraping {addr}/metrics: {e}"))
}

/// The values of the metric lines that contain every one of `parts`.
fn metric(lab: &Lab, parts: &[&str]) -> Vec<u64> {
    scrape(lab)
        .lines()
        .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .collect()
}

/// Packets the datapath dropped for `reason`.
fn dropped(lab: &Lab, reason: &str) -> u64 {
    let reason = format!("reason=\"{reason}\"");
    metric(lab, &["loxilight_datapath_packets_total", &reason])
        .iter()
        .sum()
}

#[test]
fn sources_limit_which_clients_reach_the_service() {
    let (mut lab, _servers) = lab_with_servers("hcsrc");
    let eps = format!("--endpoints={}", lab.endpoints_arg());
    // The client (10.77.1.2) is not in the list: its SYNs are dropped.
    lab.loxicmd_ok(&lb_args(&[
        &tcp_map(),
        &eps,
        "--sources=10.99.0.0/16,10.77.1.3",
    ]));
    let addr = SocketAddr::new(VIP.parse().unwrap(), PORT);
    let refused = lab.in_ns(&lab.client, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
    });
    assert!(refused.is_err(), "a client outside the sources got through");
    assert!(dropped(&lab, "drop_source") > 0);
    let out = lab.loxicmd_ok(&["get", "lb", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["loadBalancers"][0]["sources"],
        serde_json::json!(["10.99.0.0/16", "10.77.1.3/32"])
    );

    // The client's subnet added (an update of the rule): it gets through.
    lab.loxicmd_ok(&lb_args(&[
        &tcp_map(),
        &eps,
        "--sources=10.99.0.0/16,10.77.1.0/24",
    ]));
    assert!(["b1", "b2"].contains(&new_flow(&lab).as_str()));
    // Kept across a restart.
    lab.stop_daemon();
    lab.start_daemon(&[]);
    let out = lab.loxicmd_ok(&["get", "lb", "-o", "json"]);
    assert!(out.contains("10.77.1.0/24"), "{out}");
    assert!(["b1", "b2"].contains(&new_flow(&lab).as_str()));

    // Bad prefixes are refused naming the field.
    for (bad, why) in [("10.77.1.2/24", "host bits"), ("10.77.1.0/40", "0-32")] {
        let out = lab.loxicmd(&lb_args(&[&tcp_map(), &eps, &format!("--sources={bad}")]));
        let err = stderr_line(&out);
        assert!(
            err.contains("load_balancer.sources[0]") && err.contains(why),
            "{err}"
        );
    }
    let out = lab.loxicmd(&lb_args(&[&tcp_map(), &eps, "--mark=-1"]));
    assert!(stderr_line(&out).contains("--mark"), "{out:?}");
}

/// Runs `nft ARGS` in the LB namespace.
fn nft(lab: &Lab, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.lb, "nft"])
        .args(args)
        .output()
        .expect("running nft");
    assert!(out.status.success(), "nft {args:?}: {}", stderr_line(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Packets Linux forwarded in the LB namespace with skb->mark 77, counted
/// by an nftables rule in the forward hook.
fn marked_packets(lab: &Lab) -> u64 {
    let text = nft(lab, &["list", "chain", "inet", "llmark", "counting"]);
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "packets")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or_else(|| panic!("no counter: {text}"))
}

/// A connection attempt to the VIP that is not expected to complete.
fn try_connect(lab: &Lab) {
    let addr = SocketAddr::new(VIP.parse().unwrap(), PORT);
    let _ = lab.in_ns(&lab.client, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
    });
}

#[test]
fn mark_is_set_on_the_services_packets() {
    // Packets the datapath redirects skip netfilter, so the mark is made
    // visible on packets it hands to Linux: b1's interface is left without
    // the datapath, so a translated SYN to b1 goes to Linux (reason
    // pass_not_managed), which forwards it through the forward hook.
    let mut lab = Lab::new("hcmark");
    lab.start_daemon(&["--interfaces=veth-c,veth-b2"]);
    let b1 = lab.backends[0].ip.clone();
    let eps = format!("--endpoints={b1}:1");
    lab.loxicmd_ok(&lb_args(&[&tcp_map(), &eps]));
    nft(&lab, &["add", "table", "inet", "llmark"]);
    let hook = "{ type filter hook forward priority 0; }";
    nft(&lab, &["add", "chain", "inet", "llmark", "counting", hook]);
    let rule = [
        "add", "rule", "inet", "llmark", "counting", "ip", "daddr", &b1, "tcp", "dport", "7070",
        "meta", "mark", "77", "counter",
    ];
    nft(&lab, &rule);
    try_connect(&lab);
    assert_eq!(marked_packets(&lab), 0, "no mark yet");

    lab.loxicmd_ok(&lb_args(&[&tcp_map(), &eps, "--mark=77"]));
    try_connect(&lab);
    let n = marked_packets(&lab);
    assert!(n >= 1, "{n} marked packets");
    let out = lab.loxicmd_ok(&["get", "lb", "-o", "json"]);
    assert!(out.contains("\"mark\": 77"), "{out}");
}
