//! The command line: `check` (every fail-fast rule, all problems at once),
//! `secret generate`.

mod common;

use std::process::{Command, Output};

use common::{at, binary_path, edit, set, unset};

const STRONG: &str = "Jq3vX9rT0pLm4WcZ8yHs2NbF6gKd1QaE5uRiO7tVxYw";

fn check(text: &str, envs: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(binary_path());
    cmd.arg("check").arg("--config").arg(&path);
    // Keep the developer's own PORTCULLIS_* variables out of the test.
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

const BASE: &str = r#"
[server]
listen = "127.0.0.1:8080"

[[upstreams]]
name = "app"
targets = ["http://127.0.0.1:8000"]
"#;

#[test]
fn a_good_production_config_passes() {
    let text = format!(
        r#"environment = "production"
{BASE}
[secrets]
admin_token = {{ env = "T_ADMIN" }}

[[routes]]
path = "/"
upstream = "app"
auth = ["none"]
"#
    );
    let (code, out, err) = check(&text, &[("T_ADMIN", STRONG)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK (production, 1 route, 1 upstream)"), "{out}");
}

#[test]
fn production_refusals_are_all_listed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let short_file = dir.path().join("short");
    std::fs::write(&short_file, "tooshort\n").unwrap();
    let text = format!(
        r#"# environment omitted: production is the default
{BASE}
[secrets]
admin_token = {{ env = "T_MISSING" }}
session_key = {{ file = "{}" }}

[[routes]]
path = "/open"
upstream = "app"

[[routes]]
path = "/ok"
upstream = "app"
auth = ["none"]
"#,
        short_file.display()
    );
    let (code, _, err) = check(&text, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("secrets.admin_token: environment variable `T_MISSING` is not set"),
        "{err}"
    );
    assert!(
        err.contains("secrets.session_key: the secret is 8 bytes long"),
        "{err}"
    );
    assert!(
        err.contains("routes[0] (route `/open`): the route has no `auth`"),
        "{err}"
    );
    assert!(err.contains("3 problems found"), "{err}");
    // Problems in the file name their line.
    assert!(err.contains("portcullis.toml:14: routes[0]"), "{err}");
}

#[test]
fn empty_and_placeholder_secrets_are_refused_in_production() {
    let text = format!(
        r#"{BASE}
[secrets]
admin_token = {{ env = "T_ADMIN" }}
session_key = {{ env = "T_SESSION" }}
"#
    );
    let cases: &[(&str, &str)] = &[
        ("", "is empty"),
        ("your-secret-key-here-change-in-production", "placeholder"),
        ("dev-only-secret-key-do-not-use-in-production", "placeholder"),
        ("changeme", "bytes long"),
        ("secret", "bytes long"),
        ("secretsecretsecretsecretsecretsecret", "placeholder"),
        (
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "distinct characters",
        ),
        (
            "abcabcabcabcabcabcabcabcabcabcabcabcabcabc",
            "distinct characters",
        ),
        ("0123456701234567012345670123456701234567", "placeholder"),
        ("10101010101010101010101010101010101011111", "distinct characters"),
        ("abcdefghabcdefghabcdefghabcdefghabcdefgh", "placeholder"),
        (
            "mnopqrstmnopqrstmnopqrstmnopqrstmnopqrst",
            "repeats a 8-character pattern",
        ),
        ("ababababcdcdcdcdababababcdcdcdcdeeeeffff", "low entropy"),
        ("zzzzyyyyxxxxwwwwvvvvuuuuttttsssszzzzyyyy", "low entropy"),
    ];
    for (value, why) in cases {
        let (code, _, err) = check(&text, &[("T_ADMIN", value), ("T_SESSION", STRONG)]);
        assert_eq!(code, 1, "{value}: {err}");
        assert!(err.contains("secrets.admin_token"), "{value}: {err}");
        assert!(
            err.contains(why),
            "`{value}` should be refused for `{why}`: {err}"
        );
    }
}

#[test]
fn inline_secrets_are_refused_in_production_and_allowed_in_development() {
    let text = format!("{BASE}\n[secrets]\nadmin_token = \"{STRONG}\"\n");
    let (code, _, err) = check(&text, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("must not be written in the config in production"),
        "{err}"
    );
    let (code, out, err) = check(&format!("environment = \"development\"\n{text}"), &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn development_generates_missing_secrets_with_a_warning() {
    let text = format!(
        "environment = \"development\"\n{BASE}\n[secrets]\nadmin_token = {{ env = \"T_NOT_SET\" }}\n"
    );
    let (code, out, err) = check(&text, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("warning: secrets.admin_token: environment variable `T_NOT_SET` is not set; generated a random value"), "{err}");
}

#[test]
fn unknown_keys_and_bad_values_name_file_line_and_suggestion() {
    let text = r#"environment = "development"
[server]
lisen = "127.0.0.1:8080"
max_connections = "lots"

[[upstreams]]
name = "app"
targets = ["http://127.0.0.1:8000"]
timeout = "30 secs"

[[routes]]
path = "/"
upstream = "ap"
auth = ["nonee"]
"#;
    let (code, _, err) = check(text, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "portcullis.toml:3: server.lisen: unknown key `lisen` in `server`; did you mean `listen`?"
        ),
        "{err}"
    );
    assert!(err.contains("portcullis.toml:4"), "{err}");
    assert!(
        err.contains("portcullis.toml:9") && err.contains("invalid duration `30 secs`"),
        "{err}"
    );
    assert!(err.contains("3 problems found"), "{err}");

    // Semantic problems come once the file parses.
    let text = edit(text, |doc| {
        let listen = unset(doc, "server", "lisen");
        set(doc, "server", "listen", listen);
        *at(doc, "server.max_connections") = 100.into();
        *at(doc, "upstreams.0.timeout") = "30s".into();
    });
    // The edited file is laid out anew: the lines the problems must name
    // are found in it.
    let line_of = |start: &str| {
        1 + text
            .lines()
            .position(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starts with {start:?} in:\n{text}"))
    };
    let (upstream_line, auth_line) = (line_of("upstream = \"ap\""), line_of("auth = [\"nonee\"]"));
    let (code, _, err) = check(&text, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "portcullis.toml:{upstream_line}: routes[0].upstream (route `/`): no upstream is named `ap`; did you mean `app`?"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "portcullis.toml:{auth_line}: routes[0].auth (route `/`): `nonee`"
        )),
        "{err}"
    );
    assert!(err.contains("did you mean `none`?"), "{err}");
}

#[test]
fn environment_variables_override_the_file() {
    let text =
        format!("environment = \"development\"\n{BASE}\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n");
    let (code, _, err) = check(&text, &[("PORTCULLIS_ENVIRONMENT", "production")]);
    assert_eq!(code, 1, "production from the environment applies its rules");
    assert!(err.contains("the route has no `auth`"), "{err}");
    let (code, _, err) = check(&text, &[("PORTCULLIS_SERVER__LISTN", "127.0.0.1:1")]);
    assert_eq!(code, 1);
    assert!(
        err.contains("environment variable PORTCULLIS_SERVER__LISTN"),
        "{err}"
    );
    assert!(err.contains("did you mean `listen`?"), "{err}");
}

#[test]
fn secret_generate_prints_a_fresh_256_bit_url_safe_secret() {
    let run = || {
        let out = Command::new(binary_path())
            .args(["secret", "generate"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (a, b) = (run(), run());
    assert_ne!(a, b);
    for s in [&a, &b] {
        assert_eq!(s.len(), 43, "{s}");
        assert!(
            s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{s}"
        );
    }
    // And a generated secret passes the production rules.
    let text = format!("{BASE}\n[secrets]\nadmin_token = {{ env = \"T_ADMIN\" }}\n");
    let (code, out, err) = check(&text, &[("T_ADMIN", &a)]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn cors_wildcard_with_credentials_and_local_origins_are_refused_in_production() {
    let text = format!(
        r#"{BASE}
[cors]
origins = ["*"]
credentials = true
"#
    );
    let (code, _, err) = check(&text, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cors.credentials: credentials cannot be combined with the origin \"*\""),
        "{err}"
    );

    let text = format!(
        r#"{BASE}
[cors]
origins = ["http://localhost:3000", "http://127.0.0.1:5173", "http://app.example.com", "https://app.example.com"]
credentials = true
"#
    );
    let (code, _, err) = check(&text, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("local origins are not allowed in production"),
        "{err}"
    );
    assert!(err.contains("production origins must use https"), "{err}");
    assert!(err.contains("3 problems found"), "{err}");
}
