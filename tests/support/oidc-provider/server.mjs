// A real OpenID provider (panva/oidc-provider) for portcullis integration tests.
//
// Environment (all optional):
//   PORT               port on 127.0.0.1 (default 0 = ephemeral)
//   SIGNING_ALG        RS256 (default) or ES256
//   CLIENTS            JSON array of {client_id, client_secret, redirect_uris,
//                      post_logout_redirect_uris?}
//   ACCOUNTS           JSON array of {sub, email, email_verified, name}
//   ACCESS_TOKEN_TTL   seconds (default 3600)
//   ID_TOKEN_TTL       seconds (default 3600)
//   REFRESH_TOKEN_TTL  seconds (default 14 days)
//   ROTATE_REFRESH_TOKEN  1 = always rotate, 0 = never; unset = oidc-provider's
//                      default (rotate only after 70% of the RT lifetime)
//   CLOCK_TOLERANCE    seconds of grace on expiry checks (default 0; oidc-provider's own default is 15)
//   CONFORM_ID_TOKEN_CLAIMS  1 = spec-strict: email/profile claims only at
//                      userinfo; default 0 = they are also in the ID token
//   LOG_REQUESTS       1 = log every request/response line to stderr
//   EXIT_ON_STDIN_EOF  default 1; 0 = keep running when stdin closes (manual use)
//
// stdout carries exactly one line, `listening http://127.0.0.1:<port>`; all
// diagnostics (including oidc-provider's own notices) go to stderr. The process
// exits on SIGTERM/SIGINT and when its stdin reaches EOF (spawn it with a
// piped stdin and keep the write end open for as long as it should live).

import * as crypto from 'node:crypto';
import * as http from 'node:http';

// oidc-provider prints notices with console.info (stdout): keep stdout clean.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

const { Provider } = await import('oidc-provider');

function envJson(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  try {
    return JSON.parse(raw);
  } catch (err) {
    console.error(`invalid JSON in ${name}: ${err.message}`);
    process.exit(2);
  }
}

function envSeconds(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n <= 0) {
    console.error(`${name} must be a positive integer number of seconds, got ${raw}`);
    process.exit(2);
  }
  return n;
}

const PORT = Number(process.env.PORT || 0);
const SIGNING_ALG = (process.env.SIGNING_ALG || 'RS256').toUpperCase();
const ACCESS_TOKEN_TTL = envSeconds('ACCESS_TOKEN_TTL', 3600);
const ID_TOKEN_TTL = envSeconds('ID_TOKEN_TTL', 3600);
const REFRESH_TOKEN_TTL = envSeconds('REFRESH_TOKEN_TTL', 14 * 24 * 3600);
const LOG = process.env.LOG_REQUESTS === '1';
// oidc-provider's default is 15 s of grace on every expiry check; 0 makes an
// expired access token fail at userinfo as soon as expires_in has passed.
const CLOCK_TOLERANCE = Number(process.env.CLOCK_TOLERANCE || 0);

const CLIENTS = envJson('CLIENTS', [{
  client_id: 'portcullis',
  client_secret: 'portcullis-secret',
  redirect_uris: ['http://127.0.0.1:9/callback'],
  post_logout_redirect_uris: ['http://127.0.0.1:9/logged-out'],
}]);
const ACCOUNTS = envJson('ACCOUNTS', [{
  sub: 'alice', email: 'alice@example.test', email_verified: true, name: 'Alice Example',
}]);
if (!Array.isArray(CLIENTS) || !Array.isArray(ACCOUNTS)) {
  console.error('CLIENTS and ACCOUNTS must be JSON arrays');
  process.exit(2);
}
const accounts = new Map(ACCOUNTS.map((a) => [String(a.sub), a]));

// --- signing key, generated fresh at every start ---------------------------
function signingJwk(alg) {
  let pair;
  if (alg === 'RS256') {
    pair = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  } else if (alg === 'ES256') {
    pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  } else {
    console.error(`SIGNING_ALG must be RS256 or ES256, got ${alg}`);
    process.exit(2);
  }
  // kid left out: oidc-provider derives it (SHA-256 JWK thumbprint, base64url).
  return { ...pair.privateKey.export({ format: 'jwk' }), alg, use: 'sig' };
}

// --- listen first, so that the issuer can carry the real port ---------------
const server = http.createServer();
server.keepAliveTimeout = 1000;
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(PORT, '127.0.0.1', resolve);
});
const { port } = server.address();
const ISSUER = `http://127.0.0.1:${port}`;

const provider = new Provider(ISSUER, {
  clients: CLIENTS.map((c) => ({
    client_id: String(c.client_id),
    client_secret: String(c.client_secret),
    redirect_uris: c.redirect_uris,
    post_logout_redirect_uris: c.post_logout_redirect_uris || [],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    // client_secret_basic and client_secret_post are interchangeable in
    // oidc-provider: a client registered with either accepts both.
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: SIGNING_ALG,
  })),
  clientDefaults: {
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: SIGNING_ALG,
  },
  jwks: { keys: [signingJwk(SIGNING_ALG)] },
  cookies: {
    keys: [crypto.randomBytes(32).toString('base64url')],
  },
  claims: {
    acr: null,
    sid: null,
    auth_time: null,
    iss: null,
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile'],
  clockTolerance: CLOCK_TOLERANCE,
  conformIdTokenClaims: process.env.CONFORM_ID_TOKEN_CLAIMS === '1',
  pkce: { required: () => true }, // only S256 exists in oidc-provider v9
  // Refresh tokens for every code exchange of a client that may use the
  // refresh_token grant, with or without offline_access.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ...(process.env.ROTATE_REFRESH_TOKEN === '1' ? { rotateRefreshToken: true } : {}),
  ...(process.env.ROTATE_REFRESH_TOKEN === '0' ? { rotateRefreshToken: false } : {}),
  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    IdToken: ID_TOKEN_TTL,
    RefreshToken: REFRESH_TOKEN_TTL,
    AuthorizationCode: 60,
    Interaction: 600,
    Session: 24 * 3600,
    Grant: 24 * 3600,
  },
  features: {
    devInteractions: { enabled: false },
    // Opaque access tokens for userinfo unless the RP sends `resource`.
    resourceIndicators: { enabled: false },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.body = `<!DOCTYPE html><html><head><title>Logout</title></head><body>${form}`
          + '<button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>'
          + '</body></html>';
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.body = '<!DOCTYPE html><html><head><title>Signed out</title></head><body>signed out</body></html>';
      },
    },
  },
  interactions: {
    url: (ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  findAccount: async (ctx, id) => {
    const account = accounts.get(String(id));
    if (!account) return undefined;
    return {
      accountId: String(account.sub),
      // oidc-provider filters these by the granted scopes/claims.
      claims: async () => ({
        sub: String(account.sub),
        email: account.email,
        email_verified: account.email_verified,
        name: account.name,
      }),
    };
  },
  renderError: async (ctx, out, error) => {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><head><title>oidc error</title></head><body><pre>${escapeHtml(JSON.stringify(out))}</pre></body></html>`;
    if (LOG) console.error('renderError', error);
  },
});

provider.on('server_error', (ctx, err) => console.error('server_error', err));

// --- the interaction endpoint ----------------------------------------------
function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

function send(res, status, type, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function interaction(req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    send(res, 400, 'text/plain; charset=utf-8', `interaction not found: ${err.error_description || err.message}\n`);
    return;
  }
  if (details.uid !== uid) {
    send(res, 400, 'text/plain; charset=utf-8', 'interaction cookie does not match the URL\n');
    return;
  }

  if (action === undefined && req.method === 'GET') {
    const { prompt, params } = details;
    send(res, 200, 'text/html; charset=utf-8', `<!DOCTYPE html>
<html><head><title>Sign-in</title></head><body>
<p>prompt: ${escapeHtml(prompt.name)}; client: ${escapeHtml(params.client_id)}; scope: ${escapeHtml(params.scope || '')}</p>
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<input type="text" name="login" autofocus>
<button type="submit">Sign in</button>
</form>
</body></html>
`);
    return;
  }

  if (action === 'login' && req.method === 'POST') {
    let form;
    try {
      form = await readForm(req);
    } catch (err) {
      send(res, 400, 'text/plain; charset=utf-8', `${err.message}\n`);
      return;
    }
    const sub = form.get('login');
    if (!sub || !accounts.has(sub)) {
      send(res, 400, 'text/plain; charset=utf-8', 'unknown login\n');
      return;
    }

    const { prompt, params } = details;
    const clientId = params.client_id;

    // Reuse the session's grant when it belongs to the same account,
    // otherwise start a new one; then grant everything that was asked for.
    let grant;
    if (details.grantId) {
      grant = await provider.Grant.find(details.grantId);
      if (grant && grant.accountId !== sub) grant = undefined;
    }
    grant ||= new provider.Grant({ accountId: sub, clientId });

    const scopes = new Set(String(params.scope || '').split(' ').filter(Boolean));
    for (const s of prompt.details?.missingOIDCScope || []) scopes.add(s);
    if (scopes.size) grant.addOIDCScope([...scopes].join(' '));

    const claims = new Set(prompt.details?.missingOIDCClaims || []);
    if (params.claims) {
      try {
        const requested = JSON.parse(params.claims);
        for (const where of ['id_token', 'userinfo']) {
          for (const claim of Object.keys(requested?.[where] || {})) claims.add(claim);
        }
      } catch { /* oidc-provider already validated it */ }
    }
    if (claims.size) grant.addOIDCClaims([...claims]);

    for (const [indicator, s] of Object.entries(prompt.details?.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, s.join(' '));
    }

    const grantId = await grant.save();
    await provider.interactionFinished(req, res, {
      login: { accountId: sub },
      consent: { grantId },
    }, { mergeWithLastSubmission: false });
    return;
  }

  send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
}

const providerCallback = provider.callback();
const INTERACTION = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login))?\/?$/;

server.on('request', (req, res) => {
  if (LOG) {
    res.on('finish', () => {
      const loc = res.getHeader('location');
      console.error(`${req.method} ${req.url} -> ${res.statusCode}${loc ? ` ${loc}` : ''}`);
    });
  }
  const path = req.url.split('?')[0];
  const m = INTERACTION.exec(path);
  if (m) {
    interaction(req, res, m[1], m[2]).catch((err) => {
      console.error('interaction error', err);
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error\n');
      else res.end();
    });
    return;
  }
  providerCallback(req, res);
});

// --- lifecycle ----------------------------------------------------------------
let stopping = false;
function shutdown(code) {
  if (stopping) return;
  stopping = true;
  server.close(() => process.exit(code));
  server.closeAllConnections();
  setTimeout(() => process.exit(code), 2000).unref();
}
process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));
if (process.env.EXIT_ON_STDIN_EOF !== '0') {
  process.stdin.on('end', () => shutdown(0));
  process.stdin.on('error', () => shutdown(0));
  process.stdin.resume();
}

process.stdout.write(`listening ${ISSUER}\n`);
