//! API-key authentication and anonymous access.

mod common;

use common::*;

const CREATE: &str = "/v2/manage/namespaces/team-a/repos/app/access";

fn post(gate: &Gateway, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    gate.send("POST", CREATE, &all, grants(1).as_bytes())
}

#[test]
fn api_keys_are_accepted_in_either_header_and_refused_otherwise() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    let bearer = format!("Bearer {API_KEY}");
    assert_eq!(post(&gate, &[("authorization", &bearer)]).status, 201);
    assert_eq!(post(&gate, &[("x-api-key", OTHER_API_KEY)]).status, 201);
    assert_eq!(swr.received().len(), 2);
    swr.clear();

    let wrong = [
        (vec![], "SWR.GATE.4010001"),
        (vec![("x-api-key", "swrg_wrong")], "SWR.GATE.4010002"),
        (
            vec![("authorization", "Bearer swrg_wrong")],
            "SWR.GATE.4010002",
        ),
        (
            vec![("authorization", "Basic dXNlcjpwYXNz")],
            "SWR.GATE.4010006",
        ),
        (vec![("authorization", "Bearer")], "SWR.GATE.4010006"),
        (
            vec![("authorization", bearer.as_str()), ("x-api-key", API_KEY)],
            "SWR.GATE.4010007",
        ),
        (
            vec![("x-api-key", API_KEY), ("x-api-key", API_KEY)],
            "SWR.GATE.4010007",
        ),
    ];
    for (headers, code) in wrong {
        let answer = post(&gate, &headers);
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (401, code),
            "{headers:?}"
        );
        assert!(
            !String::from_utf8_lossy(&answer.body).contains("swrg_wrong"),
            "the key is echoed"
        );
    }
    assert!(swr.received().is_empty());
}

#[test]
fn the_audit_trail_names_the_client_and_never_the_key() {
    let swr = StandInSwr::start();
    let gate = Gateway::start(&swr.url());
    assert_eq!(post(&gate, &[("x-api-key", API_KEY)]).status, 201);
    assert_eq!(post(&gate, &[("x-api-key", "swrg_wrong")]).status, 401);
    let records = gate.audit_records();
    let stages: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["stage"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            ("decided", "allow"),
            ("completed", "allow"),
            ("completed", "deny")
        ]
    );
    assert_eq!(records[0]["client"], "ci-bot");
    assert_eq!(records[0]["auth_method"], "api_key");
    assert_eq!(records[1]["status"], 201);
    assert_eq!(records[1]["upstream_status"], 201);
    assert_eq!(records[2]["denied_by"], "auth");
    assert_eq!(records[2]["client"], serde_json::Value::Null);
    let text = std::fs::read_to_string(gate.dir.path().join("audit.jsonl")).unwrap();
    assert!(!text.contains(API_KEY) && !text.contains("swrg_wrong") && !text.contains(TOKEN));
}

#[test]
fn anonymous_access_only_when_allowed() {
    let swr = StandInSwr::start();
    let gate = Gateway::start_with(&swr.url(), "[auth]\nallow_anonymous = true\n", |_| {});
    assert_eq!(post(&gate, &[]).status, 201);
    assert_eq!(gate.audit_records()[0]["auth_method"], "anonymous");
    // A wrong key is still wrong: anonymous access is no fallback for bad credentials.
    assert_eq!(post(&gate, &[("x-api-key", "swrg_wrong")]).status, 401);
}
