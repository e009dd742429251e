//! A real OpenID provider for login tests: `oidc-provider` from npm
//! (tests/support/oidc-provider, installed by `.ci/oidc-provider.sh`), run
//! with Node.js on a loopback port, and the browser's side of its login.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};

use super::browser::{Browser, hidden_field};

pub struct OpenIdProvider {
    pub issuer: String,
    child: Child,
    /// The server exits when this closes (also if the test dies).
    _stdin: ChildStdin,
}

/// A loopback port nothing listens on right now (for a gateway whose
/// public URL must be known before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl OpenIdProvider {
    /// Starts the provider with one client (`gw`/`gw-secret-…`) allowed to
    /// return to `redirect_uris`, and these accounts (`sub`, `email`).
    /// `None` when the harness is not installed outside CI.
    pub fn start(redirect_uris: &[String], accounts: &[(&str, &str)], alg: &str) -> Option<OpenIdProvider> {
        Self::start_with(redirect_uris, accounts, alg, &[])
    }

    /// [`Self::start`] with more of server.mjs's settings (e.g.
    /// `ACCESS_TOKEN_TTL`).
    pub fn start_with(
        redirect_uris: &[String],
        accounts: &[(&str, &str)],
        alg: &str,
        env: &[(&str, &str)],
    ) -> Option<OpenIdProvider> {
        let dir = format!("{}/tests/support/oidc-provider", env!("CARGO_MANIFEST_DIR"));
        if !std::path::Path::new(&format!("{dir}/node_modules/oidc-provider")).exists() {
            super::skip_or_fail(
                "oidc",
                "the oidc-provider harness is not installed (bash .ci/oidc-provider.sh)",
            );
            return None;
        }
        let clients = serde_json::json!([{
            "client_id": "gw",
            "client_secret": CLIENT_SECRET,
            "redirect_uris": redirect_uris,
        }]);
        let accounts: Vec<serde_json::Value> = accounts
            .iter()
            .map(|(sub, email)| serde_json::json!({"sub": sub, "email": email, "email_verified": true, "name": sub}))
            .collect();
        let mut child = Command::new("node")
            .arg(format!("{dir}/server.mjs"))
            .env("PORT", "0")
            .env("SIGNING_ALG", alg)
            .env("CLIENTS", clients.to_string())
            .env("ACCOUNTS", serde_json::Value::from(accounts).to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts");
        let stdin = child.stdin.take().unwrap();
        // Its one stdout line, or a failure within 20 s (never a hang).
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("oidc-provider printed nothing within 20 s"));
        let issuer = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("oidc-provider did not start: {line:?}"))
            .to_string();
        Some(OpenIdProvider {
            issuer,
            child,
            _stdin: stdin,
        })
    }
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const CLIENT_SECRET: &str = "gw-Tq8vZk2mWp5xRb7nLc3hYd9sFj4gHa6eQ1";

/// The location a redirect points to, made absolute against `base`.
fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_string()
    } else {
        format!("{base}{location}")
    }
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_string()
}

/// Logs in through the provider as `login`: the gateway's redirect, the
/// provider's interaction (its login form), and back to the gateway's
/// callback. Returns the callback's answer.
pub async fn provider_login(
    browser: &Browser,
    provider: &str,
    op: &OpenIdProvider,
    rd: &str,
    login: &str,
) -> reqwest::Response {
    let start = browser
        .get(&format!(
            "/.auth/login/{provider}?rd={}",
            super::browser::url_encode(rd)
        ))
        .await;
    assert_eq!(
        start.status(),
        302,
        "the gateway sends the browser to the provider"
    );
    let authorize = location(&start);
    assert!(authorize.starts_with(&op.issuer), "{authorize}");
    for param in [
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
        "response_type=code",
    ] {
        assert!(authorize.contains(param), "{param} missing in {authorize}");
    }
    let to_interaction = browser.get(&authorize).await;
    assert_eq!(to_interaction.status(), 303);
    let interaction = absolute(&op.issuer, &location(&to_interaction));
    let form = browser.get(&interaction).await;
    assert_eq!(form.status(), 200);
    let _ = hidden_field(&form.text().await.unwrap(), "csrf");
    let done = browser
        .post_form(&format!("{interaction}/login"), &[("login", login)])
        .await;
    assert_eq!(done.status(), 303, "the provider accepts the login");
    let resume = browser.get(&absolute(&op.issuer, &location(&done))).await;
    assert_eq!(resume.status(), 303);
    let callback = location(&resume);
    assert!(callback.contains("/.auth/callback/"), "{callback}");
    browser.get(&callback).await
}
