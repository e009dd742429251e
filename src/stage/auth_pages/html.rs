//! The few pages the gateway serves itself: the login form and the logout
//! confirmation. Plain HTML with inline style, no scripts and no outside
//! assets; every value is escaped.

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:22rem;margin:4rem auto;padding:0 1rem;color:#222}}\
         label,input,button,a.provider{{display:block;width:100%;box-sizing:border-box;margin:.4rem 0}}\
         input{{padding:.5rem}}button,a.provider{{padding:.6rem;text-align:center}}\
         p.error{{color:#a00}}</style></head><body>\n<h1>{title}</h1>\n{body}\n</body></html>\n",
        title = escape(title)
    )
}

/// A sign-in choice for an external provider.
pub struct ProviderLink {
    pub label: String,
    pub href: String,
}

/// The login page: provider buttons and, with local users, the form.
pub fn login_page(providers: &[ProviderLink], form: Option<(&str, &str)>, error: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(error) = error {
        body.push_str(&format!(
            "<p class=\"error\" role=\"alert\">{}</p>\n",
            escape(error)
        ));
    }
    for p in providers {
        body.push_str(&format!(
            "<a class=\"provider\" href=\"{}\">Sign in with {}</a>\n",
            escape(&p.href),
            escape(&p.label)
        ));
    }
    if let Some((csrf, return_to)) = form {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/.auth/login\">\n\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\n\
             <input type=\"hidden\" name=\"rd\" value=\"{}\">\n\
             <label for=\"u\">User name</label><input id=\"u\" name=\"username\" autocomplete=\"username\" required>\n\
             <label for=\"p\">Password</label><input id=\"p\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\n\
             <button type=\"submit\">Sign in</button>\n</form>",
            escape(csrf),
            escape(return_to)
        ));
    }
    page("Sign in", &body)
}

/// The logout confirmation: a POST form, so a link or an image on another
/// site cannot log anyone out.
pub fn logout_page(csrf: &str) -> String {
    page(
        "Sign out",
        &format!(
            "<form method=\"post\" action=\"/.auth/logout\">\n\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\n\
             <button type=\"submit\">Sign out</button>\n</form>",
            escape(csrf)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let html = login_page(&[], Some(("t\"><script>", "/x\"onload=\"")), Some("<b>"));
        assert!(!html.contains("<script>"));
        assert!(!html.contains("\"onload"));
        assert!(html.contains("&lt;b&gt;"));
    }
}
