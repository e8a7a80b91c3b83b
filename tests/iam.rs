//! IAM tokens: fetched with the password (or agency) method from a real Keystone, checked
//! by the stand-in SWR against it, renewed before they expire, and kept in use while IAM
//! is down; faults from a fake IAM; never a secret in a log, an audit record or an answer.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fake_iam::{FakeIam, IamMode, Switch, BODY_MARKER};
use common::keystone::{keystone, DOMAIN, PASSWORD, PROJECT, TOKEN_SECONDS, USER};
use common::*;

const CREATE: &str = "/v2/manage/namespaces/team-a/repos/app/access";
const PASSWORD_ENV: &str = "SWR_GATE_TEST_IAM_PASSWORD";
const TOKEN_ENV_IAM: &str = "[iam]\nmethod = \"token_env\"\ntoken_env = \"SWR_GATE_TEST_TOKEN\"\n";
const HOUR: Duration = Duration::from_secs(3600);

/// The `[iam]` section of the password method against `endpoint`, Keystone-style (with
/// `project_domain`, which Huawei IAM does not need and does not mind).
fn password_iam(endpoint: &str) -> String {
    format!(
        "[iam]\nmethod = \"password\"\nendpoint = \"{endpoint}\"\nuser = \"{USER}\"\n\
         domain = \"{DOMAIN}\"\npassword_env = \"{PASSWORD_ENV}\"\nproject = \"{PROJECT}\"\n\
         project_domain = \"{DOMAIN}\"\n"
    )
}

/// A gateway in front of `swr` with this `[iam]` section and an admin listener, logging
/// at debug level so that the leak checks read everything it says. SWR (asking Keystone
/// about every token) and IAM get 10 s, so that a loaded machine makes no 504.
fn gateway(swr: &StandInSwr, iam: &str) -> (Gateway, SocketAddr) {
    gateway_with(swr, iam, |_| {})
}

fn gateway_with(
    swr: &StandInSwr,
    iam: &str,
    edit: impl FnOnce(&mut String),
) -> (Gateway, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gate = Gateway::start_env(
        &swr.url(),
        &format!("[admin]\nlisten = \"{admin}\"\n"),
        |config| {
            *config = config
                .replace(TOKEN_ENV_IAM, iam)
                .replace("\ntimeout = \"2s\"\n", "\ntimeout = \"10s\"\n");
            edit(config);
        },
        &[(PASSWORD_ENV, PASSWORD), ("RUST_LOG", "debug")],
    );
    (gate, admin)
}

fn readyz(admin: SocketAddr) -> (u16, String) {
    let answer = http_request(admin, "admin", "GET", "/readyz", &[], b"");
    (
        answer.status,
        String::from_utf8_lossy(&answer.body).into_owned(),
    )
}

/// Poll `/readyz` until `done` holds for its answer; that answer, or a panic after `limit`.
fn readyz_until(
    admin: SocketAddr,
    limit: Duration,
    done: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = readyz(admin);
        if done(status, &body) {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "readyz stayed {status}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_ready(admin: SocketAddr, limit: Duration) {
    readyz_until(admin, limit, |status, _| status == 200);
}

/// Not ready, and the first attempt is over (the reason is known).
fn wait_unready(admin: SocketAddr) -> String {
    readyz_until(admin, Duration::from_secs(10), |status, body| {
        status == 503 && !body.contains("in flight") && !body.contains("yet")
    })
    .1
}

fn create(gate: &Gateway) -> Answer {
    gate.json("POST", CREATE, &grants(1))
}

fn audit_text(gate: &Gateway) -> String {
    gate.audit_records();
    std::fs::read_to_string(gate.audit_path()).unwrap_or_default()
}

/// None of `secrets` in the gateway's log or audit trail.
fn assert_kept_secret(gate: &Gateway, secrets: &[&str]) {
    let (log, audit) = (gate.log(), audit_text(gate));
    for secret in secrets {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
        assert!(!audit.contains(secret), "{secret} is in the audit trail");
    }
}

#[test]
fn keystone_tokens_are_checked_by_swr_and_renewed_before_they_expire() {
    let keystone = keystone();
    let swr = StandInSwr::validating(keystone.validator());
    let (gate, admin) = gateway(&swr, &password_iam(&keystone.url()));
    wait_ready(admin, Duration::from_secs(10));

    // Revoked early (as a password change would), well before a scheduled renewal: SWR
    // refuses it, the gateway renews and sends the same request again, once.
    swr.clear();
    assert_eq!(create(&gate).status, 201);
    let current = &swr.tokens()[0];
    keystone.revoke(current);
    swr.clear();
    let answer = create(&gate);
    assert_eq!(
        answer.status,
        201,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let received = swr.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].headers["x-auth-token"], current.as_str());
    assert_ne!(received[1].headers["x-auth-token"], current.as_str());
    assert_eq!(received[0].body, received[1].body);

    // Past the next token's expiry (each is renewed 18 s after it was issued), with
    // requests all along.
    swr.clear();
    let refused = swr.refused();
    let started = Instant::now();
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_secs(TOKEN_SECONDS + 3) {
        statuses.push(create(&gate).status);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(swr.refused(), refused, "SWR never saw a bad token");
    let tokens = swr.tokens();
    assert!(tokens.len() >= 2, "renewed at least once: {}", tokens.len());
    assert_ne!(
        keystone.validate(&tokens[0]),
        200,
        "the first token is dead by now: requests went on because it was renewed in time"
    );
    assert!(gate.log().contains("IAM token obtained"));

    // A made-up token is refused by the same SWR.
    let made_up = Gateway::start(&swr.url());
    assert_eq!(create(&made_up).status, 401);

    let tokens = swr.tokens();
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.push(PASSWORD);
    assert_kept_secret(&gate, &secrets);
}

#[test]
fn iam_down_at_startup_then_up() {
    let keystone = keystone();
    let switch = Switch::start(keystone.addr, false);
    let swr = StandInSwr::validating(keystone.validator());
    let (gate, admin) = gateway(&swr, &password_iam(&switch.url()));

    let reason = wait_unready(admin);
    assert!(reason.contains("could not be reached"), "{reason}");
    assert!(reason.contains("next attempt in"), "{reason}");
    let answer = create(&gate);
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (503, "SWR.GATE.5030001")
    );
    assert!(answer.header("retry-after").is_some());
    let message = answer.json()["error_msg"].as_str().unwrap().to_owned();
    assert!(message.contains("IAM"), "{message}");
    assert!(
        !message.contains("127.0.0.1"),
        "IAM's address is for operators, not clients: {message}"
    );
    assert!(swr.received().is_empty());

    switch.set(true);
    wait_ready(admin, Duration::from_secs(15));
    assert_eq!(create(&gate).status, 201);
    for text in [&reason, &message] {
        assert!(!text.contains(PASSWORD));
    }
    assert_kept_secret(&gate, &[PASSWORD]);
}

#[test]
fn iam_down_during_a_renewal_leaves_the_old_token_in_use() {
    let keystone = keystone();
    let switch = Switch::start(keystone.addr, true);
    let swr = StandInSwr::validating(keystone.validator());
    let (gate, admin) = gateway(&swr, &password_iam(&switch.url()));
    wait_ready(admin, Duration::from_secs(10));
    switch.set(false);

    // The renewal is due two thirds into the token's life; let it and its first retry
    // fail. The next retry comes 1–2 s later, well before the old token's end.
    let started = Instant::now();
    let mut statuses = Vec::new();
    while switch.cut() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(TOKEN_SECONDS),
            "no renewal was tried"
        );
        statuses.push(create(&gate).status);
        assert_eq!(readyz(admin).0, 200, "ready on the old token");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(swr.tokens().len(), 1, "the old token all along");
    assert!(gate.log().contains("no IAM token obtained"));

    switch.set(true);
    let resumed = Instant::now();
    while swr.tokens().len() < 2 {
        assert!(resumed.elapsed() < Duration::from_secs(10), "not renewed");
        statuses.push(create(&gate).status);
        std::thread::sleep(Duration::from_millis(250));
    }
    statuses.push(create(&gate).status);
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(swr.refused(), 0);
}

#[test]
fn iam_refusals_and_garbage_leave_the_gateway_unready_with_the_reason_and_never_the_body() {
    let cases = [
        (IamMode::Status(401), "HTTP 401"),
        (IamMode::Status(500), "HTTP 500"),
        (IamMode::NoToken, "X-Subject-Token"),
        (IamMode::Garbage, "token.expires_at"),
        (IamMode::Expired, "already expired"),
        // Good for an hour by issued_at, but IAM's Date says it expired an hour ago, or
        // has 5 s to live.
        (IamMode::IssuedAgo(2 * HOUR), "already expired"),
        (
            IamMode::IssuedAgo(HOUR - Duration::from_secs(5)),
            "under 10 s to live",
        ),
    ];
    let running: Vec<_> = cases
        .into_iter()
        .map(|(mode, reason)| {
            let iam = FakeIam::start(HOUR);
            iam.set(mode);
            let swr = StandInSwr::validating(iam.validator());
            let (gate, admin) = gateway(&swr, &password_iam(&iam.url()));
            (iam, swr, gate, admin, reason)
        })
        .collect();
    for (_, swr, gate, admin, reason) in &running {
        let said = wait_unready(*admin);
        assert!(said.contains(reason), "{reason}: {said}");
        let answer = create(gate);
        assert_eq!(answer.code(), "SWR.GATE.5030001");
        let body = String::from_utf8_lossy(&answer.body);
        // The client learns that there is no token; why is for /readyz and the log.
        assert!(
            body.contains("IAM token") && !body.contains(reason),
            "{body}"
        );
        for text in [&said, &*body] {
            assert!(
                !text.contains(BODY_MARKER) && !text.contains(PASSWORD),
                "{text}"
            );
        }
        assert!(swr.received().is_empty());
        assert_kept_secret(gate, &[BODY_MARKER, PASSWORD]);
    }

    // IAM answering properly again: the next retry gets a token.
    let (iam, _, gate, admin, _) = &running[1];
    iam.set(IamMode::Issue);
    wait_ready(*admin, Duration::from_secs(10));
    assert_eq!(create(gate).status, 201);
}

#[test]
fn a_token_iam_hands_out_old_lives_what_iams_clock_leaves_it() {
    let iam = FakeIam::start(HOUR);
    iam.set(IamMode::IssuedAgo(HOUR / 2));
    let swr = StandInSwr::validating(iam.validator());
    let (gate, admin) = gateway(&swr, &password_iam(&iam.url()));
    wait_ready(admin, Duration::from_secs(10));
    assert_eq!(create(&gate).status, 201);

    let metrics = http_request(admin, "admin", "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics.body);
    let expires_in: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("swr_gate_iam_token_expires_in_seconds "))
        .unwrap_or_else(|| panic!("no expires_in in {metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        (1780.0..=1796.0).contains(&expires_in),
        "half an hour left, less the last 5 s: {expires_in}"
    );
}

/// SWR refusing every token and IAM answering 500: each 401 asks for a renewal, which
/// fails. Once the token has expired, every 503 still says when to come back, and so does
/// /readyz, however those renewals fall against the refresher's retries.
#[test]
fn a_renewal_failing_on_swrs_401_keeps_the_retry_time_known() {
    let iam = FakeIam::start(Duration::from_secs(15));
    let swr = StandInSwr::validating(iam.validator());
    let (gate, admin) = gateway(&swr, &password_iam(&iam.url()));
    wait_ready(admin, Duration::from_secs(10));
    iam.set(IamMode::Status(500));
    swr.refuse_next(usize::MAX);
    // Slow, so that 401s, and the renewals they ask for, still come after the token's end
    // (13.5 s in); from workers started 0.5 s apart, so that a 401 comes every 0.5 s and
    // the third renewal falls between 14 s and 15.5 s.
    swr.set(Behaviour::Slow(Duration::from_secs(4)));

    let deadline = Instant::now() + Duration::from_secs(20);
    let (answers, readyz_said) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|worker| {
                let gate = &gate;
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(500) * worker);
                    let mut answers = Vec::new();
                    while Instant::now() < deadline {
                        let answer = create(gate);
                        let retry_after = answer.header("retry-after").map(str::to_owned);
                        answers.push((answer.status, retry_after));
                    }
                    answers
                })
            })
            .collect();
        let mut said = Vec::new();
        while Instant::now() < deadline {
            said.push(readyz(admin));
            std::thread::sleep(Duration::from_millis(50));
        }
        let answers: Vec<_> = workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap())
            .collect();
        (answers, said)
    });

    let unavailable: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status == 503)
        .collect();
    assert!(unavailable.len() > 10, "{answers:?}");
    assert!(answers.iter().any(|(status, _)| *status == 401));
    for (_, retry_after) in unavailable {
        let seconds: u64 = retry_after
            .as_deref()
            .unwrap_or_else(|| panic!("a 503 without Retry-After"))
            .parse()
            .unwrap();
        assert!(seconds >= 1);
    }
    for (status, body) in readyz_said.iter().filter(|(status, _)| *status == 503) {
        assert!(
            body.contains("in flight") || body.contains("next attempt in"),
            "{status}: {body}"
        );
    }
    let renewals = gate.log().matches("SWR refused the IAM token").count();
    assert!(renewals >= 3, "{renewals} renewals on SWR's 401");
}

#[test]
fn a_burst_with_no_token_yet_waits_for_one_iam_call() {
    let iam = FakeIam::start(HOUR);
    iam.delay(Duration::from_millis(1500));
    let swr = StandInSwr::validating(iam.validator());
    let (gate, _admin) = gateway(&swr, &password_iam(&iam.url()));

    let started = Instant::now();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let burst: Vec<_> = (0..20)
            .map(|_| scope.spawn(|| create(&gate).status))
            .collect();
        burst.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        started.elapsed() > Duration::from_millis(500),
        "the burst came while the first fetch was in flight"
    );
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(iam.calls().len(), 1);
    assert_eq!(swr.tokens().len(), 1);
}

/// A first fetch that outlasts the 5 s a request waits for it: the request gets a 503
/// that says when to come back, and the token serves once it comes.
#[test]
fn a_first_fetch_slower_than_a_request_waits_says_when_to_retry() {
    let iam = FakeIam::start(HOUR);
    iam.delay(Duration::from_secs(7));
    let swr = StandInSwr::validating(iam.validator());
    let (gate, admin) = gateway(&swr, &password_iam(&iam.url()));

    let answer = create(&gate);
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (503, "SWR.GATE.5030001")
    );
    assert_eq!(answer.header("retry-after"), Some("1"));
    wait_ready(admin, Duration::from_secs(10));
    assert_eq!(create(&gate).status, 201);
    assert_eq!(iam.calls().len(), 1);
}

#[test]
fn swr_refusing_the_token_makes_one_renewal_and_one_retry() {
    let iam = FakeIam::start(HOUR);
    let swr = StandInSwr::validating(iam.validator());

    // Refused once: renewed, sent again, and the client gets SWR's second answer.
    let (gate, admin) = gateway(&swr, &password_iam(&iam.url()));
    wait_ready(admin, Duration::from_secs(10));
    let calls = iam.calls().len();
    swr.refuse_next(1);
    let answer = create(&gate);
    assert_eq!(answer.status, 201);
    assert_eq!(iam.calls().len(), calls + 1);
    let received = swr.received();
    assert_eq!(received.len(), 2);
    assert_ne!(
        received[0].headers["x-auth-token"],
        received[1].headers["x-auth-token"]
    );
    let completed = gate.audit_records().pop().unwrap();
    assert_eq!(
        (&completed["status"], &completed["upstream_status"]),
        (&201.into(), &201.into())
    );

    // Refused twice: still one renewal and one retry; the second 401 is the client's.
    let (gate, admin) = gateway(&swr, &password_iam(&iam.url()));
    wait_ready(admin, Duration::from_secs(10));
    let calls = iam.calls().len();
    swr.clear();
    swr.refuse_next(2);
    let answer = create(&gate);
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (401, "SVCSTG.SWR.4010000")
    );
    assert_eq!(iam.calls().len(), calls + 1);
    assert_eq!(swr.received().len(), 2);
    let completed = gate.audit_records().pop().unwrap();
    assert_eq!(completed["upstream_status"], 401);

    // A burst all carrying a token SWR no longer takes: one renewal for all of them.
    let (gate, admin) = gateway(&swr, &password_iam(&iam.url()));
    wait_ready(admin, Duration::from_secs(10));
    swr.clear();
    assert_eq!(create(&gate).status, 201);
    swr.revoke(&swr.tokens()[0]);
    let calls = iam.calls().len();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let burst: Vec<_> = (0..10)
            .map(|_| scope.spawn(|| create(&gate).status))
            .collect();
        burst.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(iam.calls().len(), calls + 1);

    // A forwarded request with no body is sent again as well; one whose body was
    // streamed is not, but the next request goes with a renewed token.
    let (gate, admin) = gateway_with(&swr, &password_iam(&iam.url()), forward_unmatched);
    wait_ready(admin, Duration::from_secs(10));
    let show = "/v2/manage/namespaces/team-a/repos/app/access";
    let calls = iam.calls().len();
    swr.refuse_next(1);
    assert_eq!(gate.json("GET", show, "").status, 201);
    assert_eq!(iam.calls().len(), calls + 1);
    // (Renewals are at most one per few seconds: a gateway of its own for the next part.)
    let (gate, admin) = gateway_with(&swr, &password_iam(&iam.url()), forward_unmatched);
    wait_ready(admin, Duration::from_secs(10));
    assert_eq!(gate.json("GET", show, "").status, 201);
    let calls = iam.calls().len();
    swr.revoke(&swr.tokens().pop().unwrap());
    let streamed = gate.send(
        "POST",
        "/v2/manage/namespaces/team-a/repositories",
        &[("x-api-key", API_KEY), ("content-type", "application/json")],
        b"{\"namespace\":\"team-a\",\"repository\":\"new\"}",
    );
    assert_eq!(streamed.status, 401);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while iam.calls().len() == calls {
        assert!(
            std::time::Instant::now() < deadline,
            "no renewal after a streamed 401"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gate.json("GET", show, "").status, 201);
}

#[test]
fn agency_tokens_are_assumed_with_the_users_own_token() {
    let iam = FakeIam::start(HOUR);
    let swr = StandInSwr::validating(iam.validator());
    let agency = format!(
        "[iam]\nmethod = \"agency\"\nendpoint = \"{}\"\nuser = \"{USER}\"\ndomain = \"{DOMAIN}\"\n\
         password_env = \"{PASSWORD_ENV}\"\nproject = \"{PROJECT}\"\n\
         agency_name = \"swr-admin\"\nagency_domain = \"owner-account\"\n",
        iam.url()
    );
    let (gate, admin) = gateway(&swr, &agency);
    wait_ready(admin, Duration::from_secs(10));
    assert_eq!(create(&gate).status, 201);

    let calls = iam.calls();
    assert_eq!(calls.len(), 2);
    let own = &calls[0].body["auth"];
    assert_eq!(own["identity"]["methods"], serde_json::json!(["password"]));
    assert_eq!(own["identity"]["password"]["user"]["password"], PASSWORD);
    assert_eq!(
        own["scope"],
        serde_json::json!({"domain": {"name": DOMAIN}})
    );
    assert_eq!(calls[0].auth_token, None);
    let assumed = &calls[1].body["auth"];
    assert_eq!(
        assumed["identity"],
        serde_json::json!({"methods": ["assume_role"],
            "assume_role": {"domain_name": "owner-account", "agency_name": "swr-admin"}})
    );
    assert_eq!(
        assumed["scope"],
        serde_json::json!({"project": {"name": PROJECT}})
    );
    let own_token = calls[1].auth_token.clone().unwrap();
    assert!(own_token.starts_with("fake-0-"), "{own_token}");
    let tokens = swr.tokens();
    assert_eq!(tokens.len(), 1);
    assert!(
        tokens[0].starts_with("fake-1-"),
        "SWR gets the agency's token"
    );
    assert_kept_secret(&gate, &[PASSWORD, &own_token, &tokens[0]]);
}

#[test]
fn iam_over_https_trusts_what_the_upstream_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "iam-ca");
    let (cert, key) = pki.issue("localhost", &["localhost"]);
    let iam = FakeIam::start_tls(HOUR, &cert, &key);
    let swr = StandInSwr::validating(iam.validator());
    let section = password_iam(&iam.tls_url());

    let ca = pki.ca_file.display().to_string();
    let (gate, admin) = gateway_with(&swr, &section, |config| {
        *config = config.replace("[upstream]\n", &format!("[upstream]\nca_file = \"{ca}\"\n"));
    });
    wait_ready(admin, Duration::from_secs(10));
    assert_eq!(create(&gate).status, 201);

    let (_untrusting, admin) = gateway(&swr, &section);
    let reason = wait_unready(admin);
    assert!(reason.contains("certificate"), "{reason}");
}

#[test]
fn a_token_file_is_re_read_when_it_changes() {
    let swr = StandInSwr::start();
    let (gate, admin) = gateway(
        &swr,
        "[iam]\nmethod = \"token_file\"\ntoken_file = \"iam-token\"\n",
    );
    let reason = wait_unready(admin);
    // Named by its setting, not its path: a token pasted there by mistake stays unshown.
    assert!(
        reason.contains("token_file: the file it names cannot be read (No such file"),
        "{reason}"
    );
    let answer = create(&gate);
    assert_eq!(
        (
            answer.status,
            answer.code().as_str(),
            answer.header("retry-after")
        ),
        (503, "SWR.GATE.5030001", Some("1")),
        "the file is looked at again within a second"
    );
    let file = gate.dir.path().join("iam-token");
    let stale = "gAAAAABstale-iam-token-012345678";
    assert_eq!(stale.len(), TOKEN.len());
    std::fs::write(&file, stale).unwrap();
    wait_ready(admin, Duration::from_secs(5));
    assert_eq!(
        create(&gate).status,
        401,
        "SWR refuses it; the file, read again, has nothing better"
    );

    // Rotated by another process, as Kubernetes updates a mounted Secret, with the same
    // length and time.
    swap_in_keeping_time(&file, TOKEN);
    // Taken up by the file watcher, not by SWR refusing the old token first: a 401 makes
    // the gateway read the file again too, which would hide a watcher that missed it.
    std::thread::sleep(Duration::from_millis(4000));
    let refused = swr.refused();
    assert_eq!(create(&gate).status, 201, "the new token was not picked up");
    assert_eq!(swr.refused(), refused, "the old token was still in use");

    // Removed right after the start: no token, although no look found the file before.
    let outside = tempfile::tempdir().unwrap();
    let file = outside.path().join("iam-token");
    std::fs::write(&file, TOKEN).unwrap();
    let iam = format!(
        "[iam]\nmethod = \"token_file\"\ntoken_file = {:?}\n",
        file.display().to_string()
    );
    let (gate, admin) = gateway(&swr, &iam);
    std::fs::remove_file(&file).unwrap();
    let reason = wait_unready(admin);
    assert!(reason.contains("token_file"), "{reason}");
    assert_eq!(create(&gate).code(), "SWR.GATE.5030001");
}

#[test]
fn check_and_serve_name_a_missing_password_variable() {
    let dir = tempfile::tempdir().unwrap();
    let text = config("127.0.0.1:1".parse().unwrap(), "http://127.0.0.1:2", "")
        .replace(TOKEN_ENV_IAM, &password_iam("https://iam.example"));
    let path = dir.path().join("gate.toml");
    std::fs::write(&path, text).unwrap();
    let run = |command: &str, password: Option<&str>| {
        let mut run = Command::new(env!("CARGO_BIN_EXE_swr-gate"));
        run.args([command, "--config"])
            .arg(&path)
            .env_remove(PASSWORD_ENV);
        if let Some(password) = password {
            run.env(PASSWORD_ENV, password);
        }
        let output = run.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    for command in ["check", "serve"] {
        let (ok, stderr) = run(command, None);
        assert!(!ok && stderr.contains(PASSWORD_ENV), "{command}: {stderr}");
    }
    let (ok, stderr) = run("check", Some(PASSWORD));
    assert!(ok, "{stderr}");
}
