//! Login sessions for local users through the real server: the login form
//! with its CSRF token, the session cookie's flags and size, identity
//! headers, tampered and ended sessions, open redirects, logout and
//! revocation across instances, login limiting, bcrypt-to-argon2id
//! upgrades, session-key rotation, and the `users` CLI.

mod common;

use std::path::Path;
use std::time::Duration;

use common::browser::*;
use common::*;

const SESSION_KEY: &str = "k7PzQ2vL9xW4mN8bR3tY6uI1oA5sD0fGhJ2kL4zX";
const OLD_SESSION_KEY: &str = "old-Qm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV4Mg";

const ROUTES: &str = r#"
[[routes]]
id = "portal"
path = "/portal"
upstream = "app"
auth = ["session"]

[[routes]]
id = "ops"
path = "/ops"
upstream = "app"
auth = ["session"]
roles = ["ops"]

[[routes]]
id = "public"
path = "/"
upstream = "app"
auth = ["none"]
"#;

/// Config text with sessions for local users; the session key in a file.
fn session_config(upstream: &TestUpstream, store_url: Option<&str>, sessions: &str, keys: &str) -> String {
    let dir = scratch_dir();
    let key_file = dir.join("session.key");
    std::fs::write(&key_file, SESSION_KEY).unwrap();
    let old_file = dir.join("old-session.key");
    std::fs::write(&old_file, OLD_SESSION_KEY).unwrap();
    let keys = keys
        .replace("{key}", &key_file.display().to_string())
        .replace("{old}", &old_file.display().to_string());
    config_with_store(
        "production",
        &upstream.url(),
        store_url,
        &format!("[sessions]\nlocal_users = true\n{sessions}\n{ROUTES}"),
    )
    .replacen("[secrets]\n", &format!("[secrets]\n{keys}\n"), 1)
}

const KEY: &str = "session_key = { file = \"{key}\" }";

async fn add_user(gw: &portcullis::Gateway, name: &str, password: &str, roles: &[&str]) {
    let hash = portcullis::users::hash_password(password).unwrap();
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    store_of(gw).create_user(name, &hash, &roles).await.unwrap();
}

async fn audit_reasons(gw: &portcullis::Gateway, kind: &str) -> Vec<String> {
    audit_events(gw, Some(kind))
        .await
        .iter()
        .map(|e| e.event.details["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Logs in and expects to be sent on (303).
async fn assert_logs_in(browser: &Browser, rd: &str, user: &str) {
    let response = log_in(browser, rd, user, "correct horse battery").await;
    assert_eq!(response.status(), 303, "{user} logs in");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_user_logs_in_uses_the_portal_and_logs_out() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&session_config(&upstream, None, "", KEY)).await;
    add_user(&gw, "alice", "correct horse battery", &["ops"]).await;
    let browser = Browser::new(gw.public_addr());

    // Without a session: a page load goes to the login page, a script gets 401.
    let response = browser.get("/portal/reports?q=1").await;
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "/.auth/login?rd=%2Fportal%2Freports%3Fq%3D1"
    );
    let doc = assert_problem(browser.get_json("/portal/reports").await, 401).await;
    assert_eq!(doc["detail"], "This route needs you to log in.");

    // The form's token is bound to the pre-login cookie.
    let page = browser.get("/.auth/login?rd=%2Fportal%2Freports").await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    let csrf = hidden_field(&html, "csrf").unwrap();
    let stranger = Browser::new(gw.public_addr());
    let forged = stranger
        .post_form(
            "/.auth/login",
            &[
                ("csrf", &csrf),
                ("rd", "/portal"),
                ("username", "alice"),
                ("password", "correct horse battery"),
            ],
        )
        .await;
    assert_eq!(forged.status(), 403, "a token without its cookie is refused");

    let wrong = log_in(&browser, "/portal", "alice", "wrong horse battery").await;
    assert_eq!(wrong.status(), 401);
    assert!(
        wrong
            .text()
            .await
            .unwrap()
            .contains("Wrong user name or password.")
    );
    let unknown = log_in(&browser, "/portal", "mallory", "correct horse battery").await;
    assert_eq!(unknown.status(), 401);

    let ok = log_in(&browser, "/portal/reports", "alice", "correct horse battery").await;
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/portal/reports");
    let cookie = browser
        .last_set_cookie("__Host-portcullis")
        .expect("a session cookie");
    for flag in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(cookie.line.contains(flag), "{flag} missing: {}", cookie.line);
    }
    assert!(!cookie.line.contains("Domain="), "a __Host- cookie has no Domain");
    assert!(cookie.line.len() < 200, "the cookie stays small: {}", cookie.line);

    let response = browser.get("/portal/reports").await;
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-portcullis-user"], "alice");
    assert_eq!(seen.headers["x-portcullis-issuer"], "local");
    assert_eq!(seen.headers["x-portcullis-roles"], "ops");
    assert!(
        seen.headers
            .get("cookie")
            .is_none_or(|c| !c.to_str().unwrap().contains("portcullis")),
        "the session cookie does not reach the upstream"
    );
    assert_eq!(
        browser.get("/ops").await.status(),
        200,
        "alice holds the ops role"
    );
    let info = json(browser.get_json("/.auth/userinfo").await).await;
    assert_eq!(info["user"], "alice");
    assert_eq!(info["roles"][0], "ops");

    // The gateway's cookies never reach an upstream, on any route.
    let response = browser.get("/elsewhere").await;
    assert_eq!(response.status(), 200);
    let cookies = upstream
        .last()
        .headers
        .get("cookie")
        .map(|c| c.to_str().unwrap().to_string());
    assert!(
        cookies.as_ref().is_none_or(|c| !c.contains("portcullis")),
        "{cookies:?}"
    );
    // Also when another cookie on the line holds UTF-8 (apps set such).
    let session = browser.cookie("__Host-portcullis").unwrap();
    let line = format!("name=Jos\u{e9}; __Host-portcullis={session}");
    let response = client()
        .get(format!("http://{}/elsewhere", gw.public_addr()))
        .header("cookie", http::HeaderValue::from_bytes(line.as_bytes()).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    let cookie = seen
        .headers
        .get("cookie")
        .map(|c| c.as_bytes().to_vec())
        .unwrap_or_default();
    assert_eq!(
        cookie,
        "name=Jos\u{e9}".as_bytes(),
        "only the app's cookie goes on"
    );
    // `/.auth/` cannot be reached upstream through another spelling.
    for sneaky in ["/x/../.auth/login", "/%2Eauth/login", "/x/%2e%2e/.auth/userinfo"] {
        let before = upstream.count();
        let request = format!("GET {sneaky} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let answer = raw(gw.public_addr(), request.as_bytes()).await;
        assert_eq!(raw_status(&answer), 404, "{sneaky}: {answer}");
        assert_eq!(upstream.count(), before, "{sneaky} reached the upstream");
    }

    // Tampered cookies are refused without a lookup.
    let tampered = Browser::new(gw.public_addr());
    let value = browser.cookie("__Host-portcullis").unwrap();
    let mut chars: Vec<char> = value.chars().collect();
    let i = 10;
    chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
    tampered.set_cookie("__Host-portcullis", &chars.into_iter().collect::<String>());
    let doc = assert_problem(tampered.get_json("/portal").await, 401).await;
    assert_eq!(doc["detail"], "The session cookie is not valid.");

    // Logging in again ends the session the browser had (no fixation).
    let first = browser.cookie("__Host-portcullis").unwrap();
    assert_logs_in(&browser, "/portal", "alice").await;
    let replay = Browser::new(gw.public_addr());
    replay.set_cookie("__Host-portcullis", &first);
    assert_eq!(
        replay.get_json("/portal").await.status(),
        401,
        "the earlier session ended"
    );

    // Logout needs the form's token; then the session is gone.
    let page = browser.get("/.auth/logout").await.text().await.unwrap();
    let token = hidden_field(&page, "csrf").unwrap();
    assert_eq!(
        browser
            .post_form("/.auth/logout", &[("csrf", "forged")])
            .await
            .status(),
        403
    );
    let old_cookie = browser.cookie("__Host-portcullis").unwrap();
    let out = browser.post_form("/.auth/logout", &[("csrf", &token)]).await;
    assert_eq!(out.status(), 303);
    assert!(
        browser.cookie("__Host-portcullis").is_none(),
        "the cookie is cleared"
    );
    let replay = Browser::new(gw.public_addr());
    replay.set_cookie("__Host-portcullis", &old_cookie);
    let doc = assert_problem(replay.get_json("/portal").await, 401).await;
    assert_eq!(doc["detail"], "The session has ended; log in again.");

    let failures = audit_reasons(&gw, "login.failure").await;
    for reason in ["csrf", "wrong_password", "unknown_user"] {
        assert!(failures.iter().any(|r| r == reason), "{reason}: {failures:?}");
    }
    assert_eq!(audit_reasons(&gw, "login.success").await.len(), 2, "two logins");
    assert_eq!(audit_reasons(&gw, "session.logout").await.len(), 1);
    // No password or cookie value in the audit log.
    let all = serde_json::to_string(&audit_events(&gw, None).await).unwrap();
    assert!(!all.contains("horse"), "a password reached the audit log");
    assert!(
        !all.contains(&old_cookie[3..40]),
        "a session cookie reached the audit log"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_after_login_stay_on_this_origin() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&session_config(&upstream, None, "", KEY)).await;
    add_user(&gw, "alice", "correct horse battery", &[]).await;
    for evil in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "/%2F%2Fevil.example",
        "%2F%2Fevil.example",
        "/%5Cevil.example",
        "javascript:alert(1)",
    ] {
        let browser = Browser::new(gw.public_addr());
        let response = log_in(&browser, evil, "alice", "correct horse battery").await;
        assert_eq!(response.status(), 303, "{evil}");
        assert_eq!(response.headers()["location"], "/", "{evil}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_absolute_expiry_end_sessions_and_roles_are_checked() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&session_config(
        &upstream,
        None,
        "idle_timeout = \"2s\"\nmax_age = \"4s\"",
        KEY,
    ))
    .await;
    add_user(&gw, "bob", "correct horse battery", &[]).await;
    let browser = Browser::new(gw.public_addr());
    assert_logs_in(&browser, "/portal", "bob").await;
    assert_eq!(browser.get("/portal").await.status(), 200);
    let doc = assert_problem(browser.get_json("/ops").await, 403).await;
    assert_eq!(
        doc["detail"],
        "Your session holds none of the roles this route requires: ops."
    );
    // Used every second: the idle timeout does not end it, max_age does.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(browser.get_json("/portal").await.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(browser.get_json("/portal").await.status(), 401, "past max_age");
    // Unused for longer than idle_timeout.
    assert_logs_in(&browser, "/portal", "bob").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(browser.get_json("/portal").await.status(), 401, "idle");
    let reasons = audit_reasons(&gw, "auth.failure").await;
    assert!(reasons.iter().any(|r| r == "expired"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "idle"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "missing_role"), "{reasons:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn login_attempts_are_limited_per_user_name() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&session_config(
        &upstream,
        None,
        "login_limit = \"3 per minute\"",
        KEY,
    ))
    .await;
    add_user(&gw, "carol", "correct horse battery", &[]).await;
    let browser = Browser::new(gw.public_addr());
    for _ in 0..3 {
        assert_eq!(
            log_in(&browser, "/", "carol", "guess guess guess").await.status(),
            401
        );
    }
    let limited = log_in(&browser, "/", "carol", "correct horse battery").await;
    assert_eq!(limited.status(), 429, "even the right password waits");
    let wait: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(
        audit_reasons(&gw, "login.failure")
            .await
            .iter()
            .any(|r| r == "limited")
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_session_key_keeps_sessions_valid_through_previous_keys() {
    let upstream = TestUpstream::start().await;
    let dir = scratch_dir();
    let store_url = format!("sqlite://{}/shared.db", dir.display());
    // Logged in under the old key.
    let old = session_config(
        &upstream,
        Some(&store_url),
        "",
        "session_key = { file = \"{old}\" }",
    );
    let gw = start_gateway(&old).await;
    add_user(&gw, "dave", "correct horse battery", &[]).await;
    let browser = Browser::new(gw.public_addr());
    assert_logs_in(&browser, "/portal", "dave").await;
    gw.shutdown().await;
    // The key is rotated: the old one moves to previous_session_keys.
    let rotated = session_config(
        &upstream,
        Some(&store_url),
        "",
        "session_key = { file = \"{key}\" }\nprevious_session_keys = [{ file = \"{old}\" }]",
    );
    let gw = start_gateway(&rotated).await;
    let browser = browser.at(gw.public_addr());
    assert_eq!(
        browser.get("/portal").await.status(),
        200,
        "the old cookie still opens"
    );
    gw.shutdown().await;
    // Once the old key is dropped, its cookies no longer open.
    let gw = start_gateway(&session_config(&upstream, Some(&store_url), "", KEY)).await;
    let browser = browser.at(gw.public_addr());
    assert_eq!(browser.get_json("/portal").await.status(), 401);
    gw.shutdown().await;
}

async fn logout_elsewhere(store_url: Option<&str>) {
    let upstream = TestUpstream::start().await;
    let dir = scratch_dir();
    let shared = store_url
        .map(String::from)
        .unwrap_or_else(|| format!("sqlite://{}/shared.db", dir.display()));
    let text = session_config(&upstream, Some(&shared), "", KEY);
    let a = start_gateway(&text).await;
    let b = start_gateway(&text).await;
    add_user(&a, "erin", "correct horse battery", &[]).await;
    let on_a = Browser::new(a.public_addr());
    assert_logs_in(&on_a, "/portal", "erin").await;
    let on_b = on_a.at(b.public_addr());
    assert_eq!(
        on_b.get("/portal").await.status(),
        200,
        "the session works on the other instance"
    );
    let page = on_a.get("/.auth/logout").await.text().await.unwrap();
    let token = hidden_field(&page, "csrf").unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        on_a.post_form("/.auth/logout", &[("csrf", &token)])
            .await
            .status(),
        303
    );
    wait_until_async(
        "the other instance refuses the ended session",
        Duration::from_secs(3),
        async || on_b.get_json("/portal").await.status() == 401,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_on_one_instance_ends_the_session_on_another_within_a_second_on_sqlite() {
    logout_elsewhere(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_on_one_instance_ends_the_session_on_another_within_a_second_on_postgres() {
    let Some(url) = postgres_url("logout_elsewhere_on_postgres").await else {
        return;
    };
    logout_elsewhere(Some(&url)).await;
}

fn cli_with_stdin(config: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(binary_path())
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_users_cli_creates_imports_upgrades_bcrypt_and_disables_through_the_binary() {
    let upstream = TestUpstream::start().await;
    let dir = scratch_dir();
    let config = dir.join("portcullis.toml");
    std::fs::write(&config, session_config(&upstream, None, "", KEY)).unwrap();

    let out = cli_with_stdin(
        &config,
        &["users", "create", "frank", "--roles", "ops", "--password-stdin"],
        "correct horse battery\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let short = cli_with_stdin(
        &config,
        &["users", "create", "gina", "--password-stdin"],
        "short\n",
    );
    assert!(!short.status.success(), "a short password is refused");
    let argv = cli_with_stdin(&config, &["users", "create", "gina"], "");
    assert!(!argv.status.success(), "a password must come from stdin");

    // A legacy bcrypt hash, as exported from the old app.
    let legacy = bcrypt::hash("legacy password!", 4).unwrap();
    let import = dir.join("users.txt");
    std::fs::write(&import, format!("# exported\nhank:{legacy}:ops,billing\n")).unwrap();
    let out = run_cli(&config, &["users", "import", import.to_str().unwrap()]);
    assert!(out.contains("1 user(s) imported"), "{out}");
    let listed: serde_json::Value =
        serde_json::from_str(&run_cli(&config, &["users", "list", "--json"])).unwrap();
    let hank = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "hank")
        .unwrap()
        .clone();
    assert_eq!(hank["hash_kind"], "bcrypt");
    assert!(!listed.to_string().contains("$2"), "hashes are never listed");

    let mut gw = Binary::serve(&config, &[]);
    let browser = Browser::new(gw.public);
    assert_eq!(
        log_in(&browser, "/portal", "hank", "legacy password!")
            .await
            .status(),
        303
    );
    assert_eq!(browser.get("/portal").await.status(), 200);
    assert_eq!(upstream.last().headers["x-portcullis-roles"], "ops billing");
    let listed: serde_json::Value =
        serde_json::from_str(&run_cli(&config, &["users", "list", "--json"])).unwrap();
    let hank = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "hank")
        .unwrap()
        .clone();
    assert_eq!(hank["hash_kind"], "argon2id", "upgraded at the first login");
    assert_eq!(
        log_in(&Browser::new(gw.public), "/", "hank", "legacy password!")
            .await
            .status(),
        303,
        "the new hash works"
    );

    // Disabling ends the user's sessions on the running gateway.
    let frank = Browser::new(gw.public);
    assert_logs_in(&frank, "/portal", "frank").await;
    assert_eq!(frank.get("/portal").await.status(), 200);
    let out = run_cli(&config, &["users", "disable", "frank"]);
    assert!(out.contains("1 session(s) ended"), "{out}");
    wait_until_async(
        "the disabled user's session is refused",
        Duration::from_secs(3),
        async || frank.get_json("/portal").await.status() == 401,
    )
    .await;
    assert_eq!(
        log_in(&frank, "/portal", "frank", "correct horse battery")
            .await
            .status(),
        401
    );
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(10)).is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_revocation_ends_a_users_sessions_on_every_instance() {
    let upstream = TestUpstream::start().await;
    let dir = scratch_dir();
    let shared = format!("sqlite://{}/shared.db", dir.display());
    let text = session_config(&upstream, Some(&shared), "", KEY);
    let a = start_gateway(&text).await;
    let b = start_gateway(&text).await;
    add_user(&a, "gail", "correct horse battery", &[]).await;
    let on_a = Browser::new(a.public_addr());
    assert_logs_in(&on_a, "/portal", "gail").await;
    let on_b = on_a.at(b.public_addr());
    assert_eq!(on_b.get("/portal").await.status(), 200);
    let revoked = client()
        .post(format!(
            "http://{}/admin/api/v1/users/gail/sessions/revoke",
            a.admin_addr()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(json(revoked).await["sessions"], 1);
    assert_eq!(
        on_a.get_json("/portal").await.status(),
        401,
        "at once where it was revoked"
    );
    wait_until_async(
        "the other instance refuses",
        Duration::from_millis(2500),
        async || on_b.get_json("/portal").await.status() == 401,
    )
    .await;
    assert_eq!(audit_events(&a, Some("session.revoked")).await.len(), 1);
    a.shutdown().await;
    b.shutdown().await;
}
