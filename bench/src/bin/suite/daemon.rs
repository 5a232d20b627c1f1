//! The real loxilight daemon in a namespace, and its gRPC API.
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use libbpf_rs::{MapCore, MapHandle};
use loxilight::proto::v1::load_balancer_service_client::LoadBalancerServiceClient;
use loxilight::proto::v1::{CreateLoadBalancerRequest, ListLoadBalancersRequest};
use tonic::transport::{Channel, Endpoint};

use crate::netns;

const API: &str = "http://127.0.0.1:11111";
/// Requests in flight while programming: enough to keep the daemon busy.
const PIPELINE: usize = 64;

pub struct Daemon {
    ns: String,
    child: Child,
    pub pin_dir: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts loxilight in `ns` with `config` (TOML) and waits until its API
    /// answers, which happens only once the datapath is attached.
    /// Call from the main thread: the daemon dies with the thread that spawned it.
    pub fn start(ns: &str, workdir: &Path, args: &[&str], config: &str) -> Result<Daemon> {
        let exe = std::env::current_exe()?.with_file_name("loxilight");
        ensure!(
            exe.exists(),
            "{} is missing: build the workspace first (cargo build --release --workspace)",
            exe.display()
        );
        let config_path = workdir.join("loxilight.toml");
        fs::write(&config_path, config).context("writing the daemon config")?;
        let log = workdir.join("loxilight.log");
        let out = File::create(&log).context("creating the daemon log")?;
        let pin_dir = PathBuf::from("/sys/fs/bpf")
            .join(workdir.file_name().context("the workdir has a name")?);
        let child = netns::command(ns, &exe)
            .arg("--pin-dir")
            .arg(&pin_dir)
            // Each run its own rules: never the host's /var/lib/loxilight.
            .arg("--state-dir")
            .arg(workdir.join("state"))
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting loxilight")?;
        let mut d = Daemon {
            ns: ns.to_owned(),
            child,
            pin_dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            netns::check_interrupted()?;
            if let Some(st) = d.child.try_wait()? {
                bail!("loxilight exited during start-up ({st}):\n{}", d.log_text());
            }
            let up = netns::in_ns(ns, || {
                rt()?.block_on(async {
                    let mut c = connect().await?;
                    c.list_load_balancers(ListLoadBalancersRequest {}).await?;
                    Ok(())
                })
            });
            if up.is_ok() {
                return Ok(d);
            }
            ensure!(
                Instant::now() < deadline,
                "loxilight did not answer within 30 s:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Creates every rule with pipelined CreateLoadBalancer calls on one
    /// connection; returns the wall time from the first call to the last answer.
    pub fn program(&self, requests: Vec<CreateLoadBalancerRequest>) -> Result<Duration> {
        let n = requests.len();
        netns::in_ns(&self.ns, || {
            rt()?.block_on(async {
                let client = connect().await?;
                let t0 = Instant::now();
                let mut answers = futures::stream::iter(requests)
                    .map(|r| {
                        let mut c = client.clone();
                        async move { c.create_load_balancer(r).await }
                    })
                    .buffer_unordered(PIPELINE);
                while let Some(a) = answers.next().await {
                    a.context("CreateLoadBalancer")?;
                }
                Ok(t0.elapsed())
            })
        })
        .with_context(|| format!("programming {n} rules"))
    }

    /// Tracked flows: each flow is two entries, one per direction.
    pub fn conntrack_flows(&self) -> Result<u64> {
        let map = MapHandle::from_pinned_path(self.pin_dir.join("ll_conntrack"))
            .context("opening the pinned conntrack map")?;
        Ok(map.keys().count() as u64 / 2)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        netns::terminate(&mut self.child, Duration::from_secs(10));
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}

fn rt() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

async fn connect() -> Result<LoadBalancerServiceClient<Channel>> {
    let ch = Endpoint::from_static(API)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await?;
    Ok(LoadBalancerServiceClient::new(ch))
}
