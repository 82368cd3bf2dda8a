//! TLS for PostgreSQL connections: libpq's `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey` on rustls (with the ring provider), for the
//! synchronous `postgres` driver.
//!
//! tokio-postgres itself knows only `sslmode=disable|prefer|require` and
//! refuses `verify-ca`, `verify-full` and the certificate parameters, so
//! [`parse`] takes those out of the URL, gives the rest to tokio-postgres
//! with the `sslmode` its handshake needs, and builds a [`Tls`] connector
//! that checks what libpq would check:
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow`, `prefer` (default) | if the server offers it | nothing; the chain, if `sslrootcert` is given |
//! | `require` | always | nothing; the chain, if `sslrootcert` is given |
//! | `verify-ca` | always | the chain up to a root |
//! | `verify-full` | always | the chain, and that it names the host |
//!
//! The roots are the certificates in the PEM file `sslrootcert`, else the
//! system's (also when `sslrootcert=system`, which, as in libpq 16, makes
//! `verify-full` the default and any weaker mode an error). libpq's default
//! files under `~/.postgresql/` are not read. `sslcert` and `sslkey` (PEM;
//! PKCS#8, PKCS#1 or SEC1 keys, unencrypted) give a client certificate. As
//! in libpq, `sslmode` is ignored when every host is a Unix socket.
//!
//! The connector also gives tokio-postgres the server certificate's hash
//! (RFC 5929 `tls-server-end-point`), so SCRAM channel binding works.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::config::{Host, SslMode};
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a PostgreSQL URL asks for, after the TLS parameters are taken out.
#[derive(Debug)]
pub struct PgConnect {
    /// The rest of the URL, with tokio-postgres's own `sslmode` set to
    /// what the handshake needs (`disable`, `prefer` or `require`).
    pub config: postgres::Config,
    /// The connector to pass to `config.connect`.
    pub tls: Tls,
}

/// Parses a `postgresql://` URL or a `key=value` connection string,
/// including `sslmode`, `sslrootcert`, `sslcert` and `sslkey`, and reads
/// the certificate files it names. Errors are one line and never quote
/// the password.
pub fn parse(url: &str) -> Result<PgConnect, String> {
    let (rest, params) = take_tls_params(url)?;
    let mut wanted = Wanted::default();
    for (key, value) in params {
        // An empty value means "not set", as in libpq; the last one wins.
        let value = Some(value).filter(|v| !v.is_empty());
        match key.as_str() {
            "sslmode" => wanted.sslmode = value,
            "sslrootcert" => wanted.rootcert = value,
            "sslcert" => wanted.cert = value,
            _ => wanted.key = value,
        }
    }
    let mut config: postgres::Config = rest
        .parse()
        .map_err(|e| format!("not a PostgreSQL URL ({})", error_line(&e)))?;
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(
            "names no host; write postgresql://USER@HOST[:PORT]/DATABASE (or ?host=/run/postgresql for a Unix socket)"
                .to_string(),
        );
    }
    let mut mode = Mode::resolve(wanted.sslmode.as_deref(), wanted.rootcert.as_deref())?;

    // libpq never uses TLS on a Unix socket, whatever sslmode says; to
    // tokio-postgres a required TLS there is an error, so turn it off.
    let over_tcp = !config.get_hostaddrs().is_empty()
        || config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)));
    if !over_tcp {
        mode = Mode::Disable;
    }
    config.ssl_mode(match mode {
        Mode::Disable => SslMode::Disable,
        Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
    });
    let tls = Tls::new(mode, &wanted)?;
    Ok(PgConnect { config, tls })
}

/// The TLS parameters as given (not yet checked).
#[derive(Default)]
struct Wanted {
    sslmode: Option<String>,
    rootcert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

/// The parameters this module handles; tokio-postgres sees none of them.
const TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn resolve(sslmode: Option<&str>, rootcert: Option<&str>) -> Result<Mode, String> {
        let system_roots = rootcert == Some("system");
        let mode = match sslmode {
            // A public CA will sign a certificate for any name its owner
            // controls, so with the system's roots only the host name check
            // means anything (libpq 16 decided the same).
            None if system_roots => Mode::VerifyFull,
            None => Mode::Prefer,
            Some("disable") => Mode::Disable,
            // "allow" tries plaintext first and TLS second. tokio-postgres
            // cannot do that; TLS first succeeds wherever "allow" would.
            Some("allow" | "prefer") => Mode::Prefer,
            Some("require") => Mode::Require,
            Some("verify-ca") => Mode::VerifyCa,
            Some("verify-full") => Mode::VerifyFull,
            Some(other) => {
                return Err(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        };
        if system_roots && mode != Mode::VerifyFull {
            return Err(format!(
                "sslmode={} is too weak for sslrootcert=system (use sslmode=verify-full)",
                sslmode.unwrap_or("prefer")
            ));
        }
        Ok(mode)
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }
}

/// The connector to pass to `postgres::Config::connect`: a TLS handshake
/// per connection, with one rustls configuration shared by all of them.
#[derive(Clone)]
pub struct Tls {
    mode: Mode,
    /// None under `sslmode=disable`, where tokio-postgres never asks for a
    /// handshake (it still asks for a connector).
    rustls: Option<Arc<ClientConfig>>,
    hints: Hints,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("sslmode", &self.mode.name())
            .field("roots", &self.hints.roots)
            .finish_non_exhaustive()
    }
}

impl Tls {
    fn new(mode: Mode, wanted: &Wanted) -> Result<Tls, String> {
        if mode == Mode::Disable {
            return Ok(Tls {
                mode,
                rustls: None,
                hints: Hints::default(),
            });
        }
        let rootcert = wanted.rootcert.as_deref();
        // As in libpq, naming a root file makes prefer and require check the
        // chain too (libpq checks whenever it has a root file).
        let checks_chain = match mode {
            Mode::VerifyCa | Mode::VerifyFull => true,
            _ => rootcert.is_some(),
        };
        let (roots, described) = if !checks_chain {
            (None, None)
        } else if let Some(path) = rootcert.filter(|p| *p != "system") {
            (
                Some(file_roots(path)?),
                Some(format!("sslrootcert {path:?}")),
            )
        } else {
            (
                Some(system_roots()?),
                Some("the system's root certificates".to_string()),
            )
        };
        let client_auth = client_auth(wanted.cert.as_deref(), wanted.key.as_deref())?;
        let hints = Hints {
            roots: described.map(Arc::from),
            client_cert: client_auth.is_some(),
        };

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = match roots {
            Some(roots) if mode == Mode::VerifyFull => builder.with_root_certificates(roots),
            roots => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { roots, provider })),
        };
        let mut config = match client_auth {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("sslcert and sslkey: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        // PostgreSQL 17 requires this ALPN name on direct TLS connections
        // (sslnegotiation=direct) and accepts it on the others; older
        // servers ignore it. libpq 17 always sends it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Tls {
            mode,
            rustls: Some(Arc::new(config)),
            hints,
        })
    }
}

/// Reads a file named by a parameter, naming both if it cannot.
fn read_file(param: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{param} {path:?}: {e}"))
}

fn pem_error(param: &str, path: &str, e: pem::Error) -> String {
    let why = match e {
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".to_string(),
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".to_string(),
        pem::Error::Base64Decode(e) => format!("bad base64 in a PEM section ({e})"),
        other => other.to_string(),
    };
    format!("{param} {path:?}: {why}")
}

fn file_roots(path: &str) -> Result<RootCertStore, String> {
    let pem = read_file("sslrootcert", path)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| pem_error("sslrootcert", path, e))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {path:?}: certificate {}: {e}", i + 1))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "sslrootcert {path:?}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)"
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({})", one_line(e)))
            .unwrap_or_default();
        return Err(format!(
            "no system root certificates found{why}; name the server's CA with sslrootcert"
        ));
    }
    Ok(roots)
}

type ClientAuth = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_auth(cert: Option<&str>, key: Option<&str>) -> Result<Option<ClientAuth>, String> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => return Err("sslcert is set but sslkey is not".to_string()),
        (None, Some(_)) => return Err("sslkey is set but sslcert is not".to_string()),
    };
    let pem = read_file("sslcert", cert)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("sslcert", cert, e))?;
    if certs.is_empty() {
        return Err(format!(
            "sslcert {cert:?}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)"
        ));
    }
    let pem = read_file("sslkey", key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "sslkey {key:?}: no private key in it (expected an unencrypted PEM key: \
             \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")"
        ),
        e => pem_error("sslkey", key, e),
    })?;
    Ok(Some((certs, key)))
}

/// The verifier for every mode but verify-full: the chain up to the roots
/// when there are roots (verify-ca), nothing otherwise (prefer, require).
/// Either way the handshake's signatures are checked, so the server still
/// has to hold the key of the certificate it shows.
#[derive(Debug)]
struct ChainOnly {
    roots: Option<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Handshake;
    type Error = io::Error;

    /// `domain` is the `host` of the URL (not `hostaddr`), which is what
    /// the certificate must name; it is empty for a Unix socket.
    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Handshake> {
        let name = match ServerName::try_from(domain.to_string()) {
            Ok(name) => name,
            // Only verify-full looks at the name. For the other modes, an
            // address stands in: rustls sends no SNI for one.
            Err(_) if domain.is_empty() || self.mode != Mode::VerifyFull => {
                ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into())
            }
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "host {domain:?} is neither a DNS name nor an IP address, so sslmode=verify-full cannot check it"
                    ),
                ));
            }
        };
        Ok(Handshake {
            rustls: self.rustls.clone(),
            hints: self.hints.clone(),
            name,
        })
    }
}

/// One connection's TLS handshake.
pub struct Handshake {
    rustls: Option<Arc<ClientConfig>>,
    hints: Hints,
    name: ServerName<'static>,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<S> TlsConnect<S> for Handshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let Some(config) = self.rustls else {
                return Err(io::Error::other("TLS is off (sslmode=disable)"));
            };
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(self.name, stream)
                .await
                .map_err(|e| self.hints.explain(e))?;
            Ok(TlsStream {
                tls: stream,
                hints: self.hints,
            })
        })
    }
}

/// What a bare rustls error leaves out, for the messages of failed
/// connections.
#[derive(Clone, Debug, Default)]
struct Hints {
    /// Where the trusted roots came from; None when the server's
    /// certificate is not checked.
    roots: Option<Arc<str>>,
    /// Whether a client certificate is offered.
    client_cert: bool,
}

impl Hints {
    /// Says which roots a rejected certificate was checked against
    /// ("UnknownIssuer" alone does not tell a wrong sslrootcert from a
    /// missing system CA), and that an alert about a certificate is about
    /// ours, the server's answer to sslcert (with TLS 1.3 that answer comes
    /// after the handshake, on the first read).
    fn explain(&self, e: io::Error) -> io::Error {
        use AlertDescription as Alert;
        use CertificateError::{NotValidForName, NotValidForNameContext, Other};
        use rustls::Error::{AlertReceived, InvalidCertificate};
        let hint = match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            // The message already says which names the certificate has.
            Some(InvalidCertificate(NotValidForName | NotValidForNameContext { .. })) => None,
            // webpki refuses a CA certificate as the server's own, even when
            // it is the very root given: the usual self-signed certificate
            // made by `openssl req -x509`, which libpq accepts.
            Some(InvalidCertificate(Other(other)))
                if other.to_string().contains("CaUsedAsEndEntity") =>
            {
                let roots = self.roots.as_deref().unwrap_or("the roots");
                return io::Error::new(
                    e.kind(),
                    format!(
                        "invalid peer certificate: the server's certificate is a CA certificate \
                         (CaUsedAsEndEntity), which rustls does not accept as a server's; give \
                         the server a certificate signed by the CA in {roots}, or use sslmode=require"
                    ),
                );
            }
            Some(InvalidCertificate(_)) => {
                self.roots.as_ref().map(|r| format!("checked against {r}"))
            }
            Some(AlertReceived(
                Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::UnknownCA
                | Alert::AccessDenied,
            )) if self.client_cert => {
                Some("the server did not accept the client certificate in sslcert".to_string())
            }
            _ => None,
        };
        match hint {
            Some(hint) => io::Error::new(e.kind(), format!("{} ({hint})", one_line(&e))),
            None => e,
        }
    }
}

/// A TLS connection to the server.
pub struct TlsStream<S> {
    tls: tokio_rustls::client::TlsStream<S>,
    hints: Hints,
}

impl<S> fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream").finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.tls).poll_read(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.hints.explain(e))),
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, connection) = self.tls.get_ref();
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| tls_server_end_point(cert))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// The `tls-server-end-point` channel binding of RFC 5929: the server
/// certificate hashed with the hash of its own signature algorithm, SHA-256
/// standing in for MD5 and SHA-1. None for algorithms without one fixed
/// hash (RSA-PSS, Ed25519), which PostgreSQL cannot bind to either; SCRAM
/// then goes on without channel binding unless `channel_binding=require`.
fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use ring::digest::{SHA256, SHA384, SHA512};
    let hash = match signature_algorithm(cert)? {
        // 1.2.840.113549.1.1.n: md5 (4), sha1 (5), sha256 (11), sha384 (12)
        // and sha512 (13) WithRSAEncryption
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, n] => match n {
            4 | 5 | 11 => &SHA256,
            12 => &SHA384,
            13 => &SHA512,
            _ => return None,
        },
        // 1.2.840.10045.4.1: ecdsa-with-SHA1
        [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01] => &SHA256,
        // 1.2.840.10045.4.3.n: ecdsa-with-SHA256 (2), SHA384 (3), SHA512 (4)
        [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, n] => match n {
            2 => &SHA256,
            3 => &SHA384,
            4 => &SHA512,
            _ => return None,
        },
        _ => return None,
    };
    Some(ring::digest::digest(hash, cert).as_ref().to_vec())
}

/// The OID of a certificate's outer signatureAlgorithm:
/// `SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, .. }, .. }`.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (SEQUENCE, certificate, _) = der(cert)? else {
        return None;
    };
    let (SEQUENCE, _tbs, rest) = der(certificate)? else {
        return None;
    };
    let (SEQUENCE, algorithm, _) = der(rest)? else {
        return None;
    };
    let (OID, oid, _) = der(algorithm)? else {
        return None;
    };
    Some(oid)
}

/// Splits one DER element off the front: its tag, its contents, the rest.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len, rest) = rest.split_at(n);
        (
            len.iter().fold(0, |acc, &b| acc << 8 | usize::from(b)),
            rest,
        )
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// Splits the TLS parameters off a URL or `key=value` string: the string
/// for tokio-postgres, and the TLS parameters with their values decoded.
/// Everything else is kept byte for byte, so tokio-postgres reads it (and
/// words its errors) exactly as it would have.
fn take_tls_params(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let rest = ["postgresql://", "postgres://"]
        .iter()
        .find_map(|prefix| url.strip_prefix(prefix));
    match rest {
        Some(rest) => take_url_params(url, url.len() - rest.len()),
        None => take_keyword_params(url),
    }
}

fn take_url_params(
    url: &str,
    after_scheme: usize,
) -> Result<(String, Vec<(String, String)>), String> {
    // tokio-postgres takes everything up to the first '@' as the user and
    // password, and the query from the first '?' after that; so do we.
    let rest = &url[after_scheme..];
    let host_start = after_scheme + rest.find('@').map_or(0, |at| at + 1);
    let Some(question) = url[host_start..].find('?') else {
        return Ok((url.to_string(), Vec::new()));
    };
    let query_start = host_start + question + 1;
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in url[query_start..].split('&') {
        let ours = pair.split_once('=').and_then(|(key, value)| {
            let key = percent_decode(key).ok()?;
            TLS_PARAMS.contains(&key.as_str()).then_some((key, value))
        });
        match ours {
            Some((key, value)) => {
                let value = percent_decode(value)
                    .map_err(|()| format!("{key}: not valid UTF-8 once percent-decoded"))?;
                taken.push((key, value));
            }
            None => kept.push(pair),
        }
    }
    let mut rest = url[..query_start - 1].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, taken))
}

fn percent_decode(s: &str) -> Result<String, ()> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ())
}

/// The `key=value` form, read as tokio-postgres reads it: whitespace
/// between pairs and around '=', values plain or in single quotes, a
/// backslash escaping the next character.
fn take_keyword_params(s: &str) -> Result<(String, Vec<(String, String)>), String> {
    let bad = |why: &str| format!("not a PostgreSQL URL or connection string ({why})");
    let mut kept = String::new();
    let mut taken = Vec::new();
    let mut copied_to = 0;
    let mut chars = s.char_indices().peekable();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut chars);
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|&(_, c)| !c.is_whitespace() && c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            // tokio-postgres stops reading here too, ignoring the rest.
            break;
        }
        skip_ws(&mut chars);
        // Errors give places, not text: a stray word may be part of a
        // password written without quotes.
        if chars.next_if(|&(_, c)| c == '=').is_none() {
            let at = chars.peek().map_or(s.len(), |&(i, _)| i);
            return Err(bad(&format!("expected '=' at byte {at}")));
        }
        skip_ws(&mut chars);
        let mut value = String::new();
        if chars.next_if(|&(_, c)| c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                    Some((_, c)) => value.push(c),
                    None => return Err(bad("a quoted value has no closing quote")),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next().map(|(_, c)| c));
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(bad(&format!("no value at byte {}", s.len())));
            }
        }
        if TLS_PARAMS.contains(&key.as_str()) {
            let end = chars.peek().map_or(s.len(), |&(i, _)| i);
            kept.push_str(&s[copied_to..start]);
            copied_to = end;
            taken.push((key, value));
        }
    }
    kept.push_str(&s[copied_to..]);
    Ok((kept, taken))
}

/// A driver error with its causes, on one line: tokio-postgres words the
/// cause of a failed handshake ("invalid peer certificate: ...") only in
/// its source, not in its own message.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = one_line(e);
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = one_line(cause);
        // Some errors repeat their source in their own message.
        if !line.ends_with(&cause_text) {
            line.push_str(": ");
            line.push_str(&cause_text);
        }
        source = cause.source();
    }
    line
}

fn one_line(e: &dyn fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Vec<(String, String)>) {
        take_tls_params(url).unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tls_params_leave_a_url_and_the_rest_is_kept_verbatim() {
        assert_eq!(
            split(
                "postgresql://u:p%40ss@h:5433/db?application_name=a%20b&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&connect_timeout=3"
            ),
            (
                "postgresql://u:p%40ss@h:5433/db?application_name=a%20b&connect_timeout=3"
                    .to_string(),
                pairs(&[("sslmode", "verify-full"), ("sslrootcert", "/tmp/ca.pem")])
            )
        );
        assert_eq!(
            split("postgres://h/db?sslmode=require"),
            (
                "postgres://h/db".to_string(),
                pairs(&[("sslmode", "require")])
            )
        );
        assert_eq!(
            split("postgresql://h/db"),
            ("postgresql://h/db".to_string(), vec![])
        );
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        assert_eq!(
            split("postgresql://u:a?sslmode=disable@h/db?sslmode=require"),
            (
                "postgresql://u:a?sslmode=disable@h/db".to_string(),
                pairs(&[("sslmode", "require")])
            )
        );
    }

    #[test]
    fn tls_params_leave_a_keyword_string() {
        assert_eq!(
            split(
                r"host=h  sslmode = verify-ca password='it\'s' sslrootcert='/a b/c\'d.pem' dbname=x"
            ),
            (
                r"host=h   password='it\'s'  dbname=x".to_string(),
                pairs(&[("sslmode", "verify-ca"), ("sslrootcert", "/a b/c'd.pem")])
            )
        );
        assert_eq!(
            split(r"sslkey=/k\ ey user=u"),
            (" user=u".to_string(), pairs(&[("sslkey", "/k ey")]))
        );
    }

    #[test]
    fn modes_reach_tokio_postgres_as_it_understands_them() {
        let mode = |url: &str| parse(url).unwrap().config.get_ssl_mode();
        assert_eq!(mode("postgresql://h/db"), SslMode::Prefer);
        assert_eq!(mode("postgresql://h/db?sslmode=allow"), SslMode::Prefer);
        assert_eq!(mode("postgresql://h/db?sslmode=disable"), SslMode::Disable);
        assert_eq!(mode("postgresql://h/db?sslmode=require"), SslMode::Require);
        assert_eq!(mode("host=h sslmode=verify-full"), SslMode::Require);
        // Only Unix sockets: libpq ignores sslmode there.
        assert_eq!(
            mode("host=/run/postgresql sslmode=verify-full"),
            SslMode::Disable
        );
        assert_eq!(
            mode("postgresql:///db?host=%2Frun%2Fpostgresql&sslmode=require"),
            SslMode::Disable
        );
    }

    #[test]
    fn errors_are_one_line_name_the_problem_and_not_the_password() {
        let error = |url: &str| parse(url).unwrap_err();
        let cases = [
            (
                "postgresql://u:s3cret@h/db?sslmode=verify",
                "sslmode \"verify\" is not one of",
            ),
            (
                "postgresql://u:s3cret@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
                "sslrootcert \"/nonexistent/ca.pem\": No such file",
            ),
            (
                "postgresql://u:s3cret@h/db?sslmode=require&sslrootcert=system",
                "sslmode=require is too weak for sslrootcert=system",
            ),
            (
                "postgresql://u:s3cret@h/db?sslcert=/c.pem",
                "sslcert is set but sslkey is not",
            ),
            (
                "postgresql://u:s3cret@h/db?sslmode=require&nope=1",
                "unknown option `nope`",
            ),
            (
                "host=h password=s3cret sslmode='require",
                "no closing quote",
            ),
            (
                "host=h password=my s3cret sslmode=require",
                "expected '=' at byte 26",
            ),
            ("host=h password=my s3cret=", "no value at byte 26"),
        ];
        for (url, expected) in cases {
            let message = error(url);
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
            assert!(!message.contains('\n'), "{message:?}");
            assert!(!message.contains("s3cret"), "{message:?}");
        }
    }

    #[test]
    fn a_file_without_pem_certificates_is_named() {
        let dir = std::env::temp_dir().join(format!("pgtls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not-pem.crt");
        std::fs::write(&path, b"\x30\x82\x01\x0anot a pem file\n").unwrap();
        let url = format!("host=h sslmode=verify-ca sslrootcert={}", path.display());
        let message = parse(&url).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            message.starts_with(&format!(
                "sslrootcert {:?}: no certificate in it",
                path.display().to_string()
            )),
            "{message}"
        );
    }

    #[test]
    fn der_reads_short_and_long_lengths() {
        assert_eq!(
            der(&[0x06, 0x01, 0x2a, 0xff]),
            Some((0x06, &[0x2a][..], &[0xff][..]))
        );
        let mut long = vec![0x04, 0x82, 0x01, 0x00];
        long.extend([7; 256]);
        assert_eq!(
            der(&long).map(|(_, c, r)| (c.len(), r.len())),
            Some((256, 0))
        );
        assert_eq!(der(&[0x04, 0x05, 0x00]), None);
    }
}
