//! Where and how the API is served: a TCP address, plain or TLS (optionally
//! requiring client certificates), or a Unix socket for local use.
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer};
use tokio::net::{TcpListener, UnixListener};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// `HOST:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/loxilight/api.sock".into());
            }
            return Ok(ListenAddr::Unix(path.into()));
        }
        s.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("{s:?} is neither ADDRESS:PORT nor unix:PATH"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The server's certificate chain and key, and the CA that client
/// certificates must chain to (mutual TLS) if any; all PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads and checks the files, so that a bad one fails the start.
    pub fn load(&self) -> anyhow::Result<ServerTlsConfig> {
        let read = |p: &Path, what: &str| {
            std::fs::read(p).with_context(|| format!("reading the TLS {what} {}", p.display()))
        };
        let identity =
            Identity::from_pem(read(&self.cert, "certificate")?, read(&self.key, "key")?);
        let mut cfg = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            cfg = cfg.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
        }
        Server::builder().tls_config(cfg.clone()).with_context(|| {
            format!(
                "loading the TLS certificate {} and key {}",
                self.cert.display(),
                self.key.display()
            )
        })?;
        Ok(cfg)
    }
}

/// Anyone who reaches a plaintext API can change the rules, so it is served
/// on a network address only when asked for explicitly.
pub fn check_exposure(
    addr: &ListenAddr,
    tls: Option<&TlsFiles>,
    insecure: bool,
) -> anyhow::Result<()> {
    match (addr, tls) {
        (ListenAddr::Unix(_), Some(_)) => {
            bail!("TLS is for TCP listeners: a unix socket is guarded by its file permissions")
        }
        (ListenAddr::Tcp(a), None) if !a.ip().is_loopback() && !insecure => bail!(
            "refusing to serve the API in plaintext on {a}, which is not a loopback address: \
             give --tls-cert and --tls-key, or --insecure"
        ),
        (ListenAddr::Tcp(a), Some(t)) if t.client_ca.is_none() && !a.ip().is_loopback() => {
            tracing::warn!(
                listen = %a,
                "TLS without --tls-client-ca: any client that reaches this address can change the rules"
            );
        }
        _ => {}
    }
    Ok(())
}

/// A bound API listener.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

/// Removes the socket file when the daemon stops serving.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    pub async fn bind(addr: &ListenAddr) -> anyhow::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a}"))?,
            )),
            ListenAddr::Unix(p) => bind_unix(p).await,
        }
    }
}

async fn bind_unix(path: &Path) -> anyhow::Result<Listener> {
    let fail = || format!("cannot listen on unix:{}", path.display());
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{}: the path exists and is not a socket", fail());
        }
        // A socket nobody answers on is left over from a daemon that died.
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!("{}: another process is serving on it", fail());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("{}: removing the stale socket", fail()))?;
    }
    let listener = UnixListener::bind(path).with_context(fail)?;
    let file = SocketFile(path.to_owned());
    // Connecting needs write access: owner and group only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).with_context(fail)?;
    Ok(Listener::Unix(listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsFiles {
        TlsFiles {
            cert: "c".into(),
            key: "k".into(),
            client_ca: None,
        }
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "127.0.0.1:1".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:1".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/x.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/run/x.sock".into()))
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("localhost".parse::<ListenAddr>().is_err());
        assert_eq!(
            ListenAddr::Unix("/a".into()).to_string(),
            "unix:/a",
            "shown as given"
        );
    }

    #[test]
    fn plaintext_only_on_loopback_unless_insecure() {
        let lo: ListenAddr = "127.0.0.1:1".parse().unwrap();
        let lo6: ListenAddr = "[::1]:1".parse().unwrap();
        let any: ListenAddr = "0.0.0.0:1".parse().unwrap();
        let unix: ListenAddr = "unix:/x".parse().unwrap();
        assert!(check_exposure(&lo, None, false).is_ok());
        assert!(check_exposure(&lo6, None, false).is_ok());
        assert!(check_exposure(&unix, None, false).is_ok());
        let err = check_exposure(&any, None, false).unwrap_err().to_string();
        assert!(err.contains("--insecure"), "{err}");
        assert!(check_exposure(&any, None, true).is_ok());
        assert!(check_exposure(&any, Some(&tls()), false).is_ok());
        assert!(check_exposure(&unix, Some(&tls()), false).is_err());
    }
}
