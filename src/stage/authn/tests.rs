//! Unit tests of the authn stage's decisions.

use super::*;
use crate::keys;
use http::header::AUTHORIZATION;

fn stage(failures: Option<FailureLimiter>) -> AuthnStage {
    AuthnStage {
        audit: Audit::disabled(),
        metrics: crate::metrics::Metrics::new().auth.clone(),
        api_keys: ApiKeyAuth::for_test(),
        jwt: None,
        sessions: None,
        mtls: super::mtls_method::MtlsAuth::new(&Default::default()),
        failures,
        redact: true,
        slot: Slot::new(0),
    }
}

fn route_auth() -> RouteAuth {
    let methods = vec![AuthMethod::ApiKey];
    let (challenge, token_challenge) = challenges(&methods, &ApiKeyAuth::for_test());
    RouteAuth {
        methods,
        key_query: None,
        jwt_issuers: jwt::IssuerSet::default(),
        jwt_cookie: None,
        jwt_header: None,
        forward_provider_token: false,
        challenge,
        token_challenge,
    }
}

fn request(headers: &[(&str, &str)], uri: &str) -> Request<GatewayBody> {
    let mut req = Request::new(GatewayBody::Empty);
    *req.uri_mut() = uri.parse().unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    req
}

#[test]
fn one_key_from_any_carrier_and_two_different_ones_are_ambiguous() {
    let s = stage(None);
    let key = keys::generate().key;
    let other = keys::generate().key;
    let same = request(
        &[("x-api-key", &key), ("authorization", &format!("Bearer {key}"))],
        "/",
    );
    assert_eq!(s.api_keys.presented(&same, None).unwrap().unwrap().text, key);
    let two = request(
        &[("x-api-key", &key), ("authorization", &format!("Bearer {other}"))],
        "/",
    );
    assert_eq!(
        s.api_keys.presented(&two, None).err(),
        Some(AuthFailure::Ambiguous)
    );
    let query = request(&[], &format!("/x?token={key}"));
    assert!(
        s.api_keys.presented(&query, None).unwrap().is_none(),
        "the query is read only where a route says"
    );
    assert_eq!(
        s.api_keys.presented(&query, Some("token")).unwrap().unwrap().text,
        key
    );
    let basic = request(&[("authorization", "Basic dTpw")], "/");
    assert!(s.api_keys.presented(&basic, None).unwrap().is_none());
}

#[test]
fn the_key_is_removed_but_other_authorization_lines_stay() {
    let s = stage(None);
    let key = keys::generate().key;
    let mut req = request(
        &[
            ("x-api-key", &key),
            ("authorization", "Basic dTpw"),
            ("authorization", &format!("Bearer {key}")),
        ],
        "/",
    );
    s.api_keys.hide_key(&mut req);
    assert!(req.headers().get("x-api-key").is_none());
    let left: Vec<_> = req.headers().get_all(AUTHORIZATION).iter().collect();
    assert_eq!(left, ["Basic dTpw"]);
}

#[test]
fn lookups_and_failures_share_one_budget_charged_before_the_lookup() {
    let runtime = crate::runtime::Runtime::offline();
    let limit = FailureLimit::Limit(crate::config::rate::parse_rate("3 per minute").unwrap());
    let failures = FailureLimiter::compile(Some(&limit), true, &runtime, 64).unwrap();
    let s = stage(failures);
    let mut cx = RequestCx::for_test();
    let auth = route_auth();
    let budget = s.failures.as_ref().unwrap();
    // A failure that cost no lookup, then two lookups: the budget of three is spent.
    let _ = s.fail(&mut cx, &auth, AuthFailure::Malformed.refusal(), None, false);
    assert!(budget.charge(&cx).is_ok());
    // A failure found by a charged lookup is not charged twice.
    let _ = s.fail(&mut cx, &auth, AuthFailure::Invalid.refusal(), None, true);
    assert!(budget.charge(&cx).is_ok());
    let wait = budget.charge(&cx).expect_err("the fourth is refused");
    assert!((1..=20).contains(&wait), "{wait}");
    // Past the budget, a failure is answered 429, not 401.
    assert!(matches!(
        s.fail(&mut cx, &auth, AuthFailure::Invalid.refusal(), None, false),
        GatewayError::AuthFailuresLimited { .. }
    ));
    // A missing key is not a failed attempt.
    let fresh =
        stage(FailureLimiter::compile(Some(&limit), true, &crate::runtime::Runtime::offline(), 64).unwrap());
    for _ in 0..10 {
        let _ = fresh.fail(&mut cx, &auth, AuthFailure::Missing.refusal(), None, false);
    }
    assert!(fresh.failures.as_ref().unwrap().charge(&cx).is_ok());
}

#[test]
fn the_failure_limit_is_on_in_production_and_off_in_development_by_default() {
    let runtime = crate::runtime::Runtime::offline();
    assert!(
        FailureLimiter::compile(None, true, &runtime, 64)
            .unwrap()
            .is_some()
    );
    assert!(
        FailureLimiter::compile(None, false, &runtime, 64)
            .unwrap()
            .is_none()
    );
    assert!(
        FailureLimiter::compile(Some(&FailureLimit::Off), true, &runtime, 64)
            .unwrap()
            .is_none()
    );
    let per_key = FailureLimit::Limit(crate::config::rate::parse_rate("3 per minute per key").unwrap());
    assert!(FailureLimiter::compile(Some(&per_key), true, &runtime, 64).is_err());
}

#[test]
fn challenges_name_every_method_once_and_mark_refused_tokens() {
    let api = ApiKeyAuth::for_test();
    let (plain, token) = challenges(&[AuthMethod::ApiKey, AuthMethod::Jwt], &api);
    assert_eq!(
        plain,
        "ApiKey realm=\"portcullis\", header=\"x-api-key\", Bearer realm=\"portcullis\""
    );
    assert!(
        token
            .to_str()
            .unwrap()
            .ends_with("Bearer realm=\"portcullis\", error=\"invalid_token\"")
    );
    let (jwt_only, _) = challenges(&[AuthMethod::Jwt], &api);
    assert_eq!(jwt_only, "Bearer realm=\"portcullis\"");
}
