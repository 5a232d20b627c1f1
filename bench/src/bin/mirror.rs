//! Kernel-mirror benchmark: how long a route change in the kernel takes to
//! reach the datapath's LPM map, and how long a large table takes to mirror.
//! Runs the real daemon in a network namespace of its own. Needs root.
//!
//! mirror-bench [--changes N] [--table N] [--json FILE]
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use rtnetlink::RouteMessageBuilder;

/// The namespace, daemon and pins of one run; removed on drop.
struct Lab {
    ns: String,
    pin_dir: PathBuf,
    daemon: Option<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            // SAFETY: plain kill(2) on our child's pid.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let _ = d.wait();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("ip")
        .args(args)
        .status()
        .context("running ip")?;
    ensure!(st.success(), "ip {} failed", args.join(" "));
    Ok(())
}

fn start(table: usize) -> anyhow::Result<Lab> {
    let id = std::process::id();
    let mut lab = Lab {
        ns: format!("llbench-{id}"),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/loxilight-bench-{id}")),
        daemon: None,
    };
    ip(&["netns", "add", &lab.ns])?;
    for args in [
        "link set lo up",
        "link add d0 type veth peer name d1",
        "link set d1 up",
        "addr add 10.99.0.1/24 dev d0",
        "link set d0 up",
    ] {
        let mut a = vec!["-n", lab.ns.as_str()];
        a.extend(args.split(' '));
        ip(&a)?;
    }
    let config = std::env::temp_dir().join(format!("loxilight-bench-{id}.toml"));
    std::fs::write(&config, format!("max_routes = {}\n", table + 10_000))?;
    let daemon = std::env::current_exe()?.with_file_name("loxilight");
    ensure!(
        daemon.exists(),
        "{} missing: build the workspace first",
        daemon.display()
    );
    lab.daemon = Some(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.ns))
            .arg("--")
            .arg(&daemon)
            .arg("--pin-dir")
            .arg(&lab.pin_dir)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("starting loxilight")?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.pin_dir.join("ll_routes4").exists() {
        ensure!(Instant::now() < deadline, "loxilight did not pin its maps");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The connected route shows up once the mirror has made its first dump.
    let routes = MapHandle::from_pinned_path(lab.pin_dir.join("ll_routes4"))?;
    while routes.keys().next().is_none() {
        ensure!(Instant::now() < deadline, "the mirror did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(config);
    Ok(lab)
}

fn enter(ns: &str) -> anyhow::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a namespace fd we hold open, for this thread only.
    ensure!(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
        "setns {ns}"
    );
    Ok(())
}

/// ll_lpm4_key bytes: prefix length (host order), then the address.
fn lpm_key(addr: Ipv4Addr, len: u32) -> Vec<u8> {
    let mut k = len.to_ne_bytes().to_vec();
    k.extend_from_slice(&addr.octets());
    k
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn run(lab: &Lab, changes: usize, table: usize) -> anyhow::Result<serde_json::Value> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    let routes = MapHandle::from_pinned_path(lab.pin_dir.join("ll_routes4"))?;
    let gw = Ipv4Addr::new(10, 99, 0, 2);
    let route = |addr: Ipv4Addr, len: u8| {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(addr, len)
            .gateway(gw)
            .build()
    };

    // One change at a time: add, then wait until the datapath has it.
    let mut lat = Vec::with_capacity(changes);
    for i in 0..changes {
        let addr = Ipv4Addr::new(
            198,
            18 + (i / 65536) as u8,
            (i / 256 % 256) as u8,
            (i % 256) as u8,
        );
        let key = lpm_key(addr, 32);
        ensure!(
            routes.lookup(&key, MapFlags::ANY)?.is_none(),
            "{addr} is routed already"
        );
        let t0 = Instant::now();
        handle.route().add(route(addr, 32)).execute().await?;
        while routes.lookup(&key, MapFlags::ANY)?.is_none() {
            if t0.elapsed() > Duration::from_secs(5) {
                bail!("route {addr}/32 never reached the datapath");
            }
            tokio::task::yield_now().await;
        }
        lat.push(t0.elapsed());
    }
    lat.sort();

    // A whole table in one go, until the last prefix and the full count are in.
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    let t0 = Instant::now();
    for i in 0..table as u32 {
        handle
            .route()
            .add(route(Ipv4Addr::from(base + i * 16), 28))
            .execute()
            .await?;
    }
    let submitted = t0.elapsed();
    let last = lpm_key(Ipv4Addr::from(base + (table as u32 - 1) * 16), 32);
    let want = table + changes;
    loop {
        if routes.lookup(&last, MapFlags::ANY)?.is_some()
            && routes
                .keys()
                .filter(|k| k[..4] == 32u32.to_ne_bytes() || k[..4] == 28u32.to_ne_bytes())
                .count()
                >= want
        {
            break;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "the table never fully reached the datapath"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let loaded = t0.elapsed();

    println!("route add -> datapath map, {changes} changes one at a time:");
    println!(
        "  p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms   (target: p99 < 50 ms)",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
    println!("{table}-route table: in the kernel after {:.2} s, in the datapath after {:.2} s (target: < 5 s)", submitted.as_secs_f64(), loaded.as_secs_f64());
    Ok(serde_json::json!({
        "changes": changes,
        "latency_ms": {
            "p50": ms(percentile(&lat, 0.5)),
            "p99": ms(percentile(&lat, 0.99)),
            "max": ms(*lat.last().unwrap()),
        },
        "table_routes": table,
        "table_kernel_s": submitted.as_secs_f64(),
        "table_datapath_s": loaded.as_secs_f64(),
    }))
}

fn main() -> anyhow::Result<()> {
    let mut changes = 1000;
    let mut table = 100_000;
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--changes" => changes = value()?.parse()?,
            "--table" => table = value()?.parse()?,
            "--json" => json = Some(value()?),
            other => bail!("unknown argument {other:?} (--changes N, --table N, --json FILE)"),
        }
    }
    ensure!(
        changes > 0 && table > 0,
        "--changes and --table must be positive"
    );
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "mirror-bench needs root (namespaces, BPF)"
    );
    let lab = start(table)?;
    enter(&lab.ns)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run(&lab, changes, table))?;
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
    }
    Ok(())
}
