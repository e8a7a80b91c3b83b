//! TLS termination, HTTP/1.1 and HTTP/2 by ALPN, and client certificates mapped to
//! clients by subject or SAN.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const SHARE: &str = "/v2/manage/namespaces/team-a/repositories/app/access-domains/partner";

struct Setup {
    swr: StandInSwr,
    gate: Gateway,
    server_ca: PathBuf,
    dir: tempfile::TempDir,
    clients: Pki,
}

fn setup(client_auth: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server_pki = Pki::new(dir.path(), "server-ca");
    let (cert, key) = server_pki.issue("gateway", &["localhost", "127.0.0.1"]);
    let clients = Pki::new(dir.path(), "client-ca");
    let swr = StandInSwr::start();
    let extra = "[[clients]]\nid = \"ops-admin\"\ngroups = [\"admins\"]\ntls_subject = \"CN=ops-admin\"\n\n\
         [[clients]]\nid = \"boss\"\ngroups = [\"admins\"]\ntls_subject = \"O=Acme, CN=boss\"\n\n\
         [[clients]]\nid = \"ci-workload\"\ngroups = [\"ci\"]\ntls_san = \"spiffe://acme/ci\"\n";
    let tls = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"{client_auth}\"\n\n[upstream]\n",
        cert.display(),
        key.display(),
        clients.ca_file.display()
    );
    let gate = Gateway::start_with(&swr.url(), extra, |c| {
        *c = c.replacen("[upstream]\n", &tls, 1)
    });
    Setup {
        swr,
        gate,
        server_ca: server_pki.ca_file.clone(),
        dir,
        clients,
    }
}

/// One PATCH over TLS, with an optional client certificate and extra headers; the
/// protocol is whatever ALPN agreed. Err when the handshake or request failed.
fn call(
    setup: &Setup,
    client_cert: Option<(&Path, &Path)>,
    headers: &[(&str, &str)],
    alpn: &[&[u8]],
) -> Result<(http::Version, u16), String> {
    call_speaking(setup, client_cert, headers, alpn, None)
}

/// [`call`], speaking HTTP/2 (`Some(true)`) or HTTP/1.1 (`Some(false)`) whatever ALPN agreed.
fn call_speaking(
    setup: &Setup,
    client_cert: Option<(&Path, &Path)>,
    headers: &[(&str, &str)],
    alpn: &[&[u8]],
    speak_h2: Option<bool>,
) -> Result<(http::Version, u16), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&setup.server_ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = setup.gate.addr;
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let h2 = speak_h2.unwrap_or(tls.get_ref().1.alpn_protocol() == Some(b"h2"));
            let mut request = http::Request::builder()
                .method("PATCH")
                .uri(format!("https://localhost:{}{SHARE}", addr.port()))
                .header("content-type", "application/json");
            for (name, value) in &headers {
                request = request.header(name, value);
            }
            let request = request
                .body(Full::new(Bytes::from_static(
                    br#"{"permit":"read","deadline":"forever"}"#,
                )))
                .unwrap();
            let response = if h2 {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                sender.send_request(request).await
            } else {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                sender.send_request(request).await
            }
            .map_err(|e| format!("request: {e}"))?;
            Ok((response.version(), response.status().as_u16()))
        })
}

#[test]
fn client_certificates_map_to_clients_by_subject_or_san_over_both_protocols() {
    let setup = setup("optional");
    let (admin_cert, admin_key) = setup.clients.issue("ops-admin", &["ops-admin.acme"]);
    let (ci_cert, ci_key) = setup.clients.issue("ci-runner-7", &["spiffe://acme/ci"]);
    for alpn in [&[b"h2" as &[u8]][..], &[b"http/1.1"]] {
        let (version, status) = call(&setup, Some((&admin_cert, &admin_key)), &[], alpn).unwrap();
        assert_eq!(status, 201);
        assert_eq!(
            version,
            if alpn[0] == b"h2" {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
        assert_eq!(
            call(&setup, Some((&ci_cert, &ci_key)), &[], alpn)
                .unwrap()
                .1,
            201
        );
    }
    let records = setup.gate.audit_records();
    let clients: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["stage"] == "completed")
        .map(|r| {
            (
                r["client"].as_str().unwrap(),
                r["auth_method"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        clients,
        [
            ("ops-admin", "mtls"),
            ("ci-workload", "mtls"),
            ("ops-admin", "mtls"),
            ("ci-workload", "mtls")
        ]
    );
    assert_eq!(setup.swr.received().len(), 4);
}

#[test]
fn the_protocol_is_the_one_alpn_agreed() {
    let setup = setup("optional");
    let (cert, key) = setup.clients.issue("ops-admin", &["ops-admin.acme"]);
    let admin = Some((cert.as_path(), key.as_path()));
    assert!(call_speaking(&setup, admin, &[], &[b"h2"], Some(false)).is_err());
    assert!(call_speaking(&setup, admin, &[], &[b"http/1.1"], Some(true)).is_err());
    assert!(setup.swr.received().is_empty());
    // A client that offers no protocol is served in whichever it speaks.
    assert_eq!(
        call_speaking(&setup, admin, &[], &[], Some(true))
            .unwrap()
            .1,
        201
    );
    assert_eq!(
        call_speaking(&setup, admin, &[], &[], Some(false))
            .unwrap()
            .1,
        201
    );
}

#[test]
fn unknown_certificates_and_missing_credentials_are_refused() {
    let setup = setup("optional");
    let (stranger_cert, stranger_key) = setup.clients.issue("stranger", &["stranger.acme"]);
    assert_eq!(
        call(&setup, Some((&stranger_cert, &stranger_key)), &[], &[b"h2"])
            .unwrap()
            .1,
        401
    );

    let dir = tempfile::tempdir().unwrap();
    let (rogue_cert, rogue_key) =
        Pki::new(dir.path(), "rogue-ca").issue("ops-admin", &["ops-admin.acme"]);
    assert!(
        call(&setup, Some((&rogue_cert, &rogue_key)), &[], &[b"h2"]).is_err(),
        "a certificate of an unknown CA is refused"
    );

    // client_auth = "optional": no certificate, so the request's own credential counts.
    assert_eq!(call(&setup, None, &[], &[b"http/1.1"]).unwrap().1, 401);
    assert_eq!(
        call(&setup, None, &[("x-api-key", API_KEY)], &[b"http/1.1"])
            .unwrap()
            .1,
        201
    );
    // A certificate and another credential at once is ambiguous.
    let (admin_cert, admin_key) = setup.clients.issue("ops-admin", &[]);
    assert_eq!(
        call(
            &setup,
            Some((&admin_cert, &admin_key)),
            &[("x-api-key", API_KEY)],
            &[b"h2"]
        )
        .unwrap()
        .1,
        401
    );
    assert_eq!(setup.swr.received().len(), 1);
}

/// Names are compared as names, not as text: an attribute whose value spells out
/// another subject, a trailing space, or the right string in the wrong kind of SAN
/// is somebody else; one that names two clients is nobody.
#[test]
fn look_alike_certificate_names_match_no_client() {
    use rcgen::DnType::{CommonName, OrganizationName};
    let setup = setup("optional");
    let (boss_cert, boss_key) = setup.clients.issue_named(
        "boss",
        &[(OrganizationName, "Acme"), (CommonName, "boss")],
        &[],
    );
    assert_eq!(
        call(&setup, Some((&boss_cert, &boss_key)), &[], &[b"h2"])
            .unwrap()
            .1,
        201
    );
    for (stem, subject, sans) in [
        (
            "one-attribute",
            vec![(OrganizationName, "Acme,CN=boss")],
            vec![],
        ),
        ("trailing-space", vec![(CommonName, "ops-admin ")], vec![]),
        (
            "email-san",
            vec![(CommonName, "mallory")],
            vec!["email:spiffe://acme/ci"],
        ),
        (
            "dns-san",
            vec![(CommonName, "mallory")],
            vec!["dns:spiffe://acme/ci"],
        ),
        // Names of two clients at once: no order of precedence picks one.
        (
            "two-clients",
            vec![(CommonName, "ops-admin")],
            vec!["spiffe://acme/ci"],
        ),
    ] {
        let (cert, key) = setup.clients.issue_named(stem, &subject, &sans);
        assert_eq!(
            call(&setup, Some((&cert, &key)), &[], &[b"h2"]).unwrap().1,
            401,
            "{stem}"
        );
    }
    let records = setup.gate.audit_records();
    let last = records.last().unwrap();
    assert_eq!(last["reasons"][0]["code"], "SWR.GATE.4010007", "{last}");
    assert!(!last.to_string().contains("ci-workload"), "{last}");
    assert_eq!(setup.swr.received().len(), 1);
}

#[test]
fn a_required_client_certificate_is_enforced_in_the_handshake() {
    let setup = setup("required");
    assert!(call(&setup, None, &[("x-api-key", API_KEY)], &[b"h2"]).is_err());
    let (admin_cert, admin_key) = setup.clients.issue("ops-admin", &[]);
    assert_eq!(
        call(&setup, Some((&admin_cert, &admin_key)), &[], &[b"h2"])
            .unwrap()
            .1,
        201
    );
}

#[test]
fn a_server_certificate_renewed_in_place_is_served_without_a_signal() {
    let mut setup = setup("optional");
    let api_key = [("x-api-key", API_KEY)];
    assert_eq!(call(&setup, None, &api_key, &[b"h2"]).unwrap().1, 201);

    // As cert-manager renews: a new key and certificate (here from another CA, so the
    // client can tell them apart) put in place of the files the config names.
    let staging = setup.dir.path().join("renewed");
    std::fs::create_dir(&staging).unwrap();
    let renewed = Pki::new(&staging, "server-ca-2");
    let (cert, key) = renewed.issue("gateway", &["localhost", "127.0.0.1"]);
    std::fs::rename(key, setup.dir.path().join("gateway.key")).unwrap();
    std::fs::rename(cert, setup.dir.path().join("gateway.crt")).unwrap();
    setup.server_ca = renewed.ca_file.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match call(&setup, None, &api_key, &[b"h2"]) {
            Ok((_, status)) => {
                assert_eq!(status, 201);
                break;
            }
            Err(error) => assert!(
                std::time::Instant::now() < deadline,
                "still the old certificate: {error}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
