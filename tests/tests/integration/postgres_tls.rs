//! PostgreSQL over TLS, against servers of the tests' own: each test starts
//! one (initdb, certificates made here with rcgen, `ssl = on`, a
//! pg_hba.conf that accepts TLS connections only) and stops it when done.
//!
//! The server binaries come from the directory `STATEHOST_TEST_PG_BIN`
//! names (`pg_config --bindir`); the tests are ignored without it. Run as
//! root, initdb and pg_ctl run as the `postgres` user.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use statehost::store::tls;
use statehost_tests::{Sandbox, assert_fails, require_env, text};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SignatureAlgorithm,
};

// ---------------------------------------------------------------- certificates

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, both PEM.
struct Issued {
    cert: String,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str, algorithm: &'static SignatureAlgorithm) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate_for(algorithm).unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `common_name` and the subject alternative names
    /// given (an IP address there becomes an IP SAN).
    fn issue(&self, common_name: &str, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key,
        }
    }
}

/// The same key as SEC1 ("EC PRIVATE KEY"), the form `openssl ecparam
/// -genkey` writes: the ECPrivateKey inside the PKCS#8 wrapping.
fn sec1_pem(key: &KeyPair) -> String {
    fn der(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let (tag, first) = (input[0], input[1]);
        let (len, start) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            let len = input[2..2 + n]
                .iter()
                .fold(0, |a, &b| a << 8 | usize::from(b));
            (len, 2 + n)
        };
        (tag, &input[start..start + len], &input[start + len..])
    }
    let (_, info, _) = der(key.serialized_der());
    let (_, _version, rest) = der(info);
    let (_, _algorithm, rest) = der(rest);
    let (tag, ec_private_key, _) = der(rest);
    assert_eq!(tag, 0x04, "a PKCS#8 key holds its key in an OCTET STRING");
    pem_block("EC PRIVATE KEY", ec_private_key)
}

fn pem_block(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut base64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                base64.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                base64.push('=');
            }
        }
    }
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in base64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

// ---------------------------------------------------------------- the server

/// How a test's server is set up.
struct Setup<'a> {
    server: &'a Issued,
    /// pg_hba.conf, whole.
    hba: &'a [&'a str],
    /// Roots for client certificates (`ssl_ca_file`).
    client_ca: Option<&'a Ca>,
    /// The password of the `postgres` user, for password authentication.
    password: Option<&'a str>,
}

/// A PostgreSQL server in a temporary directory, stopped and removed when
/// dropped (a failing test included).
struct Server {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
        }
    }
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A command that runs as the `postgres` user when we are root (initdb and
/// the server refuse to run as root).
fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    fn start(setup: Setup<'_>) -> Server {
        let bin = PathBuf::from(require_env("STATEHOST_TEST_PG_BIN"));
        assert!(
            bin.join("initdb").exists(),
            "no initdb in {} (set STATEHOST_TEST_PG_BIN to the server's bin directory, `pg_config --bindir`)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("statehost-pg-")
            .tempdir()
            .unwrap();
        let mut server = Server { dir, bin, port: 0 };
        let root = server.dir.path().to_path_buf();
        let data = server.data();

        let mut initdb = as_postgres(&server.bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        if let Some(password) = setup.password {
            let file = root.join("password");
            fs::write(&file, password).unwrap();
            initdb.arg(format!("--pwfile={}", file.display()));
        }
        if running_as_root() {
            server.chown_to_postgres();
        }
        let output = run(initdb, "initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );

        fs::write(data.join("server.crt"), &setup.server.cert).unwrap();
        let key = data.join("server.key");
        fs::write(&key, setup.server.key.serialize_pem()).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             ssl = on\n\
             ssl_cert_file = 'server.crt'\n\
             ssl_key_file = 'server.key'\n\
             fsync = off\n",
            root.display()
        );
        if let Some(ca) = setup.client_ca {
            fs::write(data.join("client-ca.crt"), ca.pem()).unwrap();
            conf.push_str("ssl_ca_file = 'client-ca.crt'\n");
        }
        let mut postgresql_conf = fs::read_to_string(data.join("postgresql.conf")).unwrap();
        postgresql_conf.push_str(&conf);
        fs::write(data.join("postgresql.conf"), postgresql_conf).unwrap();
        fs::write(data.join("pg_hba.conf"), setup.hba.join("\n") + "\n").unwrap();
        if running_as_root() {
            server.chown_to_postgres();
        }

        // Another process may take the free port before the server does;
        // then try another.
        for _ in 0..5 {
            server.port = free_port();
            let port = format!("-p {}", server.port);
            let log = root.join("server.log");
            let output = server.pg_ctl(&[
                "start",
                "-w",
                "-t",
                "60",
                "-o",
                &port,
                "-l",
                log.to_str().unwrap(),
            ]);
            if output.status.success() {
                return server;
            }
            let log = fs::read_to_string(&log).unwrap_or_default();
            if !log.contains("could not bind") {
                panic!(
                    "the server did not start: {}\n{log}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        panic!("the server found no free port");
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn chown_to_postgres(&self) {
        let mut chown = Command::new("chown");
        chown.args(["-R", "postgres:"]).arg(self.dir.path());
        assert!(run(chown, "chown").status.success());
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let mut command = as_postgres(&self.bin.join("pg_ctl"));
        command.arg("-D").arg(self.data()).args(args);
        run(command, "pg_ctl")
    }

    /// A URL to this server as `postgres` at `host`, with the parameters given.
    fn url(&self, host: &str, params: &str) -> String {
        format!(
            "postgresql://postgres@{host}:{}/postgres?connect_timeout=20&{params}",
            self.port
        )
    }
}

/// Writes a file into the test's directory and returns its path.
fn file(server: &Server, name: &str, contents: &str) -> String {
    let path = server.dir.path().join(name);
    fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_string()
}

// ---------------------------------------------------------------- checks

/// Connects as the host would, with errors as one line.
fn connect(url: &str) -> Result<postgres::Client, String> {
    let connect = tls::parse(url)?;
    connect
        .config
        .connect(connect.tls)
        .map_err(|e| tls::error_line(&e))
}

/// Connects, runs a query, and tells whether the connection is encrypted.
fn encrypted(url: &str) -> bool {
    let mut client = connect(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap();
    row.get(0)
}

/// Connects, expecting a one-line error that says `expected`.
fn refused(url: &str, expected: &str) -> String {
    let message = match connect(url) {
        Ok(_) => panic!("{url}: connected"),
        Err(message) => message,
    };
    assert!(!message.contains('\n'), "{message:?} is not one line");
    assert!(
        message.contains(expected),
        "{url}: {message:?} does not say {expected:?}"
    );
    message
}

const TLS_ONLY: &[&str] = &["hostssl all all 127.0.0.1/32 trust"];

fn plain_server(ca: &Ca) -> (Server, Issued) {
    let issued = ca.issue("localhost", &["localhost", "127.0.0.1"]);
    let server = Server::start(Setup {
        server: &issued,
        hba: TLS_ONLY,
        client_ca: None,
        password: None,
    });
    (server, issued)
}

#[test]
#[ignore = "needs PostgreSQL server binaries: set STATEHOST_TEST_PG_BIN and run with --include-ignored"]
fn require_and_prefer_encrypt_and_disable_is_refused() {
    let ca = Ca::new("test CA", &rcgen::PKCS_ECDSA_P256_SHA256);
    let (server, _) = plain_server(&ca);
    let wrong_ca = file(
        &server,
        "wrong-ca.crt",
        &Ca::new("wrong CA", &rcgen::PKCS_ECDSA_P256_SHA256).pem(),
    );
    let right_ca = file(&server, "ca.crt", &ca.pem());

    assert!(encrypted(&server.url("127.0.0.1", "sslmode=require")));
    assert!(encrypted(&server.url("127.0.0.1", "sslmode=prefer")));
    assert!(
        encrypted(&server.url("127.0.0.1", "")),
        "prefer is the default"
    );
    assert!(encrypted(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require",
        server.port
    )));
    refused(
        &server.url("127.0.0.1", "sslmode=disable"),
        "no pg_hba.conf entry for host \"127.0.0.1\", user \"postgres\", database \"postgres\", no encryption",
    );

    // As in libpq, require with a root file checks the chain.
    assert!(encrypted(&server.url(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={right_ca}")
    )));
    refused(
        &server.url(
            "127.0.0.1",
            &format!("sslmode=require&sslrootcert={wrong_ca}"),
        ),
        "invalid peer certificate: UnknownIssuer",
    );
}

#[test]
#[ignore = "needs PostgreSQL server binaries: set STATEHOST_TEST_PG_BIN and run with --include-ignored"]
fn verify_full_checks_the_chain_and_the_name_and_verify_ca_the_chain() {
    let ca = Ca::new("test CA", &rcgen::PKCS_ECDSA_P256_SHA256);
    let (server, _) = plain_server(&ca);
    let right_ca = file(&server, "ca.crt", &ca.pem());
    let wrong_ca = file(
        &server,
        "wrong-ca.crt",
        &Ca::new("wrong CA", &rcgen::PKCS_ECDSA_P256_SHA256).pem(),
    );

    let full = format!("sslmode=verify-full&sslrootcert={right_ca}");
    assert!(encrypted(&server.url("127.0.0.1", &full)), "the IP SAN");
    assert!(encrypted(&server.url("localhost", &full)), "the DNS SAN");
    assert!(encrypted(&format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{right_ca}'",
        server.port
    )));

    let message = refused(
        &server.url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={wrong_ca}"),
        ),
        "invalid peer certificate: UnknownIssuer",
    );
    assert!(
        message.contains(&wrong_ca),
        "{message:?} does not name the roots"
    );
    refused(
        &server.url(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={wrong_ca}"),
        ),
        "invalid peer certificate: UnknownIssuer",
    );

    // A name the certificate does not carry, reached through hostaddr: the
    // certificate is checked against host, the socket goes to hostaddr.
    let other_name = format!("hostaddr=127.0.0.1&sslrootcert={right_ca}");
    assert!(encrypted(&server.url(
        "db.example.invalid",
        &format!("sslmode=verify-ca&{other_name}")
    )));
    refused(
        &server.url(
            "db.example.invalid",
            &format!("sslmode=verify-full&{other_name}"),
        ),
        "certificate not valid for name \"db.example.invalid\"",
    );
}

#[test]
#[ignore = "needs PostgreSQL server binaries: set STATEHOST_TEST_PG_BIN and run with --include-ignored"]
fn an_address_missing_from_the_certificate_fails_verify_full_only() {
    let ca = Ca::new("test CA", &rcgen::PKCS_ECDSA_P256_SHA256);
    let issued = ca.issue("localhost", &["localhost"]);
    let server = Server::start(Setup {
        server: &issued,
        hba: TLS_ONLY,
        client_ca: None,
        password: None,
    });
    let right_ca = file(&server, "ca.crt", &ca.pem());
    assert!(encrypted(&server.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={right_ca}")
    )));
    assert!(encrypted(&server.url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={right_ca}")
    )));
    refused(
        &server.url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={right_ca}"),
        ),
        "certificate not valid for name \"127.0.0.1\"",
    );
}

#[test]
#[ignore = "needs PostgreSQL server binaries: set STATEHOST_TEST_PG_BIN and run with --include-ignored"]
fn a_client_certificate_logs_in_where_the_server_asks_for_one() {
    let ca = Ca::new("server CA", &rcgen::PKCS_ECDSA_P256_SHA256);
    let client_ca = Ca::new("client CA", &rcgen::PKCS_ECDSA_P256_SHA256);
    let issued = ca.issue("localhost", &["localhost", "127.0.0.1"]);
    let server = Server::start(Setup {
        server: &issued,
        hba: &["hostssl all all 127.0.0.1/32 cert"],
        client_ca: Some(&client_ca),
        password: None,
    });
    let roots = file(&server, "ca.crt", &ca.pem());
    // cert authentication takes the user name from the common name.
    let client = client_ca.issue("postgres", &[]);
    let cert = file(&server, "client.crt", &client.cert);
    let pkcs8 = file(&server, "client.key", &client.key.serialize_pem());
    let sec1 = file(&server, "client-sec1.key", &sec1_pem(&client.key));
    let base = format!("sslmode=verify-full&sslrootcert={roots}");

    assert!(encrypted(&server.url(
        "127.0.0.1",
        &format!("{base}&sslcert={cert}&sslkey={pkcs8}")
    )));
    assert!(encrypted(&server.url(
        "127.0.0.1",
        &format!("{base}&sslcert={cert}&sslkey={sec1}")
    )));
    refused(
        &server.url("127.0.0.1", &base),
        "connection requires a valid client certificate",
    );

    let stranger = Ca::new("unknown CA", &rcgen::PKCS_ECDSA_P256_SHA256).issue("postgres", &[]);
    let stranger_cert = file(&server, "stranger.crt", &stranger.cert);
    let stranger_key = file(&server, "stranger.key", &stranger.key.serialize_pem());
    refused(
        &server.url(
            "127.0.0.1",
            &format!("{base}&sslcert={stranger_cert}&sslkey={stranger_key}"),
        ),
        "received fatal alert: UnknownCA (the server did not accept the client certificate in sslcert)",
    );

    // A key that is not the certificate's.
    let message = tls::parse(&server.url(
        "127.0.0.1",
        &format!("{base}&sslcert={cert}&sslkey={stranger_key}"),
    ))
    .map(|_| ())
    .unwrap_err();
    assert!(message.starts_with("sslcert and sslkey: "), "{message}");
}

/// SCRAM with channel binding required: the server compares the hash of
/// its certificate with the one the client sends.
fn channel_binding(algorithm: &'static SignatureAlgorithm) {
    let ca = Ca::new("test CA", algorithm);
    let issued = ca.issue("localhost", &["localhost", "127.0.0.1"]);
    let password = "pa:ss@w/rd?&=";
    let server = Server::start(Setup {
        server: &issued,
        hba: &["hostssl all all 127.0.0.1/32 scram-sha-256"],
        client_ca: None,
        password: Some(password),
    });
    let encoded: String = password.bytes().map(|b| format!("%{b:02X}")).collect();
    let url = |password: &str, params: &str| {
        format!(
            "postgresql://postgres:{password}@127.0.0.1:{}/postgres?{params}",
            server.port
        )
    };
    assert!(encrypted(&url(
        &encoded,
        "sslmode=require&channel_binding=require"
    )));
    let message = refused(
        &url(
            "wrong%20password",
            "sslmode=require&channel_binding=require",
        ),
        "password authentication failed for user \"postgres\"",
    );
    assert!(!message.contains("wrong"), "{message:?}");
    // Without a connection the password is not echoed either.
    let message = tls::parse(&url(
        &encoded,
        "sslmode=verify-full&sslrootcert=/nonexistent",
    ))
    .unwrap_err();
    assert!(
        !message.contains(password) && !message.contains(&encoded),
        "{message:?}"
    );
}

#[test]
#[ignore = "needs PostgreSQL server binaries: set STATEHOST_TEST_PG_BIN and run with --include-ignored"]
fn channel_binding_with_a_sha256_signed_certificate() {
    channel_binding(&rcgen::PKCS_ECDSA_P256_SHA256);
}

#[test]
#[ignore = "needs PostgreSQL server binaries: set STATEHOST_TEST_PG_BIN and run with --include-ignored"]
fn channel_binding_with_a_sha384_signed_certificate() {
    channel_binding(&rcgen::PKCS_ECDSA_P384_SHA384);
}

/// The self-signed certificate of PostgreSQL's own instructions
/// (`openssl req -new -x509 ... -subj "/CN=..."`) is a CA certificate
/// naming the host only in its common name. libpq accepts it as its own
/// root; rustls does not, and the message says why.
#[test]
#[ignore = "needs PostgreSQL server binaries: set STATEHOST_TEST_PG_BIN and run with --include-ignored"]
fn a_self_signed_ca_certificate_is_refused_with_a_clear_message() {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let issued = Issued {
        cert: cert.pem(),
        key,
    };
    let server = Server::start(Setup {
        server: &issued,
        hba: TLS_ONLY,
        client_ca: None,
        password: None,
    });
    let roots = file(&server, "self-signed.crt", &issued.cert);
    assert!(encrypted(&server.url("localhost", "sslmode=require")));
    for mode in ["verify-ca", "verify-full"] {
        refused(
            &server.url("localhost", &format!("sslmode={mode}&sslrootcert={roots}")),
            "the server's certificate is a CA certificate (CaUsedAsEndEntity)",
        );
    }
}

#[test]
#[ignore = "needs PostgreSQL server binaries: set STATEHOST_TEST_PG_BIN and run with --include-ignored"]
fn the_store_and_the_command_line_use_tls_as_the_url_says() {
    let ca = Ca::new("test CA", &rcgen::PKCS_ECDSA_P256_SHA256);
    let (server, _) = plain_server(&ca);
    let right_ca = file(&server, "ca.crt", &ca.pem());
    let wrong_ca = file(
        &server,
        "wrong-ca.crt",
        &Ca::new("wrong CA", &rcgen::PKCS_ECDSA_P256_SHA256).pem(),
    );
    let sandbox = Sandbox::with_plugins(&[]);
    let with_url = |params: &str| {
        sandbox.config(&format!(
            "[database]\nurl = \"{}\"\n",
            server.url("localhost", params)
        ));
    };
    // verify-full with the right CA: the state goes over TLS.
    with_url(&format!("sslmode=verify-full&sslrootcert={right_ca}"));
    let task = statehost_tests::TASK;
    let set: Vec<&str> = task.iter().copied().chain(["set", "k", "42"]).collect();
    let out = sandbox.run(&set, &[]);
    assert!(out.status.success(), "{:?}", text(&out));
    let get: Vec<&str> = task.iter().copied().chain(["get", "k"]).collect();
    assert_eq!(text(&sandbox.run(&get, &[])).0.trim(), "42");
    // The wrong CA: one line naming the certificate problem.
    with_url(&format!("sslmode=verify-full&sslrootcert={wrong_ca}"));
    assert_fails(
        &sandbox.run(&get, &[]),
        3,
        &["invalid peer certificate: UnknownIssuer", "wrong-ca.crt"],
    );
    // Plaintext: the server's refusal, in one line.
    with_url("sslmode=disable");
    assert_fails(
        &sandbox.run(&get, &[]),
        3,
        &["no pg_hba.conf entry", "no encryption"],
    );
    // A root file that is not there: the configuration's mistake.
    with_url("sslmode=verify-full&sslrootcert=/nonexistent/ca.crt");
    assert_fails(
        &sandbox.run(&get, &[]),
        2,
        &["sslrootcert", "/nonexistent/ca.crt"],
    );
}
