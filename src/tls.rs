//! TLS with rustls (ring provider): the server configuration for STARTTLS
//! on our listeners, the opportunistic client configuration for delivery
//! and call-ahead, certificate pinning (SPKI SHA-256), and a stream type
//! that is either plain TCP or TLS over it.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_net::TcpStream;
use futures_lite::{AsyncRead, AsyncWrite};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads `cert` (PEM chain) and `key` (PEM private key) into a server
/// configuration for TLS 1.2 and 1.3. Errors say which file is wrong.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate file {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate file {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("bad private key file {}: {e}", key.display()))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            format!(
                "certificate {} and key {} do not match or are unusable: {e}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(cfg))
}

/// Opportunistic TLS, as MTAs do between each other (RFC 7435): any
/// certificate is accepted here, but the handshake signatures are still
/// verified, so a pinned key (checked after the handshake) proves the peer
/// holds it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration for delivery and call-ahead.
pub fn client_config() -> Result<Arc<ClientConfig>, String> {
    let p = provider();
    let cfg = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(p)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The name to send in SNI: the host name, or the address.
pub fn server_name(host: &str, ip: std::net::IpAddr) -> ServerName<'static> {
    ServerName::try_from(host.to_string()).unwrap_or(ServerName::IpAddress(ip.into()))
}

/// Reads one DER TLV at the start of `b`: (tag, content, rest).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    Some((tag, b.get(hdr..end)?, b.get(end..)?))
}

/// The DER of the certificate's SubjectPublicKeyInfo (RFC 5280 4.1).
pub fn spki(cert: &[u8]) -> Option<&[u8]> {
    let (_, certificate, _) = der(cert)?;
    let (_, tbs, _) = der(certificate)?;
    let mut rest = tbs;
    // version [0] EXPLICIT is optional.
    if rest.first() == Some(&0xa0) {
        rest = der(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        rest = der(rest)?.2;
    }
    let before = rest;
    let (tag, _, after) = der(rest)?;
    (tag == 0x30).then(|| &before[..before.len() - after.len()])
}

/// `sha256:BASE64` of the certificate's SPKI, as `tls_pin` is written.
pub fn pin_of(cert: &[u8]) -> Option<String> {
    let d = ring::digest::digest(&ring::digest::SHA256, spki(cert)?);
    Some(format!("sha256:{}", crate::base64::encode(d.as_ref())))
}

/// Input read and dropped after our last reply, at most.
pub const LINGER_BYTES: usize = 64 * 1024;
/// How long we wait for the peer to close after our last reply.
pub const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// A connection: plain TCP, or TLS over it after STARTTLS.
pub enum Stream {
    Plain(TcpStream),
    Server(Box<futures_rustls::server::TlsStream<TcpStream>>),
    Client(Box<futures_rustls::client::TlsStream<TcpStream>>),
    /// Only while a handshake owns the socket.
    Gone,
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Server(_) | Stream::Client(_))
    }

    /// STARTTLS on our side: the handshake as a server.
    pub async fn accept_tls(&mut self, cfg: Arc<ServerConfig>) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Gone) else {
            return Err(io::Error::other("TLS is already active"));
        };
        let tls = futures_rustls::TlsAcceptor::from(cfg).accept(tcp).await?;
        *self = Stream::Server(Box::new(tls));
        Ok(())
    }

    /// STARTTLS as a client.
    pub async fn connect_tls(
        &mut self,
        cfg: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Gone) else {
            return Err(io::Error::other("TLS is already active"));
        };
        let tls = futures_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        *self = Stream::Client(Box::new(tls));
        Ok(())
    }

    /// Closes our side, then reads and drops what the peer still sends
    /// (at most `LINGER_BYTES`, for `LINGER_TIME`): closing a socket with
    /// unread input makes the kernel send a reset, which can destroy our
    /// last reply (a 421, a refusal) before the client read it.
    pub async fn linger_close(&mut self) {
        use futures_lite::{AsyncReadExt, AsyncWriteExt};
        match self {
            Stream::Plain(t) => {
                let _ = t.shutdown(std::net::Shutdown::Write);
            }
            _ => {
                let _ = self.close().await;
            }
        }
        let mut buf = [0u8; 4096];
        let mut left = LINGER_BYTES;
        let drain = async {
            while left > 0 {
                match self.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        futures_lite::future::or(drain, async {
            smol::Timer::after(LINGER_TIME).await;
        })
        .await;
    }

    /// The server's leaf certificate (client side, after the handshake).
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match self {
            Stream::Client(t) => t
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec()),
            _ => None,
        }
    }

    /// `TLSv1_3 TLS13_AES_256_GCM_SHA384` style, for the log.
    pub fn tls_info(&self) -> Option<String> {
        let (v, s) = match self {
            Stream::Server(t) => {
                let c = t.get_ref().1;
                (c.protocol_version(), c.negotiated_cipher_suite())
            }
            Stream::Client(t) => {
                let c = t.get_ref().1;
                (c.protocol_version(), c.negotiated_cipher_suite())
            }
            _ => return None,
        };
        Some(format!("{:?} {:?}", v?, s.map(|s| s.suite())?))
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection lost in a TLS handshake",
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undecodable_certificate_is_an_error_naming_both_files() {
        // Valid PEM armour and base64 around bytes that are no certificate:
        // only the TLS setup can tell, and the operator must learn which file.
        let dir = std::env::temp_dir().join(format!("mxspool-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = server_config(&cert, &key).err().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(e.contains("c.pem") && e.contains("k.pem"), "{e}");
    }

    #[test]
    fn der_reader_refuses_truncated_input() {
        assert!(der(&[0x30]).is_none());
        assert!(der(&[0x30, 0x05, 1, 2]).is_none());
        assert!(der(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(spki(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_none());
    }
}
