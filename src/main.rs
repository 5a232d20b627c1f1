//! The loxilight daemon: loads the datapath, attaches it to the managed
//! interfaces, and serves the gRPC API.
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use loxilight::config::{Config, FileConfig, Overrides};
use loxilight::conntrack::Ageing;
use loxilight::datapath::Datapath;
use loxilight::rules::RuleStore;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(name = "loxilight", version, about = "eBPF load balancer daemon")]
struct Cli {
    /// gRPC listen address [default: 127.0.0.1:11111]
    #[arg(long)]
    listen: Option<SocketAddr>,
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
    /// TOML config file (flags win over it)
    #[arg(long)]
    config: Option<PathBuf>,
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
    // Rules are not persisted yet, so pinned services from an earlier run
    // are stale: start from an empty table and no flows.
    dp.clear_services().context("clearing stale services")?;
    dp.clear_network().context("clearing stale network state")?;
    dp.flush_conntrack(|_, _| true)
        .context("clearing stale conntrack")?;
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = match &cli.config {
        Some(path) => FileConfig::read(path)?,
        None => FileConfig::default(),
    };
    let flags = Overrides {
        listen: cli.listen,
        interfaces: cli.interfaces,
        pin_dir: cli.pin_dir,
        hook: cli.hook,
    };
    let cfg = Config::merge(file, flags)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let dp = Arc::new(load_datapath(&cfg)?);
    // Stopped when dropped, on every way out of here.
    let ageing = Ageing::spawn(dp.clone(), cfg.ageing.clone())
        .context("starting the conntrack ageing thread")?;
    let watcher = match loxilight::kernel::start(dp.clone(), cfg.mirror.clone()).await {
        Ok(w) => w,
        Err(e) => {
            dp.detach_all();
            return Err(e);
        }
    };
    let mirror = tokio::spawn(watcher);
    let store = Arc::new(RuleStore::new(dp.clone()));
    tracing::info!(listen = %cfg.listen, pin_dir = %cfg.pin_dir.display(), "loxilight ready");
    let served = loxilight::api::serve(listener, store, dp.clone(), shutdown_signal()).await;
    // Stop the mirror first: detaching changes links, and it would attach again.
    mirror.abort();
    let _ = mirror.await;
    ageing.stop();
    dp.detach_all();
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
