//! Operations end to end: the Prometheus endpoint after real traffic, the
//! API over TLS and mutual TLS, the plaintext guard and the unix socket.
//! Needs root (namespace labs) and promtool (the prometheus package).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Lab, HTTP_PORT, VIP};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

const PORT: u16 = 2020;
/// The LB's address on the client link: a non-loopback address to listen on.
const LB_IP: &str = "10.77.1.1";

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// The value of the sample `name{labels}` (labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn scrape(lab: &Lab) -> String {
    let addr = "127.0.0.1:11112".parse().unwrap();
    lab.http_get_in(&lab.lb, addr, "/metrics")
        .unwrap_or_else(|e| panic!("scraping http://{addr}/metrics in the LB namespace: {e}"))
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install the prometheus package (`make deps`)")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_report_rules_reasons_mirror_and_api_after_traffic() {
    let mut lab = Lab::new("metrics");
    lab.start_daemon(&[]);
    let endpoints = format!("--endpoints={}", lab.endpoints_arg());
    let create = [
        "create",
        "lb",
        VIP,
        &format!("--tcp={PORT}:{HTTP_PORT}"),
        &endpoints,
        "--name=web",
    ];
    lab.loxicmd_ok(&create);
    assert!(!lab.loxicmd(&create).status.success(), "a duplicate create");
    for i in 0..10 {
        lab.http_get(VIP, PORT)
            .unwrap_or_else(|e| panic!("request {i} to {VIP}:{PORT}: {e}"));
    }
    // A route event for the mirror to count.
    common::ip(&format!(
        "-n {} route add 10.99.0.0/24 via 10.77.2.2",
        lab.lb
    ));

    let mut text = scrape(&lab);
    for _ in 0..50 {
        if sample(&text, r#"loxilight_netlink_events_total{kind="route"}"#) >= Some(1.0) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        text = scrape(&lab);
    }
    promtool_check(&text);

    let rule = r#"name="web",vip="20.20.20.1",port="2020",protocol="tcp""#;
    let value = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
    };
    // Each request is at least a SYN, the request and the ACKs, both ways.
    assert!(value(&format!("loxilight_rule_packets_total{{{rule}}}")) >= 60.0);
    assert!(value(&format!("loxilight_rule_bytes_total{{{rule}}}")) > 0.0);
    assert!(value(&format!("loxilight_rule_active_flows{{{rule}}}")) >= 1.0);
    for b in &lab.backends {
        let ep = format!("{rule},endpoint=\"{}:{HTTP_PORT}\"", b.ip);
        assert!(
            value(&format!("loxilight_endpoint_packets_total{{{ep}}}")) > 0.0,
            "{}",
            b.name
        );
    }
    assert!(value(r#"loxilight_datapath_nat_packets_total{reason="nat_new"}"#) >= 10.0);
    assert!(value(r#"loxilight_datapath_packets_total{reason="fwd"}"#) > 0.0);
    for reason in ["pass_no_route", "pass_not_ip", "pass_mtu", "drop_rewrite"] {
        value(&format!(
            "loxilight_datapath_packets_total{{reason=\"{reason}\"}}"
        ));
        value(&format!(
            "loxilight_datapath_bytes_total{{reason=\"{reason}\"}}"
        ));
    }
    assert!(text
        .lines()
        .any(|l| l.starts_with(r#"loxilight_conntrack_entries{protocol="tcp",state="#)));
    assert_eq!(value("loxilight_rules"), 1.0);
    assert!(value(r#"loxilight_netlink_events_total{kind="route"}"#) >= 1.0);
    value(r#"loxilight_mirror_resyncs_total{scope="all"}"#);
    let api = "/loxilight.v1.LoadBalancerService/CreateLoadBalancer";
    assert_eq!(
        value(&format!(
            "loxilight_api_requests_total{{method=\"{api}\",code=\"OK\"}}"
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "loxilight_api_requests_total{{method=\"{api}\",code=\"ALREADY_EXISTS\"}}"
        )),
        1.0
    );
}

/// A throwaway PKI in the lab's directory: a CA, a server certificate for
/// localhost, 127.0.0.1 and the LB's address, and a client certificate.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let dir = dir.join(name);
        fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        for (who, sans) in [
            ("server", vec!["localhost", "127.0.0.1", LB_IP]),
            ("client", vec!["loxicmd.test"]),
        ] {
            let key = KeyPair::generate().unwrap();
            let params =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            fs::write(dir.join(format!("{who}.pem")), cert.pem()).unwrap();
            fs::write(dir.join(format!("{who}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }
}

#[test]
fn tls_api_answers_clients_that_trust_its_ca() {
    let mut lab = Lab::new("tls");
    let pki = Pki::new(lab.workdir(), "good");
    let other = Pki::new(lab.workdir(), "other");
    let listen = format!("{LB_IP}:11111");
    lab.set_loxicmd_args(&["-s", LB_IP, "--tls-ca", &pki.path("ca.pem")]);
    // Not loopback, but TLS: no --insecure needed.
    lab.start_daemon(&[
        "--listen",
        &listen,
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("server.key"),
    ]);
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP,
        &format!("--tcp={PORT}:{HTTP_PORT}"),
        &format!("--endpoints={}", lab.endpoints_arg()),
    ]);
    assert!(lab.loxicmd_ok(&["get", "lb"]).contains(VIP));

    lab.set_loxicmd_args(&["-s", LB_IP]);
    let out = lab.loxicmd(&["get", "lb"]);
    assert!(!out.status.success(), "plaintext against a TLS daemon");
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("does the daemon serve TLS? give --tls-ca"),
        "{err}"
    );

    lab.set_loxicmd_args(&["-s", LB_IP, "--tls-ca", &other.path("ca.pem")]);
    let err = stderr_of(&lab.loxicmd(&["get", "lb"]));
    assert!(
        err.contains("invalid peer certificate") && err.contains("check --tls-ca"),
        "{err}"
    );

    // The certificate names LB_IP, not this one: --tls-server-name fixes it.
    lab.set_loxicmd_args(&[
        "-s",
        LB_IP,
        "--tls-ca",
        &pki.path("ca.pem"),
        "--tls-server-name",
        "wrong.test",
    ]);
    let err = stderr_of(&lab.loxicmd(&["get", "lb"]));
    assert!(err.contains("not valid for name"), "{err}");
    lab.set_loxicmd_args(&[
        "-s",
        LB_IP,
        "--tls-ca",
        &pki.path("ca.pem"),
        "--tls-server-name",
        "localhost",
    ]);
    lab.loxicmd_ok(&["get", "lb"]);
}

#[test]
fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let mut lab = Lab::new("mtls");
    let pki = Pki::new(lab.workdir(), "good");
    let other = Pki::new(lab.workdir(), "other");
    let with_cert = |p: &Pki, ca: &Pki| {
        vec![
            "--tls-ca".to_owned(),
            ca.path("ca.pem"),
            "--tls-cert".to_owned(),
            p.path("client.pem"),
            "--tls-key".to_owned(),
            p.path("client.key"),
        ]
    };
    let args = with_cert(&pki, &pki);
    lab.set_loxicmd_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    lab.start_daemon(&[
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("server.key"),
        "--tls-client-ca",
        &pki.path("ca.pem"),
    ]);
    lab.loxicmd_ok(&["get", "lb"]);

    lab.set_loxicmd_args(&["--tls-ca", &pki.path("ca.pem")]);
    let out = lab.loxicmd(&["get", "lb"]);
    assert!(!out.status.success(), "a client without a certificate");
    let err = stderr_of(&out);
    assert!(err.contains("requires a client certificate"), "{err}");

    // A certificate from another CA is no better.
    let args = with_cert(&other, &pki);
    lab.set_loxicmd_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!lab.loxicmd(&["get", "lb"]).status.success());
    assert!(lab.daemon_alive());
}

#[test]
fn plaintext_on_a_network_address_needs_insecure() {
    let mut lab = Lab::new("insecure");
    let listen = format!("{LB_IP}:11111");
    let out = lab.run_daemon_to_exit(&["--listen", &listen]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!(
            "refusing to serve the API in plaintext on {listen}"
        )) && err.contains("--insecure"),
        "{err}"
    );

    lab.set_loxicmd_args(&["-s", LB_IP]);
    lab.start_daemon(&["--listen", &listen, "--insecure"]);
    lab.loxicmd_ok(&["get", "lb"]);
}

#[test]
fn unix_socket_serves_loxicmd() {
    let mut lab = Lab::new("unix");
    let socket = lab.workdir().join("api.sock");
    let listen = format!("unix:{}", socket.display());
    // Left over from a daemon that died: nobody answers on it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    lab.set_loxicmd_args(&["-s", &listen]);
    lab.start_daemon(&["--listen", &listen]);
    let meta = fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP,
        &format!("--tcp={PORT}:{HTTP_PORT}"),
        &format!("--endpoints={}", lab.endpoints_arg()),
    ]);
    assert!(lab.loxicmd_ok(&["get", "lb"]).contains(VIP));
    assert_eq!(
        lab.http_get(VIP, PORT).unwrap().len(),
        2,
        "a backend's name"
    );

    // A live socket is not taken over.
    let out = lab.run_daemon_to_exit(&["--listen", &listen]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("another process is serving on it"), "{err}");
    lab.loxicmd_ok(&["get", "lb"]);

    // Only the socket: nothing on the default TCP port.
    lab.set_loxicmd_args(&[]);
    let err = stderr_of(&lab.loxicmd(&["get", "lb"]));
    assert!(
        err.contains("cannot reach loxilight at 127.0.0.1:11111"),
        "{err}"
    );

    let status = lab.stop_daemon().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket is removed on exit");
}
