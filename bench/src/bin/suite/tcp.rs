//! Short-lived TCP connections: a minimal HTTP/1.0-style server on each
//! backend (answers, then closes), and clients that measure connections per
//! second (closed loop) and request latency at a fixed rate (open loop).
//! Each runs on a thread of its own inside its namespace, on a
//! single-threaded tokio runtime, so the sockets belong to that namespace.
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

use crate::cpu::{self, Meter};
use crate::netns;
use crate::services::TCP_PORT;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
/// A request that takes longer counts as failed.
const TIMEOUT: Duration = Duration::from_secs(2);

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

/// The HTTP server of one backend; stops on drop.
pub struct Server {
    /// The thread that serves, for CPU accounting.
    pub tid: i32,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on every address of `ns` (so on its whole endpoint /16) and
    /// answers with `name`, on `cpu`.
    pub fn start(ns: &str, name: &'static str, cpu: usize) -> Result<Server> {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<Result<i32>>();
        let (ns, name_of_ns) = (ns.to_owned(), ns.to_owned());
        let thread = std::thread::spawn(move || {
            let setup = || -> Result<(tokio::runtime::Runtime, TcpListener)> {
                netns::enter(&ns)?;
                cpu::pin_current_thread(cpu)?;
                let rt = runtime()?;
                let listener = rt.block_on(async {
                    let s = TcpSocket::new_v4()?;
                    s.set_reuseaddr(true)?;
                    s.bind(SocketAddr::from(([0, 0, 0, 0], TCP_PORT)))?;
                    s.listen(4096)
                })?;
                Ok((rt, listener))
            };
            let (rt, listener) = match setup() {
                Ok(v) => v,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(cpu::gettid()));
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                name.len()
            );
            let response: &'static [u8] = Box::leak(response.into_bytes().into_boxed_slice());
            rt.block_on(async move {
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => drop(tokio::spawn(answer(stream, response))),
                            // Out of descriptors or memory: let connections finish.
                            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                        }
                    }
                }
            });
        });
        let tid = ready
            .recv()
            .map_err(|_| anyhow!("the server thread died"))?
            .with_context(|| format!("starting the HTTP server in {name_of_ns}"))?;
        Ok(Server {
            tid,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn answer(mut stream: TcpStream, response: &'static [u8]) {
    let mut buf = [0u8; 1024];
    let mut n = 0;
    let read = async {
        while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
            match stream.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => n += k,
            }
        }
        true
    };
    if tokio::time::timeout(TIMEOUT, read).await == Ok(true) {
        let _ = stream.write_all(response).await;
    }
}

/// One short-lived connection: connect, ask, read the answer to the end.
async fn request(addr: SocketAddrV4) -> Result<()> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(REQUEST).await?;
        let mut buf = [0u8; 512];
        let mut n = 0;
        loop {
            match s.read(&mut buf[n..]).await? {
                0 => break,
                k => n += k,
            }
            if n == buf.len() {
                break;
            }
        }
        if !buf[..n].starts_with(b"HTTP/1.1 200 ") {
            bail!("bad answer {:?}", String::from_utf8_lossy(&buf[..n]));
        }
        Ok(())
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no answer within {TIMEOUT:?}"))?
}

/// A single request from the client namespace: proves the path works.
pub fn probe(ns: &str, addr: SocketAddrV4) -> Result<()> {
    netns::in_ns(ns, || runtime()?.block_on(request(addr)))
        .with_context(|| format!("HTTP request to {addr}"))
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub window: Duration,
}

pub struct ConnRate {
    /// Connections completed per second of the CPU time the client, the
    /// servers and the softirq work got (see cpu.rs).
    pub per_cpu_second: f64,
    /// Connections per second, wall clock.
    pub per_second: f64,
    /// CPU seconds the work got per second of the window.
    pub cpu_share: f64,
    pub errors: u64,
}

/// Connections per second with `concurrency` clients each running one
/// connection after another over `targets`, counted over the window that
/// follows the warm-up. The client runs on `cpu`, with the servers, so the
/// whole exchange (and the forwarding in softirq) stays on that CPU;
/// `meter` covers the servers and that CPU's softirq work, the client's own
/// thread is added here.
pub fn conn_rate(
    ns: &str,
    targets: &[SocketAddrV4],
    concurrency: usize,
    t: Timing,
    cpu: usize,
    meter: Meter,
) -> Result<ConnRate> {
    netns::in_ns(ns, || {
        cpu::pin_current_thread(cpu)?;
        let meter = meter.thread(cpu::gettid());
        runtime()?.block_on(async {
            let start = Instant::now();
            let (from, to) = (start + t.warmup, start + t.warmup + t.window);
            let next = Arc::new(AtomicUsize::new(0));
            let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let targets: Arc<[SocketAddrV4]> = targets.into();
            let workers: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (next, done, errors, targets) =
                        (next.clone(), done.clone(), errors.clone(), targets.clone());
                    tokio::spawn(async move {
                        while Instant::now() < to {
                            let addr =
                                targets[next.fetch_add(1, Ordering::Relaxed) % targets.len()];
                            let ok = request(addr).await.is_ok();
                            let now = Instant::now();
                            if now >= from && now <= to {
                                match ok {
                                    true => done.fetch_add(1, Ordering::Relaxed),
                                    false => errors.fetch_add(1, Ordering::Relaxed),
                                };
                            }
                        }
                    })
                })
                .collect();
            tokio::time::sleep_until(from.into()).await;
            let c0 = meter.read();
            tokio::time::sleep_until(to.into()).await;
            let c1 = meter.read();
            for w in workers {
                w.await?;
            }
            netns::check_interrupted()?;
            let done = done.load(Ordering::Relaxed) as f64;
            let cpu = (c1 - c0) as f64 / 1e9;
            Ok(ConnRate {
                per_cpu_second: done / cpu.max(1e-9),
                per_second: done / t.window.as_secs_f64(),
                cpu_share: cpu / t.window.as_secs_f64(),
                errors: errors.load(Ordering::Relaxed),
            })
        })
    })
}

pub struct Latency {
    /// Microseconds.
    pub p50: f64,
    pub p99: f64,
    pub samples: usize,
    pub errors: u64,
    /// The share of `cpu` that other tasks (or the hypervisor) took during
    /// the window: latency is wall-clock time and suffers from them.
    pub others_cpu_share: f64,
}

/// Request latency (connect to the answer's last byte) at `rate` requests
/// per second, started on a timer whatever the answers do (open loop); the
/// client runs on `cpu`, with the servers. `meter`: as for [`conn_rate`].
pub fn latency(
    ns: &str,
    targets: &[SocketAddrV4],
    rate: f64,
    t: Timing,
    cpu: usize,
    meter: Meter,
) -> Result<Latency> {
    netns::in_ns(ns, || {
        cpu::pin_current_thread(cpu)?;
        let meter = meter.thread(cpu::gettid());
        runtime()?.block_on(async {
            let start = Instant::now();
            let (from, to) = (start + t.warmup, start + t.warmup + t.window);
            let samples = Arc::new(Mutex::new(Vec::new()));
            let errors = Arc::new(AtomicU64::new(0));
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = Vec::new();
            let mut window_start = None;
            for i in 0.. {
                let now = tick.tick().await.into_std();
                if now >= to {
                    break;
                }
                if now >= from && window_start.is_none() {
                    window_start = Some((Instant::now(), meter.read(), cpu::busy_ns(cpu)));
                }
                let addr = targets[i % targets.len()];
                let (samples, errors) = (samples.clone(), errors.clone());
                let counted = now >= from;
                tasks.push(tokio::spawn(async move {
                    let began = Instant::now();
                    let ok = request(addr).await.is_ok();
                    let us = began.elapsed().as_secs_f64() * 1e6;
                    match (counted, ok) {
                        (false, _) => {}
                        (true, true) => samples.lock().expect("samples").push(us),
                        (true, false) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            let (w0, ours0, busy0) = window_start.context("the window never started")?;
            let (ours, busy) = (
                meter.read() - ours0,
                cpu::busy_ns(cpu).saturating_sub(busy0),
            );
            let others = busy.saturating_sub(ours) as f64 / 1e9 / w0.elapsed().as_secs_f64();
            for task in tasks {
                task.await?;
            }
            netns::check_interrupted()?;
            let mut v = std::mem::take(&mut *samples.lock().expect("samples"));
            if v.is_empty() {
                bail!("no request succeeded");
            }
            v.sort_by(f64::total_cmp);
            let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
            Ok(Latency {
                p50: pct(0.5),
                p99: pct(0.99),
                samples: v.len(),
                errors: errors.load(Ordering::Relaxed),
                others_cpu_share: others.min(1.0),
            })
        })
    })
}
