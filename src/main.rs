//! The loxilight daemon: loads the datapath, attaches it to the managed
//! interfaces, and serves the gRPC API.
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use loxilight::api::{ListenAddr, Listener};
use loxilight::config::{Config, FileConfig, Overrides};
use loxilight::conntrack::Ageing;
use loxilight::datapath::Datapath;
use loxilight::metrics::{self, ApiStats};
use loxilight::rules::RuleStore;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(name = "loxilight", version, about = "eBPF load balancer daemon")]
struct Cli {
    /// gRPC listen address, ADDRESS:PORT or unix:PATH [default: 127.0.0.1:11111]
    #[arg(long)]
    listen: Option<ListenAddr>,
    /// Prometheus metrics listen address (GET /metrics) [default: 127.0.0.1:11112]
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// PEM certificate chain: serve the API over TLS (with --tls-key)
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mutual TLS)
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Allow a plaintext API on a non-loopback address
    #[arg(long)]
    insecure: bool,
    /// Interfaces to attach to, comma separated [default: every non-loopback
    /// interface of this network namespace, including ones added later]
    #[arg(long, value_delimiter = ',')]
    interfaces: Option<Vec<String>>,
    /// bpffs directory where the maps are pinned [default: /sys/fs/bpf/loxilight]
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Where the datapath runs: tc (ingress, default) or xdp (native where
    /// the driver has it, generic otherwise)
    #[arg(long)]
    hook: Option<String>,
    /// Directory of the state file that keeps the rules across restarts
    /// [default: /var/lib/loxilight]
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Detach the datapath when stopping. By default it stays attached with
    /// its pinned maps, so traffic keeps flowing and the next start adopts it.
    #[arg(long)]
    detach_on_exit: bool,
    /// TOML config file (flags win over it)
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Remove the datapath for good: detach it from every interface of this
    /// network namespace, delete its pinned maps and the state file.
    Cleanup,
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: c is a valid C string and st a valid out-pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there yet, and checks
/// that the pin directory lives on a bpffs.
fn ensure_bpffs(pin_dir: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) && !is_bpffs(root)? {
        let src = c"bpf";
        let target = c"/sys/fs/bpf";
        // SAFETY: all pointers are valid C strings; data may be null.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
        }
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    std::fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
    if !is_bpffs(pin_dir)? {
        bail!(
            "pin directory {} is not on a bpf filesystem",
            pin_dir.display()
        );
    }
    Ok(())
}

fn load_datapath(cfg: &Config) -> anyhow::Result<Datapath> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel has no BTF (/sys/kernel/btf/vmlinux): loxilight needs CONFIG_DEBUG_INFO_BTF");
    }
    ensure_bpffs(&cfg.pin_dir)?;
    let dp = Datapath::load(cfg.limits.clone(), Some(&cfg.pin_dir)).map_err(|e| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            anyhow::anyhow!("{e}: loxilight needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)")
        } else {
            anyhow::anyhow!(
                "{e} (if maps pinned under {} are from another version, remove that directory)",
                cfg.pin_dir.display()
            )
        }
    })?;
    dp.set_nat_ports(cfg.nat_ports.clone())?;
    Ok(dp)
}

async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
}

/// Keeps the least-connections counts in step with the flows that end.
async fn refresh_active_flows(dp: Arc<Datapath>, store: Arc<RuleStore>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        let (dp, store) = (dp.clone(), store.clone());
        let res = tokio::task::spawn_blocking(move || {
            loxilight::conntrack::refresh_active_flows(&dp, &store)
        })
        .await;
        if let Ok(Err(e)) = res {
            tracing::warn!(error = %e, "recounting active flows failed");
        }
    }
}

/// Resolves the interface names of firewall rules again whenever the
/// mirror sees an interface come, go or change its name.
async fn follow_interfaces(changed: Arc<tokio::sync::Notify>, store: Arc<RuleStore>) {
    loop {
        changed.notified().await;
        let store = store.clone();
        let res = tokio::task::spawn_blocking(move || store.refresh_firewall_interfaces()).await;
        if let Ok(Err(e)) = res {
            tracing::error!(error = %e, "reprogramming the firewall after an interface change failed");
        }
    }
}

/// Logs the packets that firewall rules with `record` match, at most
/// EVENTS_PER_SECOND a second: a flood of matches must not flood the log.
/// Beyond that they are counted, and the count is logged.
fn log_firewall_events(dp: Arc<Datapath>) -> std::io::Result<()> {
    const EVENTS_PER_SECOND: u32 = 100;
    std::thread::Builder::new()
        .name("fw-events".into())
        .spawn(move || {
            let mut window = Instant::now();
            let (mut logged, mut unlogged) = (0u32, 0u64);
            let watched = dp.watch_firewall_events(|e| {
                if window.elapsed() >= Duration::from_secs(1) {
                    if unlogged > 0 {
                        tracing::warn!(target: "firewall", unlogged, "recorded matches not logged (over {EVENTS_PER_SECOND} a second); the rules' counters have them");
                    }
                    (window, logged, unlogged) = (Instant::now(), 0, 0);
                }
                if logged == EVENTS_PER_SECOND {
                    unlogged += 1;
                    return true;
                }
                logged += 1;
                tracing::info!(
                    target: "firewall",
                    rule = e.rule_id,
                    action = e.action,
                    ifindex = e.ifindex,
                    proto = e.proto,
                    src = %e.src,
                    sport = e.sport,
                    dst = %e.dst,
                    dport = e.dport,
                    "firewall rule matched"
                );
                true
            });
            if let Err(e) = watched {
                tracing::error!(error = %e, "reading firewall events failed; recorded matches are counted but not logged");
            }
        })
        .map(|_| ())
}

/// Detaches every loxilight program in this namespace and removes the pins
/// and the state file.
async fn cleanup(cfg: &Config) -> anyhow::Result<()> {
    let links = loxilight::kernel::interfaces().await?;
    let detached = Datapath::detach_everywhere(links.iter().map(|l| l.index))
        .context("detaching the datapath")?;
    match std::fs::remove_dir_all(&cfg.pin_dir) {
        Ok(()) => println!("removed {}", cfg.pin_dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", cfg.pin_dir.display())),
    }
    let state = cfg.state_file();
    for path in loxilight::rules::remove_state(&state)
        .with_context(|| format!("removing {} and its journals", state.display()))?
    {
        println!("removed {}", path.display());
    }
    println!("detached from {detached} interface(s)");
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = match &cli.config {
        Some(path) => FileConfig::read(path)?,
        None => FileConfig::default(),
    };
    let flags = Overrides {
        listen: cli.listen,
        metrics_listen: cli.metrics_listen,
        tls_cert: cli.tls_cert,
        tls_key: cli.tls_key,
        tls_client_ca: cli.tls_client_ca,
        insecure: cli.insecure,
        interfaces: cli.interfaces,
        pin_dir: cli.pin_dir,
        hook: cli.hook,
        state_dir: cli.state_dir,
    };
    let cfg = Config::merge(file, flags)?;
    if let Some(Command::Cleanup) = cli.command {
        return cleanup(&cfg).await;
    }
    let tls = cfg.tls.as_ref().map(|t| t.load()).transpose()?;
    let listener = Listener::bind(&cfg.listen).await?;
    let metrics_listener = TcpListener::bind(cfg.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {} (metrics)", cfg.metrics_listen))?;
    let dp = Arc::new(load_datapath(&cfg)?);
    // Stopped when dropped, on every way out of here.
    let ageing = Ageing::spawn(dp.clone(), cfg.ageing.clone())
        .context("starting the conntrack ageing thread")?;
    // Rules first: a bad state file stops the start before any interface is touched.
    let store = RuleStore::open(dp.clone(), Some(cfg.state_file()), cfg.firewall_default)
        .with_context(|| format!("restoring the rules from {}", cfg.state_file().display()))?;
    let store = Arc::new(store);
    let watcher = match loxilight::kernel::start(dp.clone(), cfg.mirror.clone()).await {
        Ok(w) => w,
        Err(e) => {
            dp.detach_all();
            return Err(e);
        }
    };
    let mirror = tokio::spawn(watcher);
    tokio::spawn(follow_interfaces(
        cfg.mirror.links_changed.clone(),
        store.clone(),
    ));
    tokio::spawn(refresh_active_flows(dp.clone(), store.clone()));
    let health = loxilight::health::Health::spawn(store.clone());
    log_firewall_events(dp.clone()).context("starting the firewall event logger")?;
    let api_stats = Arc::new(ApiStats::default());
    let sources = metrics::Sources {
        dp: dp.clone(),
        store: store.clone(),
        mirror: cfg.mirror.stats.clone(),
        api: api_stats.clone(),
    };
    let metrics = tokio::spawn(async move {
        if let Err(e) = metrics::serve(metrics_listener, sources).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    tracing::info!(
        listen = %cfg.listen,
        tls = tls.is_some(),
        metrics = %cfg.metrics_listen,
        pin_dir = %cfg.pin_dir.display(),
        "loxilight ready"
    );
    let served = loxilight::api::serve(
        listener,
        tls,
        store,
        dp.clone(),
        health,
        api_stats,
        shutdown_signal(),
    )
    .await;
    metrics.abort();
    // Stop the mirror first: detaching changes links, and it would attach again.
    mirror.abort();
    let _ = mirror.await;
    ageing.stop();
    if cli.detach_on_exit {
        dp.detach_all();
    } else {
        tracing::info!("datapath left attached; the next start adopts it");
    }
    served
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    loxilight::datapath::route_libbpf_logs();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loxilight: error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("loxilight: error: {e:#}");
        std::process::exit(1);
    }
}
