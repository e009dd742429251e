//! A browser stand-in for login tests: a cookie jar (honouring deletions),
//! no automatic redirects, form posts, and reading hidden form fields.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A cookie as the server set it: its value and attributes.
#[derive(Clone, Debug)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    /// The whole `Set-Cookie` line, for checking attributes.
    pub line: String,
}

pub fn parse_set_cookie(line: &str) -> SetCookie {
    let first = line.split(';').next().unwrap_or("");
    let (name, value) = first.split_once('=').unwrap_or((first, ""));
    SetCookie {
        name: name.trim().to_string(),
        value: value.trim().to_string(),
        line: line.to_string(),
    }
}

/// What a browser's page load accepts.
const PAGE: &str = "text/html,application/xhtml+xml,*/*;q=0.8";

#[derive(Clone)]
pub struct Browser {
    pub base: String,
    client: reqwest::Client,
    jar: Arc<Mutex<BTreeMap<String, String>>>,
    /// Every `Set-Cookie` seen, newest last.
    pub set_cookies: Arc<Mutex<Vec<SetCookie>>>,
}

impl Browser {
    pub fn new(addr: SocketAddr) -> Browser {
        Browser {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .tls_certs_only(std::iter::empty())
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap(),
            jar: Default::default(),
            set_cookies: Default::default(),
        }
    }

    /// The same cookies, sent to another instance.
    pub fn at(&self, addr: SocketAddr) -> Browser {
        let mut other = self.clone();
        other.base = format!("http://{addr}");
        other
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar.lock().unwrap().get(name).cloned()
    }

    /// The latest `Set-Cookie` the server sent for `name`.
    pub fn last_set_cookie(&self, name: &str) -> Option<SetCookie> {
        self.set_cookies
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|c| c.name == name)
            .cloned()
    }

    pub fn set_cookie(&self, name: &str, value: &str) {
        self.jar.lock().unwrap().insert(name.into(), value.into());
    }

    fn cookie_header(&self) -> String {
        self.jar
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn remember(&self, response: &reqwest::Response) {
        for line in response.headers().get_all("set-cookie") {
            let cookie = parse_set_cookie(line.to_str().unwrap());
            let deleted = cookie.value.is_empty() || cookie.line.contains("Max-Age=0");
            let mut jar = self.jar.lock().unwrap();
            if deleted {
                jar.remove(&cookie.name);
            } else {
                jar.insert(cookie.name.clone(), cookie.value.clone());
            }
            self.set_cookies.lock().unwrap().push(cookie);
        }
    }

    fn request(&self, method: reqwest::Method, path: &str, accept: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = self.client.request(method, url).header("accept", accept);
        let cookies = self.cookie_header();
        if !cookies.is_empty() {
            req = req.header("cookie", cookies);
        }
        req
    }

    /// A page load.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        let response = self
            .request(reqwest::Method::GET, path, PAGE)
            .send()
            .await
            .unwrap();
        self.remember(&response);
        response
    }

    /// A `fetch` from a script: asks for JSON.
    pub async fn get_json(&self, path: &str) -> reqwest::Response {
        let response = self
            .request(reqwest::Method::GET, path, "application/json")
            .send()
            .await
            .unwrap();
        self.remember(&response);
        response
    }

    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let response = self
            .request(reqwest::Method::POST, path, PAGE)
            .form(fields)
            .send()
            .await
            .unwrap();
        self.remember(&response);
        response
    }
}

/// The value of a hidden form field in a page.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].replace("&amp;", "&").replace("&quot;", "\""))
}

/// Logs in with the local form: loads `/.auth/login?rd=…`, posts the
/// credentials with the form's token, and returns the answer to the post.
pub async fn log_in(browser: &Browser, rd: &str, user: &str, password: &str) -> reqwest::Response {
    let encoded: String = url_encode(rd);
    let page = browser.get(&format!("/.auth/login?rd={encoded}")).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let csrf = hidden_field(&html, "csrf").expect("the login form has a token");
    let rd = hidden_field(&html, "rd").expect("the login form keeps rd");
    browser
        .post_form(
            "/.auth/login",
            &[
                ("csrf", &csrf),
                ("rd", &rd),
                ("username", user),
                ("password", password),
            ],
        )
        .await
}

pub fn url_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}
