//! The probes. Each returns Ok when the endpoint answered as expected, or
//! what went wrong; the caller bounds it with a timeout.
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::rules::{EndpointProbe, ProbeType};

/// Probes `p` once; `wait` is how long a udp probe waits for an answer.
pub async fn probe(p: &EndpointProbe, wait: Duration) -> Result<(), String> {
    let addr = SocketAddr::from((p.ip, p.port));
    match p.probe {
        ProbeType::Ping => ping(p.ip).await.map_err(|e| format!("ping: {e}")),
        ProbeType::Tcp => TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}")),
        ProbeType::Udp => udp(addr, &p.request, &p.response, wait).await,
        ProbeType::Http => {
            let s = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            http(s, p).await
        }
        ProbeType::Https => {
            let s = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let name = rustls::pki_types::ServerName::IpAddress(p.ip.into());
            let tls = tokio_rustls::TlsConnector::from(tls_config()?)
                .connect(name, s)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            http(tls, p).await
        }
    }
}

/// Sends `request` and reads the answer. No answer within `wait` is a
/// success when no `response` is expected: a closed port answers with an
/// ICMP port unreachable, which the connected socket reports as refused.
async fn udp(
    addr: SocketAddr,
    request: &str,
    response: &str,
    wait: Duration,
) -> Result<(), String> {
    let any = match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let s = UdpSocket::bind((any, 0))
        .await
        .map_err(|e| format!("socket: {e}"))?;
    s.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    s.send(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(wait, s.recv(&mut buf)).await {
        Ok(Ok(n)) if String::from_utf8_lossy(&buf[..n]).contains(response) => Ok(()),
        Ok(Ok(_)) => Err(format!("the answer does not contain {response:?}")),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err("port unreachable".into())
        }
        Ok(Err(e)) => Err(format!("recv: {e}")),
        Err(_) if response.is_empty() => Ok(()),
        Err(_) => Err("no answer".into()),
    }
}

/// The largest answer read; enough for a status line and a health page.
const MAX_ANSWER: u64 = 64 * 1024;

/// GET of the probe's path over `s`: a 2xx status, and the body contains
/// the expected response (if any).
async fn http(mut s: impl AsyncRead + AsyncWrite + Unpin, p: &EndpointProbe) -> Result<(), String> {
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: loxilight-probe\r\nConnection: close\r\n\r\n",
        p.request, p.ip
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    // A peer that closes without TLS close_notify still gave us its answer.
    if let Err(e) = (&mut s).take(MAX_ANSWER).read_to_end(&mut answer).await {
        if answer.is_empty() {
            return Err(format!("read: {e}"));
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/") || !code.starts_with('2') {
        return Err(format!("answer {status:?}"));
    }
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if !body.contains(p.response.as_str()) {
        return Err(format!("the body does not contain {:?}", p.response));
    }
    Ok(())
}

/// TLS for https probes. The certificate is NOT verified: a probe asks
/// whether the endpoint serves, and endpoints behind a load balancer
/// commonly have certificates for the service's name, self-signed ones, or
/// none that an IP address could match.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Ok(Arc::new(cfg))
        })
        .clone()
}

/// Accepts any certificate, but still checks the handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// ICMP or ICMPv6 echo over a raw socket (the daemon runs as root),
/// connected to the endpoint so that the kernel hands it only that
/// address's messages.
async fn ping(ip: IpAddr) -> io::Result<()> {
    static SEQ: AtomicU16 = AtomicU16::new(0);
    let (domain, proto) = match ip {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the OwnedFd stays open, and is the same fd, as long as the AsyncFd owns it.
    let sock = unsafe { AsyncFd::register(owned) }.map_err(io::Error::from)?;
    let rc = match ip {
        IpAddr::V4(v4) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(v4).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sa is a valid sockaddr_in of the length given.
            unsafe {
                libc::connect(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        IpAddr::V6(v6) => {
            // SAFETY: a zeroed sockaddr_in6 is valid; family and address set below.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = v6.octets();
            // SAFETY: sa is a valid sockaddr_in6 of the length given.
            unsafe {
                libc::connect(
                    fd,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let v6 = ip.is_ipv6();
    let id = std::process::id() as u16;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let req = echo_request(v6, id, seq);
    sock.async_io(tokio::io::Interest::WRITABLE, |fd| {
        // SAFETY: req is a valid buffer of its length.
        let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    })
    .await?;
    let mut buf = [0u8; 1500];
    loop {
        let n = sock
            .async_io(tokio::io::Interest::READABLE, |fd| {
                // SAFETY: buf is a valid, writable buffer of its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            })
            .await?;
        if is_echo_reply(v6, &buf[..n], id, seq) {
            return Ok(());
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP (v6: ICMPv6) echo request. The kernel checksums ICMPv6 on raw
/// sockets (its pseudo-header holds addresses the socket chooses).
fn echo_request(v6: bool, id: u16, seq: u16) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = if v6 { 128 } else { 8 };
    m[4..6].copy_from_slice(&id.to_be_bytes());
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    m[8..].copy_from_slice(b"loxiprob");
    if !v6 {
        let c = checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
    }
    m
}

/// Whether a raw socket's packet is the reply: ICMP after the IP header
/// (IPv4), ICMPv6 alone (IPv6).
fn is_echo_reply(v6: bool, pkt: &[u8], id: u16, seq: u16) -> bool {
    let icmp = if v6 {
        Some(pkt)
    } else {
        pkt.first()
            .and_then(|&vihl| pkt.get(usize::from(vihl & 0xf) * 4..))
    };
    icmp.is_some_and(|icmp| {
        icmp.len() >= 8
            && icmp[0] == if v6 { 129 } else { 0 }
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero() {
        let m = echo_request(false, 0x1234, 7);
        assert_eq!(checksum(&m), 0);
        assert_eq!((m[0], &m[4..8]), (8, &[0x12, 0x34, 0, 7][..]));
        assert_eq!(echo_request(true, 0x1234, 7)[0], 128, "ICMPv6");
    }

    #[test]
    fn only_our_echo_reply_counts() {
        let mut pkt = vec![0x45u8];
        pkt.resize(20, 0);
        pkt.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 7]);
        assert!(is_echo_reply(false, &pkt, 0x1234, 7));
        assert!(!is_echo_reply(false, &pkt, 0x1234, 8));
        pkt[20] = 8;
        assert!(
            !is_echo_reply(false, &pkt, 0x1234, 7),
            "a request is no reply"
        );
        assert!(!is_echo_reply(false, &pkt[..24], 0x1234, 7));
        assert!(
            !is_echo_reply(false, &[0x4f], 0x1234, 7),
            "an IHL past the end"
        );
        // ICMPv6 comes without its IP header.
        let reply6 = [129, 0, 0, 0, 0x12, 0x34, 0, 7];
        assert!(is_echo_reply(true, &reply6, 0x1234, 7));
        assert!(!is_echo_reply(
            true,
            &[128, 0, 0, 0, 0x12, 0x34, 0, 7],
            0x1234,
            7
        ));
    }
}
