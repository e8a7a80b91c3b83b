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
