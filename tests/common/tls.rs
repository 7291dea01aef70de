//! TLS for tests: a test CA that signs leaf certificates (rcgen), and a real rustls client
//! that reports what the server presented (names, serial, ALPN) and can carry HTTP/1.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

/// A certificate authority for tests.
pub struct TestCa {
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { key, params, pem }
    }

    /// A leaf for `names` (DNS names or IPs), signed by this CA: (certificate PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&rand_serial()));
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf for `names` as `dir/stem.crt` (or `.pem`) and `dir/stem.key`; returns
    /// the certificate path.
    pub fn write_leaf(&self, dir: &Path, stem: &str, ext: &str, names: &[&str]) -> PathBuf {
        let (cert, key) = self.leaf(names);
        let cert_path = dir.join(format!("{stem}.{ext}"));
        write_atomic(&dir.join(format!("{stem}.key")), key.as_bytes());
        write_atomic(&cert_path, cert.as_bytes());
        cert_path
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).unwrap();
    }
}

fn rand_serial() -> [u8; 8] {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let mut s = (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)).to_be_bytes();
    s[0] &= 0x7f;
    s[0] |= 0x01;
    s
}

/// Replaces `path` the way deploy tools do: a new file renamed over the old one.
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Accepts any certificate: the tests look at what was presented instead.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, _: &[u8], _: &CertificateDer<'_>, _: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(&self, _: &[u8], _: &CertificateDer<'_>, _: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// What a TLS server presented.
#[derive(Debug)]
pub struct Presented {
    /// The leaf's DNS names and IPs (sorted).
    pub names: Vec<String>,
    /// The leaf's serial number, hex.
    pub serial: String,
    pub alpn: Option<String>,
    pub version: String,
}

/// An established TLS connection to hawser.
pub struct TlsConn {
    pub stream: StreamOwned<ClientConnection, TcpStream>,
    pub presented: Presented,
}

/// Connects to `addr` and completes a TLS handshake with SNI `sni` (none for `None`, as a
/// client that dialled an IP address) offering `alpn`.
pub fn connect(addr: SocketAddr, sni: Option<&str>, alpn: &[&str]) -> Result<TlsConn, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.enable_sni = sni.is_some();
    let name = ServerName::try_from(sni.unwrap_or("sni-off.invalid").to_string()).map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).map_err(|e| format!("handshake: {e}"))?;
    }
    let leaf = stream.conn.peer_certificates().and_then(|c| c.first()).ok_or("no certificate presented")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) if b.len() == 4 => {
                    names.push(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string())
                }
                _ => {}
            }
        }
    }
    names.sort();
    let presented = Presented {
        names,
        serial: cert.raw_serial_as_string(),
        alpn: stream.conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
        version: format!("{:?}", stream.conn.protocol_version()),
    };
    Ok(TlsConn { stream, presented })
}

/// Status, headers (lowercase names) and body.
pub type Answer = (u16, Vec<(String, String)>, String);

impl TlsConn {
    /// One HTTP/1.1 GET on this connection (kept alive): status, headers (lowercase names),
    /// body. The answer must carry Content-Length.
    pub fn get(&mut self, host: &str, path: &str) -> Result<Answer, String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        self.stream.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        self.stream.flush().map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some((status, headers, rest)) = super::split_raw(&got) {
                let len: usize =
                    headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).ok_or("no content-length")?;
                if rest.len() >= len {
                    let code = status.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                    return Ok((code, headers, String::from_utf8_lossy(&rest[..len]).into_owned()));
                }
            }
            let n = self.stream.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("closed after {:?}", String::from_utf8_lossy(&got)));
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
}

/// `curl` over HTTPS to `host` (resolved to `addr`), trusting only `ca`; extra args such as
/// `--http2`. Returns (status, headers and body as curl printed them with `-i`).
pub fn curl(addr: SocketAddr, ca: &Path, host: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("https://{host}:{}{path}", addr.port());
    let resolve = format!("{host}:{}:{}", addr.port(), addr.ip());
    let out = std::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &resolve])
        .args(extra)
        .arg(&url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if status == 0 {
        return (0, format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    (status, text)
}
