//! The official Huawei Cloud Python SDK (`huaweicloudsdkswr`), pointed at swr-gate with
//! gateway-issued AK/SK, works as it does against SWR (the guarded operations and SWR's
//! own show and delete beside them); forged, stale and replayed requests get 401 and
//! SWR receives nothing of them.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const AK: &str = "GWAKSDKTEST000000001";
const SK: &str = "gateway-issued-secret-for-the-python-sdk";
#[test]
fn the_official_python_sdk_works_through_the_gateway_and_forgeries_do_not() {
    let python = sdk_python();
    let swr = StandInSwr::start();
    std::env::set_var("SWR_GATE_TEST_SDK_SK", SK);
    let gate = Gateway::start_with(
        &swr.url(),
        &format!("[[clients]]\nid = \"sdk-user\"\ngroups = [\"release\"]\naccess_key = \"{AK}\"\nsecret_key_env = \"SWR_GATE_TEST_SDK_SK\"\n"),
        forward_unmatched,
    );
    let output = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/swr_sdk_client.py"))
        .args([
            &format!("http://{}", gate.addr),
            AK,
            SK,
            "0123456789abcdef0123456789abcdef",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outcome = |call: &str| {
        let result = results
            .iter()
            .find(|r| r["call"] == call)
            .unwrap_or_else(|| panic!("no {call} in {stdout}"));
        (
            result["status"].as_u64().unwrap(),
            result["error_code"].as_str().unwrap_or("").to_owned(),
        )
    };
    for call in [
        "create_user_repository_auth",
        "update_user_repository_auth",
        "update_repo_domains",
        "show_user_repository_auth",
        "delete_repo_domains",
    ] {
        assert_eq!(outcome(call), (201, String::new()), "{call}: {stdout}");
    }
    assert_eq!(
        outcome("invalid_auth_value"),
        (400, "SWR.GATE.4000002".into())
    );
    assert_eq!(outcome("wrong_sk"), (401, "SWR.GATE.4010003".into()));
    assert_eq!(outcome("stale_date"), (401, "SWR.GATE.4010004".into()));
    assert_eq!(outcome("replay"), (401, "SWR.GATE.4010005".into()));
    let invalid = results
        .iter()
        .find(|r| r["call"] == "invalid_auth_value")
        .unwrap();
    assert!(
        invalid["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "the SDK sees our X-Request-Id"
    );

    let received = swr.received();
    let paths: Vec<(&str, &str)> = received
        .iter()
        .map(|r| (r.method.as_str(), r.path_and_query.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("POST", "/v2/manage/namespaces/team-a/repos/app/access"),
            (
                "PATCH",
                "/v2/manage/namespaces/team-a/repos/group$app/access"
            ),
            (
                "PATCH",
                "/v2/manage/namespaces/team-a/repositories/group$app/access-domains/partner"
            ),
            ("GET", "/v2/manage/namespaces/team-a/repos/group$app/access"),
            (
                "DELETE",
                "/v2/manage/namespaces/team-a/repositories/group$app/access-domains/partner"
            ),
        ]
    );
    for request in &received {
        assert_eq!(request.headers["x-auth-token"], TOKEN);
        for name in [
            "authorization",
            "x-sdk-date",
            "x-sdk-content-sha256",
            "x-security-token",
        ] {
            assert!(request.headers.get(name).is_none(), "{name} reached SWR");
        }
    }
}
