// A relying party that drives server.mjs over plain HTTP, with its own cookie
// handling and no redirect following, the way a Rust test with a cookie-less
// HTTP client has to. Node built-ins + fetch only.
//
//   node rp-check.mjs [ISSUER]
//
// With ISSUER (e.g. http://127.0.0.1:4000) it talks to a running server.mjs.
// Without it, it spawns server.mjs itself (passing its own environment, so
// SIGNING_ALG=ES256 etc. apply) and stops it at the end.
// Env: CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, POST_LOGOUT_REDIRECT_URI, LOGIN
// (defaults match server.mjs's built-in client and account), SCOPE (default
// "openid email profile"), PROMPT (unset by default).
// Exits 0 when every step passed, 1 otherwise.

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import assert from 'node:assert/strict';

const CLIENT_ID = process.env.CLIENT_ID || 'portcullis';
const CLIENT_SECRET = process.env.CLIENT_SECRET || 'portcullis-secret';
const REDIRECT_URI = process.env.REDIRECT_URI || 'http://127.0.0.1:9/callback';
const POST_LOGOUT_REDIRECT_URI = process.env.POST_LOGOUT_REDIRECT_URI || 'http://127.0.0.1:9/logged-out';
const LOGIN = process.env.LOGIN || 'alice';
const SCOPE = process.env.SCOPE || 'openid email profile';
const PROMPT = process.env.PROMPT; // e.g. "consent" (needed with offline_access)

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const random = (n = 32) => b64url(crypto.randomBytes(n));
let stepNo = 0;
function step(msg) { stepNo += 1; console.log(`[${String(stepNo).padStart(2)}] ${msg}`); }
function detail(msg) { console.log(`       ${msg}`); }

// --- a minimal cookie jar (host-only cookies, Path matching, deletions) -----
class CookieJar {
  #cookies = new Map(); // key `${path}\0${name}` -> {name, value, path}

  store(res, requestUrl) {
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let path;
      let expired = value === '';
      for (const a of attrs) {
        const [k, v = ''] = a.split('=');
        const key = k.toLowerCase();
        if (key === 'path') path = v;
        if (key === 'expires' && Date.parse(v) <= Date.now()) expired = true;
        if (key === 'max-age' && Number(v) <= 0) expired = true;
      }
      if (!path || !path.startsWith('/')) {
        const p = new URL(requestUrl).pathname;
        path = p.slice(0, p.lastIndexOf('/')) || '/';
      }
      const id = `${path}\0${name}`;
      if (expired) this.#cookies.delete(id);
      else this.#cookies.set(id, { name, value, path });
    }
  }

  header(url) {
    const p = new URL(url).pathname;
    const matches = [...this.#cookies.values()].filter((c) => p === c.path
      || (p.startsWith(c.path) && (c.path.endsWith('/') || p[c.path.length] === '/')));
    return matches.map((c) => `${c.name}=${c.value}`).join('; ');
  }

  names(url) {
    return this.header(url).split('; ').filter(Boolean).map((c) => c.split('=')[0]);
  }
}

async function request(jar, method, url, { form, headers = {} } = {}) {
  const h = { ...headers };
  const cookie = jar?.header(url);
  if (cookie) h.cookie = cookie;
  let body;
  if (form) {
    body = new URLSearchParams(form).toString();
    h['content-type'] = 'application/x-www-form-urlencoded';
  }
  const res = await fetch(url, { method, headers: h, body, redirect: 'manual' });
  jar?.store(res, url);
  const location = res.headers.get('location');
  detail(`${method} ${url.length > 110 ? `${url.slice(0, 110)}…` : url}`);
  detail(`  -> ${res.status}${location ? ` Location: ${location.length > 100 ? `${location.slice(0, 100)}…` : location}` : ''}`
    + `${cookie ? ` (sent cookies: ${cookie.split('; ').map((c) => c.split('=')[0]).join(', ')})` : ''}`);
  for (const sc of res.headers.getSetCookie()) {
    const [pair, ...attrs] = sc.split(';').map((x) => x.trim());
    const [name, value] = [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)];
    detail(`  Set-Cookie: ${name}=${value ? '…' : ''}; ${attrs.join('; ')}`);
  }
  return res;
}

const basic = (id, secret) => `Basic ${Buffer.from(
  `${encodeURIComponent(id)}:${encodeURIComponent(secret)}`,
).toString('base64')}`;

// --- JWT verification with node:crypto -------------------------------------
function verifyJwt(jwt, jwks) {
  const [h, p, s] = jwt.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  const payload = JSON.parse(Buffer.from(p, 'base64url'));
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  assert.ok(jwk, `no JWKS key with kid ${header.kid}`);
  assert.ok(!jwk.d, 'JWKS must not expose private key material');
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const data = Buffer.from(`${h}.${p}`);
  const sig = Buffer.from(s, 'base64url');
  let ok;
  switch (header.alg) {
    case 'RS256': ok = crypto.verify('sha256', data, key, sig); break;
    case 'ES256': ok = crypto.verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig); break;
    default: throw new Error(`unexpected alg ${header.alg}`);
  }
  assert.ok(ok, 'ID token signature does not verify');
  return { header, payload };
}

function checkIdToken(idToken, jwks, { issuer, nonce, accessToken }) {
  const { header, payload } = verifyJwt(idToken, jwks);
  const now = Math.floor(Date.now() / 1000);
  assert.equal(payload.iss, issuer, 'iss');
  assert.ok(payload.aud === CLIENT_ID || (Array.isArray(payload.aud) && payload.aud.includes(CLIENT_ID)), 'aud');
  if (Array.isArray(payload.aud) && payload.aud.length > 1) assert.equal(payload.azp, CLIENT_ID, 'azp');
  if (nonce !== undefined) assert.equal(payload.nonce, nonce, 'nonce');
  assert.equal(payload.sub, LOGIN, 'sub');
  assert.ok(payload.exp > now && payload.iat <= now + 5, 'exp/iat');
  if (payload.at_hash && accessToken) {
    const d = crypto.createHash('sha256').update(accessToken).digest();
    assert.equal(payload.at_hash, b64url(d.subarray(0, d.length / 2)), 'at_hash');
  }
  return { header, payload };
}

// --- optional: spawn server.mjs --------------------------------------------
async function spawnServer() {
  const serverPath = fileURLToPath(new URL('./server.mjs', import.meta.url));
  const child = spawn(process.execPath, [serverPath], {
    env: { ...process.env, PORT: process.env.PORT || '0' },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const rl = createInterface({ input: child.stdout });
  const line = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('server.mjs did not start within 15s')), 15000);
    rl.once('line', (l) => { clearTimeout(t); resolve(l); });
    child.once('exit', (code) => reject(new Error(`server.mjs exited early (${code})`)));
  });
  const m = /^listening (http:\/\/127\.0\.0\.1:\d+)$/.exec(line);
  if (!m) throw new Error(`unexpected first line from server.mjs: ${line}`);
  return { child, issuer: m[1] };
}

async function main() {
  let child;
  let issuer = process.argv[2];
  if (!issuer) {
    ({ child, issuer } = await spawnServer());
    step(`spawned server.mjs pid ${child.pid}: listening ${issuer}`);
  }
  issuer = issuer.replace(/\/$/, '');
  try {
    await run(issuer);
  } finally {
    if (child) {
      const exited = new Promise((r) => child.once('exit', (code, sig) => r([code, sig])));
      child.stdin.end(); // EOF on stdin must make the server exit on its own
      const [code, sig] = await exited;
      step(`server.mjs exited after stdin EOF (code ${code}, signal ${sig})`);
      assert.equal(code, 0);
    }
  }
}

async function startAuthorization(jar, discovery, extra = {}) {
  const state = random(16);
  const nonce = random(16);
  const verifier = random(32);
  const challenge = b64url(crypto.createHash('sha256').update(verifier).digest());
  const url = new URL(discovery.authorization_endpoint);
  url.search = new URLSearchParams({
    client_id: CLIENT_ID,
    response_type: 'code',
    scope: SCOPE,
    ...(PROMPT ? { prompt: PROMPT } : {}),
    redirect_uri: REDIRECT_URI,
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    ...extra,
  }).toString();
  const res = await request(jar, 'GET', url.href);
  return { res, state, nonce, verifier };
}

async function run(issuer) {
  step('discovery');
  const discRes = await request(null, 'GET', `${issuer}/.well-known/openid-configuration`);
  assert.equal(discRes.status, 200);
  const discovery = await discRes.json();
  assert.equal(discovery.issuer, issuer, 'discovery issuer equals the URL it was fetched from');
  for (const k of ['authorization_endpoint', 'token_endpoint', 'jwks_uri', 'userinfo_endpoint', 'end_session_endpoint']) {
    detail(`${k}: ${discovery[k]}`);
    assert.ok(discovery[k], k);
  }
  detail(`code_challenge_methods_supported: ${discovery.code_challenge_methods_supported}`);
  detail(`token_endpoint_auth_methods_supported: ${discovery.token_endpoint_auth_methods_supported}`);
  detail(`id_token_signing_alg_values_supported: ${discovery.id_token_signing_alg_values_supported}`);
  detail(`authorization_response_iss_parameter_supported: ${discovery.authorization_response_iss_parameter_supported}`);
  assert.ok(discovery.code_challenge_methods_supported.includes('S256'));

  step('JWKS');
  const jwksRes = await request(null, 'GET', discovery.jwks_uri);
  assert.equal(jwksRes.status, 200);
  const jwks = await jwksRes.json();
  for (const k of jwks.keys) detail(`key kty=${k.kty} alg=${k.alg} use=${k.use} kid=${k.kid}`);

  const jar = new CookieJar();

  step(`authorization request (PKCE S256, state, nonce, scope "${SCOPE}"${PROMPT ? `, prompt=${PROMPT}` : ''})`);
  const { res: authRes, state, nonce, verifier } = await startAuthorization(jar, discovery);
  assert.equal(authRes.status, 303);
  const interactionUrl = new URL(authRes.headers.get('location'), issuer).href;
  assert.match(new URL(interactionUrl).pathname, /^\/interaction\/[A-Za-z0-9_-]+$/);

  step('interaction page');
  const pageRes = await request(jar, 'GET', interactionUrl);
  assert.equal(pageRes.status, 200);
  const html = await pageRes.text();
  const action = /<form[^>]*action="([^"]+)"/.exec(html)?.[1];
  assert.ok(action, 'login form action');
  const loginUrl = new URL(action, issuer).href;
  detail(`form action: ${action}`);

  step('login with an unknown account is rejected');
  const badRes = await request(jar, 'POST', loginUrl, { form: { login: 'nobody-here' } });
  assert.equal(badRes.status, 400);

  step(`login as ${LOGIN} (grants all requested scopes, no consent step)`);
  let res = await request(jar, 'POST', loginUrl, { form: { login: LOGIN } });
  assert.equal(res.status, 303);

  step('follow redirects until the redirect_uri (not fetched)');
  let location = new URL(res.headers.get('location'), issuer).href;
  for (let hops = 0; !location.startsWith(REDIRECT_URI); hops += 1) {
    assert.ok(hops < 10, 'too many redirects');
    res = await request(jar, 'GET', location);
    assert.ok([302, 303].includes(res.status), `expected a redirect, got ${res.status}: ${await res.text()}`);
    location = new URL(res.headers.get('location'), location).href;
  }
  const cb = new URL(location);
  detail(`callback parameters: ${[...cb.searchParams.keys()].join(', ')}`);
  assert.equal(cb.searchParams.get('error'), null, `authorization error: ${cb.searchParams.get('error_description')}`);
  assert.equal(cb.searchParams.get('state'), state, 'state round-trips');
  if (cb.searchParams.has('iss')) assert.equal(cb.searchParams.get('iss'), issuer, 'iss (RFC 9207)');
  const code = cb.searchParams.get('code');
  assert.ok(code, 'code');

  step('token request without code_verifier is rejected');
  res = await request(null, 'POST', discovery.token_endpoint, {
    form: { grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI },
    headers: { authorization: basic(CLIENT_ID, CLIENT_SECRET) },
  });
  const noVerifier = await res.json();
  detail(`${res.status} ${JSON.stringify(noVerifier)}`);
  assert.equal(res.status, 400);
  assert.equal(noVerifier.error, 'invalid_grant');

  // The rejected attempt above does not consume the code in oidc-provider
  // (PKCE is checked before the code is marked used), so the real exchange
  // still works.
  step('code exchange (client_secret_basic + code_verifier)');
  res = await request(null, 'POST', discovery.token_endpoint, {
    form: {
      grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: verifier,
    },
    headers: { authorization: basic(CLIENT_ID, CLIENT_SECRET) },
  });
  const tokens = await res.json();
  assert.equal(res.status, 200, JSON.stringify(tokens));
  detail(`token response keys: ${Object.keys(tokens).join(', ')}; token_type=${tokens.token_type}; expires_in=${tokens.expires_in}; scope="${tokens.scope}"`);
  assert.ok(tokens.access_token && tokens.id_token && tokens.refresh_token, 'access, id and refresh tokens');
  assert.equal(tokens.token_type, 'Bearer');

  step('ID token: signature against JWKS, iss, aud, nonce, sub, exp');
  const { header, payload } = checkIdToken(tokens.id_token, jwks, {
    issuer, nonce, accessToken: tokens.access_token,
  });
  detail(`header: ${JSON.stringify(header)}`);
  detail(`claims: ${JSON.stringify(payload)}`);

  step('userinfo with the access token');
  res = await request(null, 'GET', discovery.userinfo_endpoint, {
    headers: { authorization: `Bearer ${tokens.access_token}` },
  });
  const userinfo = await res.json();
  assert.equal(res.status, 200, JSON.stringify(userinfo));
  detail(`userinfo: ${JSON.stringify(userinfo)}`);
  assert.equal(userinfo.sub, LOGIN);
  if (SCOPE.split(' ').includes('email')) assert.ok('email' in userinfo, 'email claim');
  if (SCOPE.split(' ').includes('profile')) assert.ok('name' in userinfo, 'profile (name) claim');

  if (tokens.expires_in <= 5) {
    step(`short ACCESS_TOKEN_TTL: wait ${tokens.expires_in + 1}s, the expired access token is refused`);
    await new Promise((r) => { setTimeout(r, (tokens.expires_in + 1) * 1000); });
    res = await request(null, 'GET', discovery.userinfo_endpoint, {
      headers: { authorization: `Bearer ${tokens.access_token}` },
    });
    assert.equal(res.status, 401, 'expired access token at userinfo');
    await res.body?.cancel();
  }

  step('refresh (client_secret_post)');
  res = await request(null, 'POST', discovery.token_endpoint, {
    form: {
      grant_type: 'refresh_token', refresh_token: tokens.refresh_token,
      client_id: CLIENT_ID, client_secret: CLIENT_SECRET,
    },
  });
  const refreshed = await res.json();
  assert.equal(res.status, 200, JSON.stringify(refreshed));
  detail(`refresh response keys: ${Object.keys(refreshed).join(', ')}; expires_in=${refreshed.expires_in}`);
  assert.ok(refreshed.access_token && refreshed.access_token !== tokens.access_token, 'a new access token');
  detail(`refresh token rotated: ${refreshed.refresh_token !== tokens.refresh_token}`);
  if (refreshed.id_token) {
    const { payload: p2 } = checkIdToken(refreshed.id_token, jwks, { issuer, accessToken: refreshed.access_token });
    detail(`refreshed ID token claims: ${JSON.stringify(p2)}`);
  }

  res = await request(null, 'GET', discovery.userinfo_endpoint, {
    headers: { authorization: `Bearer ${refreshed.access_token}` },
  });
  assert.equal(res.status, 200, 'userinfo with the refreshed access token');
  await res.body?.cancel();

  step('second authorization with the same _session cookie: no interaction, straight to redirect_uri');
  const again = await startAuthorization(jar, discovery);
  assert.equal(again.res.status, 303);
  const againLoc = new URL(again.res.headers.get('location'), issuer);
  assert.ok(againLoc.href.startsWith(REDIRECT_URI), `expected the redirect_uri, got ${againLoc.href}`);
  assert.equal(againLoc.searchParams.get('state'), again.state);
  assert.ok(againLoc.searchParams.get('code'));

  step('RP-initiated logout (end_session + confirm), with the _session cookie');
  const endUrl = new URL(discovery.end_session_endpoint);
  endUrl.search = new URLSearchParams({
    id_token_hint: tokens.id_token, post_logout_redirect_uri: POST_LOGOUT_REDIRECT_URI, state: 'bye',
  }).toString();
  res = await request(jar, 'GET', endUrl.href);
  assert.equal(res.status, 200);
  const logoutHtml = await res.text();
  const xsrf = /name="xsrf" value="([^"]+)"/.exec(logoutHtml)?.[1];
  const confirmAction = /<form[^>]*action="([^"]+)"/.exec(logoutHtml)?.[1];
  assert.ok(xsrf && confirmAction, 'logout form with xsrf');
  res = await request(jar, 'POST', new URL(confirmAction, issuer).href, { form: { xsrf, logout: 'yes' } });
  assert.equal(res.status, 303);
  const after = new URL(res.headers.get('location'));
  assert.equal(`${after.origin}${after.pathname}`, POST_LOGOUT_REDIRECT_URI);
  assert.equal(after.searchParams.get('state'), 'bye');

  // offline_access survives only when asked with prompt=consent (see README).
  const offline = String(tokens.scope).split(' ').includes('offline_access');
  step(offline
    ? 'after logout the refresh token still works (offline_access was granted)'
    : 'after logout the refresh token is dead (grant revoked)');
  res = await request(null, 'POST', discovery.token_endpoint, {
    form: { grant_type: 'refresh_token', refresh_token: refreshed.refresh_token || tokens.refresh_token },
    headers: { authorization: basic(CLIENT_ID, CLIENT_SECRET) },
  });
  const afterLogout = await res.json();
  detail(`${res.status} ${JSON.stringify(afterLogout).slice(0, 120)}`);
  if (offline) {
    assert.equal(res.status, 200);
  } else {
    assert.equal(res.status, 400);
    assert.equal(afterLogout.error, 'invalid_grant');
  }

  step('authorization request without code_challenge is rejected (PKCE required)');
  const jar2 = new CookieJar();
  const { res: noPkce } = await startAuthorization(jar2, discovery, {
    code_challenge: '', code_challenge_method: '',
  });
  assert.equal(noPkce.status, 303);
  const err = new URL(noPkce.headers.get('location'));
  detail(`error=${err.searchParams.get('error')} error_description=${err.searchParams.get('error_description')}`);
  assert.ok(`${err.origin}${err.pathname}` === REDIRECT_URI && err.searchParams.get('error') === 'invalid_request');

  step('second login (fresh cookie jar) to show code-reuse handling');
  const jar3 = new CookieJar();
  const second = await startAuthorization(jar3, discovery);
  res = second.res;
  location = new URL(res.headers.get('location'), issuer).href;
  const html3 = await (await request(jar3, 'GET', location)).text();
  const action3 = new URL(/<form[^>]*action="([^"]+)"/.exec(html3)[1], issuer).href;
  res = await request(jar3, 'POST', action3, { form: { login: LOGIN } });
  location = new URL(res.headers.get('location'), issuer).href;
  while (!location.startsWith(REDIRECT_URI)) {
    res = await request(jar3, 'GET', location);
    location = new URL(res.headers.get('location'), location).href;
  }
  const code3 = new URL(location).searchParams.get('code');
  const exchange = () => request(null, 'POST', discovery.token_endpoint, {
    form: {
      grant_type: 'authorization_code', code: code3, redirect_uri: REDIRECT_URI,
      code_verifier: second.verifier, client_id: CLIENT_ID, client_secret: CLIENT_SECRET,
    },
  });
  res = await exchange();
  const tokens3 = await res.json();
  assert.equal(res.status, 200, JSON.stringify(tokens3));

  step('code reuse is rejected AND revokes the tokens already issued from it');
  res = await exchange();
  const reuse = await res.json();
  detail(`${res.status} ${JSON.stringify(reuse)}`);
  assert.equal(res.status, 400);
  assert.equal(reuse.error, 'invalid_grant');
  res = await request(null, 'GET', discovery.userinfo_endpoint, {
    headers: { authorization: `Bearer ${tokens3.access_token}` },
  });
  detail(`userinfo with the first access token: ${res.status} www-authenticate: ${res.headers.get('www-authenticate')}`);
  assert.equal(res.status, 401);
  await res.body?.cancel();

  console.log(`OK: all steps passed (${header.alg})`);
}

main().catch((err) => {
  console.error(`FAILED: ${err.stack || err}`);
  process.exitCode = 1;
});
