//! Network-namespace lab for end-to-end tests.
//!
//! A [`Lab`] is a client namespace, a load-balancer namespace and N backend
//! namespaces, wired with veth pairs through the LB (which forwards):
//!
//! ```text
//!  client 10.77.1.2 --- 10.77.1.1 [ LB ] 10.77.2.1 --- 10.77.2.2 b1
//!                                        10.77.3.1 --- 10.77.3.2 b2 ...
//! ```
//!
//! Every link also has IPv6, fd77:<n>::1 on the LB side and fd77:<n>::2 on the
//! other (no DAD, so addresses work at once).

// Each test binary that includes this module uses only some of its helpers.
#![allow(dead_code)]
//!
//! Each backend serves HTTP on [`HTTP_PORT`] and a UDP echo on [`UDP_PORT`], both
//! answering with the backend's name ("b1", ...). Everything (namespaces, daemon,
//! servers, bpffs pins, temp files) is torn down by `Drop`, also when a test panics.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub const VIP: &str = "20.20.20.1";
pub const CLIENT_IP: &str = "10.77.1.2";
pub const HTTP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 9000;
/// The daemon's default API port (`--listen 127.0.0.1:11111`).
pub const API_PORT: u16 = 11111;

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

static LAB_COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct Backend {
    /// "b1", "b2", ...: also what its servers answer.
    pub name: String,
    pub ns: String,
    pub ip: String,
    pub ip6: String,
    http_hits: Arc<AtomicUsize>,
    udp_hits: Arc<AtomicUsize>,
}

impl Backend {
    fn new(prefix: &str, i: usize) -> Backend {
        Backend {
            name: format!("b{i}"),
            ns: format!("{prefix}-b{i}"),
            ip: format!("10.77.{}.2", i + 1),
            ip6: format!("fd77:{}::2", i + 1),
            http_hits: Arc::default(),
            udp_hits: Arc::default(),
        }
    }

    /// HTTP requests this backend has answered.
    pub fn http_hits(&self) -> usize {
        self.http_hits.load(Ordering::SeqCst)
    }

    /// UDP datagrams this backend has answered.
    pub fn udp_hits(&self) -> usize {
        self.udp_hits.load(Ordering::SeqCst)
    }
}

pub struct Lab {
    pub client: String,
    pub lb: String,
    pub backends: Vec<Backend>,
    prefix: String,
    /// Namespaces created so far, deleted on drop.
    namespaces: Vec<String>,
    workdir: PathBuf,
    pin_dir: PathBuf,
    daemon: Option<Child>,
    api_port: u16,
    /// Global loxicmd options for every call, the readiness probe included.
    loxicmd_args: Vec<String>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl Lab {
    /// A lab with two backends.
    pub fn new(tag: &str) -> Lab {
        Lab::with_backends(tag, 2)
    }

    /// A lab with two backends, Linux forwarding off in the LB (so the
    /// datapath must forward everything) and the daemon running on `hook`
    /// ("tc" or "xdp").
    pub fn forwarding_off(tag: &str, hook: &str) -> Lab {
        let mut lab = Lab::new(tag);
        lab.set_linux_forwarding(false);
        if hook == "xdp" {
            lab.prepare_for_xdp();
        }
        lab.start_daemon(&["--hook", hook]);
        lab
    }

    /// `tag` names the namespaces (`ll-<tag>-<pid>-<n>-<role>`) for debugging.
    pub fn with_backends(tag: &str, backends: usize) -> Lab {
        assert!((1..=200).contains(&backends), "1-200 backends");
        assert!(
            !tag.is_empty() && tag.chars().all(|c| c.is_ascii_alphanumeric()),
            "lab tags are alphanumeric: {tag:?}"
        );
        if let Err(reason) = precheck() {
            panic!("this test needs root and network namespaces: {reason}");
        }
        let id = format!(
            "{}-{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let prefix = format!("ll-{tag}-{id}");
        let workdir = std::env::temp_dir().join(format!("loxilight-{prefix}"));
        fs::create_dir_all(&workdir).expect("creating the lab's temp dir");
        let mut lab = Lab {
            client: format!("{prefix}-c"),
            lb: format!("{prefix}-l"),
            backends: (1..=backends).map(|i| Backend::new(&prefix, i)).collect(),
            prefix,
            namespaces: Vec::new(),
            workdir,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/loxilight-test-{id}")),
            daemon: None,
            api_port: API_PORT,
            loxicmd_args: Vec::new(),
            stop: Arc::default(),
            servers: Vec::new(),
        };
        // `lab` already owns what is created, so a failure here still tears down.
        lab.build_network();
        lab.start_servers();
        lab
    }

    pub fn backend(&self, name: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// `IP:1,IP:1,...` for `loxicmd create lb --endpoints=`.
    pub fn endpoints_arg(&self) -> String {
        let eps: Vec<String> = self
            .backends
            .iter()
            .map(|b| format!("{}:1", b.ip))
            .collect();
        eps.join(",")
    }

    fn build_network(&mut self) {
        let lb = self.lb.clone();
        let mut all = vec![self.client.clone(), lb.clone()];
        all.extend(self.backends.iter().map(|b| b.ns.clone()));
        for ns in all {
            self.add_namespace(&ns);
        }
        self.wire(&self.client.clone(), "veth-c", 1);
        for (i, b) in self.backends.iter().enumerate() {
            self.wire(&b.ns, &format!("veth-{}", b.name), i + 2);
        }
        self.set_linux_forwarding(true);
    }

    fn add_namespace(&mut self, ns: &str) {
        ip(&format!("netns add {ns}"));
        self.namespaces.push(ns.to_owned());
        ip(&format!("-n {ns} link set lo up"));
    }

    /// A veth pair between `ns` (eth0) and the LB (`lb_if`) on subnet `net`.
    /// Veths are created inside the namespaces, so their names never clash
    /// with other labs or the host.
    fn wire(&self, ns: &str, lb_if: &str, net: usize) {
        let lb = &self.lb;
        ip(&format!(
            "-n {ns} link add eth0 type veth peer name {lb_if} netns {lb}"
        ));
        ip(&format!("-n {ns} addr add 10.77.{net}.2/24 dev eth0"));
        ip(&format!("-n {lb} addr add 10.77.{net}.1/24 dev {lb_if}"));
        ip(&format!("-n {ns} addr add fd77:{net}::2/64 dev eth0 nodad"));
        ip(&format!(
            "-n {lb} addr add fd77:{net}::1/64 dev {lb_if} nodad"
        ));
        ip(&format!("-n {ns} link set eth0 up"));
        ip(&format!("-n {lb} link set {lb_if} up"));
        ip(&format!("-n {ns} route add default via 10.77.{net}.1"));
        ip(&format!("-n {ns} -6 route add default via fd77:{net}::1"));
    }

    /// Turns Linux's own IPv4 and IPv6 forwarding in the LB namespace on or
    /// off (to prove that the datapath forwards by itself).
    pub fn set_linux_forwarding(&self, on: bool) {
        let v = if on { "1" } else { "0" };
        // /proc/sys/net shows the namespace of the thread that opens it.
        let files = [
            "/proc/sys/net/ipv4/ip_forward",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ];
        in_netns(&self.lb, || {
            files.iter().try_for_each(|f| {
                fs::write(f, v)?;
                match fs::read_to_string(f)?.trim() == v {
                    true => Ok(()),
                    false => Err(io::Error::other(format!("{f} did not take {v}"))),
                }
            })
        })
        .unwrap_or_else(|e| panic!("setting forwarding to {v} in {}: {e}", self.lb));
    }

    /// XDP on veth: a redirected frame reaches the peer only if the peer runs
    /// NAPI (GRO on), and frames carry no skb checksum state, so the senders
    /// must compute full checksums (TX checksum offload off).
    pub fn prepare_for_xdp(&self) {
        let mut all = vec![self.client.as_str()];
        all.extend(self.backends.iter().map(|b| b.ns.as_str()));
        for ns in all {
            let out = run_bounded(
                Command::new("ip").args([
                    "netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off", "gro", "on",
                ]),
                COMMAND_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("ethtool in {ns}: {e}"));
            assert!(
                out.status.success(),
                "ethtool in {ns}: {}",
                stderr_line(&out)
            );
        }
    }

    /// A new backend namespace wired to the LB while the lab runs; returns
    /// its index in `backends`.
    pub fn add_backend(&mut self) -> usize {
        let i = self.backends.len() + 1;
        let b = Backend::new(&self.prefix, i);
        self.add_namespace(&b.ns);
        self.wire(&b.ns, &format!("veth-{}", b.name), i + 1);
        self.start_server(&b);
        self.backends.push(b);
        i - 1
    }

    fn start_servers(&mut self) {
        let backends = std::mem::take(&mut self.backends);
        for b in &backends {
            self.start_server(b);
        }
        self.backends = backends;
    }

    /// HTTP and UDP on every address (IPv4 and IPv6) of the backend.
    fn start_server(&mut self, b: &Backend) {
        let (name, stop) = (b.name.clone(), self.stop.clone());
        let hits = b.http_hits.clone();
        let listener = in_netns(&b.ns, || TcpListener::bind(("::", HTTP_PORT)))
            .unwrap_or_else(|e| panic!("{}: binding HTTP port {HTTP_PORT}: {e}", b.name));
        self.servers.push(thread::spawn(move || {
            serve_http(listener, &name, &hits, &stop)
        }));

        let (name, stop) = (b.name.clone(), self.stop.clone());
        let hits = b.udp_hits.clone();
        let socket = in_netns(&b.ns, || UdpSocket::bind(("::", UDP_PORT)))
            .unwrap_or_else(|e| panic!("{}: binding UDP port {UDP_PORT}: {e}", b.name));
        self.servers.push(thread::spawn(move || {
            serve_udp(socket, &name, &hits, &stop)
        }));
    }

    /// The loxilight command line, to run inside the LB namespace with the lab's pin dir.
    fn daemon_command(&self, extra_args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.lb))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_loxilight"))
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(extra_args)
            .stdin(Stdio::null());
        cmd
    }

    /// Where the daemon pins its maps (bpffs).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Where the daemon keeps its state file.
    pub fn state_dir(&self) -> PathBuf {
        self.workdir.join("state")
    }

    /// The lab's private temp dir (removed on drop), e.g. for sockets and certificates.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// Options that every later `loxicmd` call gets (TLS files, `-s unix:PATH`).
    pub fn set_loxicmd_args(&mut self, args: &[&str]) {
        self.loxicmd_args = args.iter().map(|a| a.to_string()).collect();
    }

    pub fn daemon_log_path(&self) -> PathBuf {
        self.workdir.join("loxilight.log")
    }

    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.daemon_log_path()).unwrap_or_default()
    }

    /// Starts loxilight in the LB namespace and waits until its API port accepts
    /// connections. Its output goes to [`Lab::daemon_log_path`], printed if the test fails.
    pub fn start_daemon(&mut self, extra_args: &[&str]) {
        assert!(self.daemon.is_none(), "the daemon is already running");
        let listen = listen_arg(extra_args);
        let unix_socket = listen
            .and_then(|l| l.strip_prefix("unix:"))
            .map(PathBuf::from);
        let mut addr = listen
            .and_then(|l| l.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, API_PORT)));
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        self.api_port = addr.port();
        // Appended to, so that a restarted daemon's log follows the first one's.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log_path())
            .expect("opening the daemon log");
        let mut cmd = self.daemon_command(extra_args);
        cmd.stdout(log.try_clone().expect("dup of the log file"))
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // SAFETY: prctl is async-signal-safe. If the test process dies without running
        // Drop (e.g. SIGKILL), the daemon is told to exit rather than left behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        self.daemon = Some(cmd.spawn().expect("spawning nsenter loxilight"));

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.daemon.as_mut().unwrap().try_wait() {
                panic!("loxilight exited during start-up ({status})");
            }
            // The port accepts connections as soon as it is bound, before the
            // datapath is attached: only an answered request means ready.
            let up = match &unix_socket {
                Some(path) => path.exists(),
                None => in_netns(&self.lb, || {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                }),
            };
            if up && self.loxicmd(&["get", "lb"]).status.success() {
                return;
            }
            if Instant::now() > deadline {
                panic!("loxilight did not accept connections on {addr} within {READY_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs loxilight in the LB namespace with the default log settings, expecting it
    /// to exit by itself (a start-up failure); panics if it is still up after 10 s.
    pub fn run_daemon_to_exit(&self, extra_args: &[&str]) -> Output {
        let mut cmd = self.daemon_command(extra_args);
        cmd.env_remove("RUST_LOG");
        run_bounded(&mut cmd, READY_TIMEOUT).unwrap_or_else(|e| panic!("loxilight: {e}"))
    }

    /// Sends `signal` to the daemon (nsenter execs it, so the pid is its own).
    pub fn signal_daemon(&self, signal: i32) {
        let pid = self.daemon.as_ref().expect("the daemon is running").id();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(pid as i32, signal) },
            0,
            "signalling the daemon"
        );
    }

    pub fn daemon_alive(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits (bounded) for the daemon to exit.
    pub fn stop_daemon(&mut self) -> Option<ExitStatus> {
        let mut child = self.daemon.take()?;
        Some(terminate(&mut child))
    }

    /// Runs `loxicmd ARGS` in the LB namespace (bounded).
    pub fn loxicmd(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.lb))
            .arg("--")
            .arg(loxicmd_path())
            .args(args);
        if self.api_port != API_PORT {
            cmd.arg("--port").arg(self.api_port.to_string());
        }
        cmd.args(&self.loxicmd_args);
        run_bounded(&mut cmd, COMMAND_TIMEOUT).unwrap_or_else(|e| panic!("loxicmd {args:?}: {e}"))
    }

    /// Runs `loxicmd ARGS` and returns its stdout; panics if it fails.
    pub fn loxicmd_ok(&self, args: &[&str]) -> String {
        let out = self.loxicmd(args);
        assert!(
            out.status.success(),
            "loxicmd {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An HTTP GET from the client namespace; returns the body (a backend name).
    pub fn http_get(&self, ip: &str, port: u16) -> io::Result<String> {
        self.http_get_timeout(ip, port, Duration::from_secs(3))
    }

    pub fn http_get_timeout(&self, ip: &str, port: u16, timeout: Duration) -> io::Result<String> {
        let addr = SocketAddr::new(ip.parse().map_err(invalid)?, port);
        in_netns(&self.client, || http_request(addr, "/", timeout))
    }

    /// A UDP request from the client namespace (from `src_port` when given); returns
    /// the reply, which must come from `ip:port`.
    pub fn udp_request(&self, ip: &str, port: u16, src_port: Option<u16>) -> io::Result<String> {
        let addr = SocketAddr::new(ip.parse().map_err(invalid)?, port);
        in_netns(&self.client, || {
            udp_exchange(addr, src_port.unwrap_or(0), Duration::from_secs(2))
        })
    }

    /// An HTTP GET of `path` on `addr` from inside namespace `ns`; returns the body.
    pub fn http_get_in(&self, ns: &str, addr: SocketAddr, path: &str) -> io::Result<String> {
        in_netns(ns, || http_request(addr, path, Duration::from_secs(5)))
    }

    /// One ICMP or ICMPv6 echo from the client namespace to `ip` with
    /// identifier `id` (there is no ping binary to rely on); returns the
    /// reply's source.
    pub fn ping(&self, ip: &str, id: u16) -> io::Result<IpAddr> {
        let dst: IpAddr = ip.parse().map_err(invalid)?;
        in_netns(&self.client, || ping_once(dst, id, Duration::from_secs(2)))
    }

    /// Echo requests namespace `ns` has received over IPv6 (Icmp6InEchos).
    pub fn icmp6_echoes_received(&self, ns: &str) -> u64 {
        let snmp6 = in_netns(ns, || fs::read_to_string("/proc/thread-self/net/snmp6"))
            .unwrap_or_else(|e| panic!("reading {ns}'s /proc/net/snmp6: {e}"));
        snmp6
            .lines()
            .find_map(|l| l.strip_prefix("Icmp6InEchos"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Icmp6InEchos in {ns}'s /proc/net/snmp6"))
    }

    /// Echo requests namespace `ns` has received (Icmp InEchos).
    pub fn icmp_echoes_received(&self, ns: &str) -> u64 {
        let snmp = in_netns(ns, || fs::read_to_string("/proc/thread-self/net/snmp"))
            .unwrap_or_else(|e| panic!("reading {ns}'s /proc/net/snmp: {e}"));
        let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp: "));
        let (names, values) = (icmp.next(), icmp.next());
        let (Some(names), Some(values)) = (names, values) else {
            panic!("no Icmp lines in {ns}'s /proc/net/snmp");
        };
        let at = names
            .split_whitespace()
            .position(|n| n == "InEchos")
            .expect("an InEchos column");
        values
            .split_whitespace()
            .nth(at)
            .and_then(|v| v.parse().ok())
            .expect("an InEchos value")
    }

    /// Runs `f` on a thread inside namespace `ns` (e.g. to hold a port there).
    pub fn in_ns<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        in_netns(ns, f)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let failed = thread::panicking();
        if let Some(mut child) = self.daemon.take() {
            let status = terminate(&mut child);
            if failed {
                eprintln!("loxilight exit status: {status}");
            }
        }
        if failed && self.daemon_log_path().exists() {
            eprintln!(
                "----- loxilight log ({}) -----\n{}----- end of log -----",
                self.daemon_log_path().display(),
                self.daemon_log()
            );
        }
        self.stop.store(true, Ordering::SeqCst);
        for server in self.servers.drain(..) {
            let _ = server.join();
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run_bounded(
                Command::new("ip").args(["netns", "del", &ns]),
                COMMAND_TIMEOUT,
            ) {
                eprintln!("deleting netns {ns}: {e}");
            }
        }
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_dir_all(&self.workdir);
    }
}

/// Root, `ip netns` and a bpffs at /sys/fs/bpf; checked once per test binary, which
/// also removes what killed runs of earlier test binaries left behind.
fn precheck() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return Err("not running as root (try `sudo make test`)".into());
            }
            if !Path::new("/proc/self/ns/net").exists() {
                return Err("the kernel has no network namespaces".into());
            }
            match run_bounded(Command::new("ip").args(["netns", "list"]), COMMAND_TIMEOUT) {
                Ok(out) if out.status.success() => {}
                Ok(out) => return Err(format!("`ip netns list` failed: {}", stderr_line(&out))),
                Err(e) => return Err(format!("cannot run `ip` (install iproute2): {e}")),
            }
            ensure_bpffs()?;
            remove_stale();
            Ok(())
        })
        .clone()
}

fn ensure_bpffs() -> Result<(), String> {
    let is_bpffs = || {
        let path = c"/sys/fs/bpf";
        // SAFETY: statfs writes into the zeroed struct we own.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        unsafe { libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
    };
    if is_bpffs() {
        return Ok(());
    }
    let out = run_bounded(
        Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
        COMMAND_TIMEOUT,
    )
    .map_err(|e| format!("mounting bpffs: {e}"))?;
    if out.status.success() && is_bpffs() {
        Ok(())
    } else {
        Err(format!(
            "no bpffs at /sys/fs/bpf and mounting one failed: {}",
            stderr_line(&out)
        ))
    }
}

/// Deletes `ll-*` namespaces and test pin dirs whose creating process is gone.
fn remove_stale() {
    let dead =
        |pid: &str| pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for name in entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
        {
            // ll-<tag>-<pid>-<n>-<role>
            let parts: Vec<&str> = name.split('-').collect();
            if name.starts_with("ll-") && parts.len() >= 5 && dead(parts[parts.len() - 3]) {
                let _ = run_bounded(
                    Command::new("ip").args(["netns", "del", &name]),
                    COMMAND_TIMEOUT,
                );
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/sys/fs/bpf") {
        for name in entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
        {
            // loxilight-test-<pid>-<n>
            if let Some(rest) = name.strip_prefix("loxilight-test-") {
                if rest.split('-').next().is_some_and(dead) {
                    let _ = fs::remove_dir_all(Path::new("/sys/fs/bpf").join(&name));
                }
            }
        }
    }
}

/// loxicmd is another workspace package's binary: it sits next to loxilight in the
/// target directory once `cargo build --workspace` (or `cargo test --workspace`) ran.
pub fn loxicmd_path() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_loxilight")).with_file_name("loxicmd");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// The value of a `--listen VALUE` / `--listen=VALUE` argument.
fn listen_arg<'a>(args: &[&'a str]) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, arg)| match *arg {
        "--listen" => args.get(i + 1).copied(),
        _ => arg.strip_prefix("--listen="),
    })
}

/// Runs `ip ARGS` (split on spaces), panicking with its error output if it fails.
pub fn ip(args: &str) {
    let out = run_bounded(
        Command::new("ip").args(args.split_whitespace()),
        COMMAND_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("ip {args}: {e}"));
    assert!(
        out.status.success(),
        "ip {args} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// The first line of a command's stderr.
pub fn stderr_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Runs a command to completion, killing it if it takes longer than `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("still running after {timeout:?}, killed"),
            ));
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// SIGTERM, then SIGKILL if the process has not exited within 10 s.
fn terminate(child: &mut Child) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    // SAFETY: kill on the pid of a child we have not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!("loxilight ignored SIGTERM for 10 s; killing it");
    let _ = child.kill();
    child.wait().expect("waiting for the killed daemon")
}

/// Runs `f` on a new thread that has joined the network namespace `ns` first
/// (setns affects only the calling thread).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        let handle = scope.spawn(|| {
            enter_netns(ns);
            f()
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn enter_netns(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns on a namespace fd we hold open.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!("setns({path}): {}", io::Error::last_os_error());
    }
}

/// Sends an ICMP or ICMPv6 echo request over a raw socket and waits for the
/// reply with the same identifier; returns its source.
fn ping_once(dst: IpAddr, id: u16, timeout: Duration) -> io::Result<IpAddr> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    let (domain, proto, request, reply) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8, 0),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128, 129),
    };
    // SAFETY: a plain socket(2); the fd is owned (and closed) at once.
    let fd = unsafe { OwnedFd::from_raw_fd(check(libc::socket(domain, libc::SOCK_RAW, proto))?) };
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: tv outlives the call and its size is given.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    let mut msg = vec![request, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&[0, 1]);
    msg.extend_from_slice(b"loxilight ping");
    // The kernel checksums ICMPv6 (its pseudo-header has the addresses).
    if dst.is_ipv4() {
        let sum: u32 = msg
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum();
        let sum = (sum & 0xffff) + (sum >> 16);
        let c = !((sum & 0xffff) + (sum >> 16)) as u16;
        msg[2..4].copy_from_slice(&c.to_be_bytes());
    }
    // SAFETY: a zeroed sockaddr_storage is valid; the family's fields are
    // set below, within its size.
    let mut to: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match dst {
        IpAddr::V4(v4) => {
            // SAFETY: sockaddr_storage holds a sockaddr_in.
            let sin = unsafe {
                &mut *(&mut to as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from(v4).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            // SAFETY: sockaddr_storage holds a sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut to as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = v6.octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    } as libc::socklen_t;
    // SAFETY: msg and to outlive the call, lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&to as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: a zeroed sockaddr_storage is valid.
        let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: buf and from outlive the call, lengths given.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_storage).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // A raw IPv4 socket gets the IP header too; an IPv6 one does not.
        let start = if dst.is_ipv4() {
            usize::from(buf[0] & 0x0f) * 4
        } else {
            0
        };
        let icmp = &buf[start.min(n as usize)..n as usize];
        if icmp.len() >= 8 && icmp[0] == reply && icmp[4..6] == id.to_be_bytes() {
            // SAFETY: recvfrom filled in an address of the socket's family.
            let src = unsafe {
                if dst.is_ipv4() {
                    let sin =
                        &*(&from as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                    IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
                } else {
                    let sin6 =
                        &*(&from as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                    IpAddr::from(sin6.sin6_addr.s6_addr)
                }
            };
            return Ok(src);
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "no echo reply"))
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// A minimal HTTP/1.1 GET; returns the body of a 200 answer.
fn http_request(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete HTTP answer",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk)? {
            0 => break,
            n => response.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("bad answer {text:?}"))
    })?;
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("HTTP status: {}", head.lines().next().unwrap_or("")),
        ));
    }
    Ok(body.to_owned())
}

fn udp_exchange(addr: SocketAddr, src_port: u16, timeout: Duration) -> io::Result<String> {
    // A fixed port can stay taken for a moment after its last socket closed: a child
    // forked by a parallel test holds a copy of the fd until it execs.
    let deadline = Instant::now() + timeout;
    let socket = loop {
        let any: std::net::IpAddr = match addr {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        match UdpSocket::bind((any, src_port)) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20))
            }
            result => break result?,
        }
    };
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(b"ping", addr)?;
    let mut buf = [0u8; 1500];
    let (n, from) = socket.recv_from(&mut buf)?;
    if from != addr {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("reply came from {from}, expected {addr}"),
        ));
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Answers every HTTP request with the backend's name until `stop` is set.
fn serve_http(listener: TcpListener, name: &str, hits: &Arc<AtomicUsize>, stop: &AtomicBool) {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (name, hits) = (name.to_owned(), hits.clone());
                thread::spawn(move || answer_http(stream, &name, &hits));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn answer_http(mut stream: TcpStream, name: &str, hits: &AtomicUsize) {
    let timeout = Some(Duration::from_secs(2));
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(timeout).is_err()
        || stream.set_write_timeout(timeout).is_err()
    {
        return;
    }
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(n) if n > 0 && request.len() < 65536 => request.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
        name.len()
    );
}

/// Replies to every datagram with the backend's name until `stop` is set.
fn serve_udp(socket: UdpSocket, name: &str, hits: &AtomicUsize, stop: &AtomicBool) {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("UDP read timeout");
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
            hits.fetch_add(1, Ordering::SeqCst);
            let _ = socket.send_to(name.as_bytes(), peer);
        }
    }
}

/// Rows of a loxicmd table (`| A | B |` lines under a header), as (column, cell) lists.
pub fn parse_table(text: &str) -> Vec<Vec<(String, String)>> {
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let mut lines = text.lines().filter(|l| l.trim_start().starts_with('|'));
    let Some(header) = lines.next().map(cells) else {
        return Vec::new();
    };
    lines
        .filter(|l| {
            !l.trim()
                .trim_matches('|')
                .chars()
                .all(|c| c == '-' || c == '|' || c == '+')
        })
        .map(|l| header.iter().cloned().zip(cells(l)).collect())
        .collect()
}

/// The cell of `column` in a row from [`parse_table`].
pub fn cell<'a>(row: &'a [(String, String)], column: &str) -> &'a str {
    row.iter()
        .find(|(c, _)| c == column)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no column {column} in {row:?}"))
}

/// How many answers each backend name got.
pub fn tally(answers: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.clone()).or_default() += 1;
    }
    counts
}

/// `loxicmd get ct ARGS -o json`.
pub fn ct_json(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["get", "ct", "-o", "json"];
    all.extend_from_slice(args);
    let text = lab.loxicmd_ok(&all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
}

/// The entries of a `get ct -o json` answer.
pub fn ct_entries(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["entries"].as_array().cloned().unwrap_or_default()
}
