//! Hostile paths: none reaches SWR as an unvalidated guarded request.

mod common;

use common::*;

#[test]
fn hostile_paths_never_reach_swr_unvalidated() {
    let swr = StandInSwr::start();
    // Forwarding unmatched requests is the riskier setting: a path must still never slip
    // past as "unmatched" when SWR could take it for a guarded operation.
    let gate = Gateway::start_with(&swr.url(), "", forward_unmatched);
    let hostile = [
        "/v2/manage/namespaces/team-a/repos/x/../app/access",
        "/v2/manage/namespaces/team-a/repos/%2e%2e/repos/app/access",
        "/v2/manage/namespaces/team-a/repos/./app/access",
        "/v2/manage/namespaces/team-a//repos/app/access",
        "//v2/manage/namespaces/team-a/repos/app/access",
        "/v2/manage/namespaces/team-a/repos/group/app/access",
        "/v2/manage/namespaces/team-a/repositories/group/app/access-domains/partner",
        "/v2/manage/namespaces/team-a/repos/app%5c/access",
        "/v2/manage/namespaces/team-a/repos/app%00/access",
        "/v2/manage/namespaces/team-a/repos/app%0d%0a/access",
        "/v2/manage/namespaces/team-a/repos/app%ff/access",
        "/v2/manage/namespaces/team-a/repos/app;v=1/access",
        "/v2/manage/namespaces/Team-A/repos/app/access",
        "/v2/manage/namespaces/team-a/repos/APP/access",
        "/v2/manage/namespaces/team-a/repos/group%252Fapp/access",
        "/v2/manage/namespaces/team-a/repos/app/access?x=1",
        "/v2/other%2Fpath",
    ];
    for path in hostile {
        let answer = gate.json("POST", path, &grants(7));
        assert_eq!(
            answer.status,
            400,
            "{path}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        assert!(answer.code().starts_with("SWR.GATE.4000"), "{path}");
    }
    let long = format!(
        "/v2/manage/namespaces/team-a/repos/{}/access",
        "a".repeat(2000)
    );
    assert_eq!(gate.json("POST", &long, &grants(7)).status, 400);
    // Raw bytes the http crate would refuse to build: invalid UTF-8 and a backslash.
    for raw in [
        &b"POST /v2/manage/namespaces/team-a/repos/app\\x/access HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"[..],
        &b"POST /v2/manage/namespaces/team-a/repos/app\xff/access HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"[..],
    ] {
        let answer = gate.send_raw(raw);
        assert_eq!(answer.status, 400, "{}", String::from_utf8_lossy(raw));
    }
    assert!(
        swr.received().is_empty(),
        "SWR received {:?}",
        swr.received()
    );
}

#[test]
fn case_and_trailing_slash_variants_are_the_guarded_operation() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    for path in [
        "/V2/Manage/Namespaces/team-a/REPOS/app/ACCESS",
        "/v2/manage/namespaces/team-a/repos/app/access/",
    ] {
        swr.clear();
        // A schema violation proves the guarded checks ran ...
        let answer = gate.json("POST", path, &grants(2));
        assert_eq!(answer.code(), "SWR.GATE.4000002", "{path}");
        // ... and a valid body is forwarded on the canonical path.
        assert_eq!(gate.json("POST", path, &grants(1)).status, 201, "{path}");
        assert_eq!(
            swr.received()[0].path_and_query,
            "/v2/manage/namespaces/team-a/repos/app/access"
        );
    }
}

#[test]
fn method_override_headers_are_refused() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        let answer = gate.send(
            "POST",
            "/v2/manage/namespaces/team-a/repos/app/access",
            &[
                ("x-api-key", API_KEY),
                ("content-type", "application/json"),
                (name, "PATCH"),
            ],
            grants(1).as_bytes(),
        );
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (400, "SWR.GATE.4000007"),
            "{name}"
        );
    }
    assert!(swr.received().is_empty());
}

const CREATE: &str = "/v2/manage/namespaces/team-a/repos/app/access";
const SHARE: &str = "/v2/manage/namespaces/team-a/repositories/app/access-domains/partner-a";

fn sharing(deadline: &str) -> String {
    format!(r#"{{"permit":"read","deadline":"{deadline}","description":"for the partner"}}"#)
}

#[test]
fn a_method_in_any_case_is_the_guarded_operation() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), "", forward_unmatched);
    let cases = [
        ("post", CREATE, "POST", grants(2), grants(1)),
        ("Post", CREATE, "POST", grants(2), grants(1)),
        ("patch", CREATE, "PATCH", grants(2), grants(1)),
        (
            "pAtCh",
            SHARE,
            "PATCH",
            sharing("tomorrow"),
            sharing("forever"),
        ),
    ];
    for (method, path, canonical, invalid, valid) in cases {
        swr.clear();
        // A schema violation proves the guarded checks ran ...
        let answer = gate.json(method, path, &invalid);
        assert_eq!(answer.code(), "SWR.GATE.4000002", "{method} {path}");
        assert!(swr.received().is_empty(), "{method} {path}");
        // ... and a valid body reaches SWR with the route's own method.
        assert_eq!(
            gate.json(method, path, &valid).status,
            201,
            "{method} {path}"
        );
        let received = swr.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].method, canonical, "{method} {path}");
        assert_eq!(received[0].path_and_query, path);
    }
    // The same over HTTP/2, where `:method` is just as free-form.
    swr.clear();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let statuses = runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let mut statuses = Vec::new();
        for body in [grants(2), grants(1)] {
            let request = http::Request::builder()
                .method("post")
                .uri(format!("http://{}{CREATE}", gate.addr))
                .header("x-api-key", API_KEY)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            statuses.push(client.request(request).await.unwrap().status().as_u16());
        }
        statuses
    });
    assert_eq!(statuses, [400, 201]);
    assert_eq!(swr.received().len(), 1);
    assert_eq!(swr.received()[0].method, "POST");
}

#[test]
fn a_case_variant_method_meets_the_policy_of_the_guarded_operation() {
    const ADMIN_KEY: &str = "swrg_test_key_admin";
    let swr = StandInSwr::start();
    let admin = format!(
        "[[clients]]\nid = \"ops-admin\"\ngroups = [\"admins\"]\napi_key_sha256 = \"{}\"\n",
        sha256_hex(ADMIN_KEY.as_bytes())
    );
    let gate = Gateway::start_with(&swr.url(), &admin, |config| {
        forward_unmatched(config);
        *config = config.replace(
            &allow_all_policy_dir().display().to_string(),
            &policy_dir().display().to_string(),
        );
    });
    for method in ["PATCH", "patch", "Patch"] {
        let answer = gate.send(
            method,
            SHARE,
            &[
                ("authorization", &format!("Bearer {ADMIN_KEY}")),
                ("content-type", "application/json"),
            ],
            sharing("forever").as_bytes(),
        );
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (403, "SWR.GATE.4030001"),
            "{method}"
        );
    }
    assert!(swr.received().is_empty(), "{:?}", swr.received());
}

#[test]
fn other_methods_on_a_guarded_path_never_reach_swr() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), "", forward_unmatched);
    let refused = [
        ("PUT", CREATE),
        ("PUT", SHARE),
        ("POST", SHARE),
        ("OPTIONS", CREATE),
        ("FOO", CREATE),
        ("get", CREATE),
        ("Delete", SHARE),
        ("PUT", "/V2/MANAGE/namespaces/team-a/repos/app/ACCESS/"),
        (
            "POST",
            "/v2/manage/namespaces/team-a/repositories/app/access-domains/partner-a/",
        ),
    ];
    for (method, path) in refused {
        let answer = gate.json(method, path, &grants(1));
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (400, "SWR.GATE.4000001"),
            "{method} {path}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    assert!(
        swr.received().is_empty(),
        "SWR received {:?}",
        swr.received()
    );
    // SWR's own reading and deleting operations on these paths are not guarded: they go
    // wherever `unmatched` says, here to SWR.
    for (method, path) in [
        ("GET", CREATE),
        ("DELETE", CREATE),
        ("GET", SHARE),
        ("DELETE", SHARE),
    ] {
        swr.clear();
        let answer = gate.send(method, path, &[("x-api-key", API_KEY)], b"");
        assert_eq!(answer.status, 201, "{method} {path}");
        assert_eq!(swr.received()[0].method, method);
    }
}
