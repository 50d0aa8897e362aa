// An upstream OAuth 2.0 authorization server for the e2e tests, standing in
// for a third-party service such as GitHub: oidc-provider (npm, 9.x) on
// 127.0.0.1, issuer http://127.0.0.1:PORT (no trailing slash). It issues each
// user's own tokens at "the upstream service" to one confidential client
// (portcullis), for the token vault's tests.
//
// Usage: node upstream_as.mjs --port P --client-id portcullis-gh --client-secret S
//            --redirect-uri URI [--redirect-uri URI2 ...]
//            [--access-ttl 30] [--refresh-ttl 1209600] [--rotate-refresh]
//            [--auth-method client_secret_basic|client_secret_post]
//            [--scopes "read:user user:email repo"]
//            [--resource URI ...] [--users JSON] [--registration]
//
// What it does (everything else is oidc-provider's default):
//  * metadata: RFC 8414 at /.well-known/oauth-authorization-server and the
//    same document at /.well-known/openid-configuration (oidc-provider serves
//    both); authorization_endpoint /auth, token_endpoint /token,
//    revocation_endpoint /token/revocation, jwks_uri /jwks;
//  * one confidential client (--client-id, default portcullis-gh), response
//    type code, grant types authorization_code and refresh_token, registered
//    token endpoint authentication --auth-method (default
//    client_secret_basic; oidc-provider 9 accepts client_secret_basic AND
//    client_secret_post for a client registered with either);
//  * PKCE S256 required; `state` echoed; `iss` in the authorization response
//    (RFC 9207);
//  * access tokens are RS256 JWTs (RFC 9068, header typ "at+jwt", kid
//    "upstream-rs256"; a fresh 2048-bit RSA key per run, JWKS at /jwks) with
//    claims iss (the issuer), sub (the user's login name), aud (the resource,
//    below), client_id, scope, jti, iat, exp = iat + --access-ttl (default 30
//    seconds);
//  * resource indicators (RFC 8707): the default resource is
//    https://upstream.example/api, used when a request names none; the
//    resources accepted are that one and each --resource URI (e.g. the
//    upstream MCP server's own URL, for discovery mode); any other gives
//    invalid_target. A token's aud is the one resource it was issued for.
//    The resource's scopes are --scopes (default "read:user user:email repo",
//    GitHub's names); a requested scope outside them is left out of the token;
//  * a refresh token with EVERY code exchange (no offline_access needed, as
//    GitHub does with expiring user tokens), not tied to the login session,
//    living --refresh-ttl seconds (default 14 days). With --rotate-refresh
//    every refresh answers a new refresh token and consumes the old one;
//    presenting a consumed refresh token again answers invalid_grant AND
//    revokes the whole grant (oidc-provider's reuse detection: the newest
//    refresh token of that grant is dead too). Without --rotate-refresh the
//    refresh token stays the same. An unknown, expired or revoked refresh
//    token answers 400 invalid_grant;
//  * RFC 7009 revocation at /token/revocation (client authentication as at
//    /token): revoking a refresh token revokes its grant (every token of it).
//    JWT access tokens cannot be revoked there (400 unsupported_token_type):
//    they stay valid until they expire, as self-contained tokens do;
//  * its development login and consent pages (GET /interaction/<uid>: a form
//    with input[name=login] and input[name=password], then a form with
//    input[name=prompt][value=consent] and a "Continue" button), which
//    helpers/browser.mjs drives; users alice and bob, or --users JSON (e.g.
//    '{"carol": {"name": "Carol"}}'), any password; an unknown login name
//    is refused (403, page titled "Unknown user").
//
//  * with --registration: open RFC 7591 dynamic registration at /reg
//    (advertised as registration_endpoint; no initial access token), for
//    portcullis's discovery mode; public clients (token_endpoint_auth_method
//    "none") get no secret.
//
// Test endpoints (plain http, no authentication, for the tests only):
//  * POST /test/revoke-all?sub=NAME  deletes every grant of that user (and
//    with them every refresh token, authorization code and stored token), as
//    a user revoking the app at the service would: the next refresh of any
//    of them answers invalid_grant. Answers {"sub": NAME, "grants": N}.
//    (The user's login session stays, so a new authorization asks for
//    consent again but not for the password.)
//  * POST /test/token-faults?status=503&count=N[&delay_ms=D]  the next N
//    requests to /token wait D ms (default 0) and then answer `status`
//    (default 503) with {"error": "temporarily_unavailable"} WITHOUT being
//    processed (nothing is consumed or rotated). count=0 clears.
//  * GET /test/registrations  every POST /reg so far, in order:
//    [{"t": epoch_ms, "status", "client_id" (null when refused),
//      "token_endpoint_auth_method", "redirect_uris", "error"}]
//  * GET /test/log  every request to /token so far, in order, as JSON:
//    [{"t_start": epoch_ms (arrival), "t": epoch_ms (answered), "grant_type", "status", "error", "error_description",
//      "error_detail", "sub", "client_id", "rotated": bool, "fault": bool,
//      "refresh_token_in", "refresh_token_out", "access_token_jti"}]
//    where refresh_token_in/out are the first 16 hex digits of the SHA-256
//    of the refresh token presented / answered (never the tokens
//    themselves). error_detail is oidc-provider's reason for an error, which
//    the answer itself leaves out (its error_description is a generic "grant
//    request is invalid"): "refresh token not found", "refresh token already
//    used", "grant not found", "PKCE verification failed", ... Also one line
//    per /token request on stdout ("token ...").
//
// Its cookies are named _upstream_session, _upstream_interaction and
// _upstream_interaction_resume, so that they do not collide on 127.0.0.1 with
// the company IdP's (oidc_idp.mjs: oidc-provider's default names) when one
// browser goes through both.
// Plain http on loopback. Prints "listening <issuer>" once ready; exits 0 on
// SIGTERM/SIGINT.

import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import * as querystring from "node:querystring";

const OP = new URL("../node/node_modules/oidc-provider/lib/", import.meta.url);
const { default: Provider, errors } = await import(new URL("index.js", OP));
const { default: MemoryAdapter } = await import(new URL("adapters/memory_adapter.js", OP));

const DEFAULT_RESOURCE = "https://upstream.example/api";

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const opts = (name) => args.flatMap((a, i) => (a === name ? [args[i + 1]] : []));

const port = Number(opt("--port"));
const clientId = opt("--client-id", "portcullis-gh");
const clientSecret = opt("--client-secret");
const redirectUris = opts("--redirect-uri");
const accessTtl = Number(opt("--access-ttl", "30"));
const refreshTtl = Number(opt("--refresh-ttl", String(14 * 24 * 3600)));
const rotate = args.includes("--rotate-refresh");
const authMethod = opt("--auth-method", "client_secret_basic");
const resourceScopes = opt("--scopes", "read:user user:email repo");
const resources = [DEFAULT_RESOURCE, ...opts("--resource")];
const registration = args.includes("--registration");
if (!port || !clientSecret || redirectUris.length === 0 || !(accessTtl > 0) || !(refreshTtl > 0)) {
  console.error(
    "usage: upstream_as.mjs --port P --client-id ID --client-secret S --redirect-uri URI [...] " +
      "[--access-ttl 30] [--refresh-ttl S] [--rotate-refresh] [--auth-method M] [--scopes S] [--resource URI ...] [--users JSON]",
  );
  process.exit(2);
}

const users = JSON.parse(
  opt(
    "--users",
    JSON.stringify({
      alice: { name: "Alice Example", email: "alice@example.com" },
      bob: { name: "Bob Example", email: "bob@example.com" },
    }),
  ),
);

const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: "jwk" }), use: "sig", alg: "RS256", kid: "upstream-rs256" };

// oidc-provider's own in-memory adapter, plus an index of which grants belong
// to which user (for /test/revoke-all). One store for every model, so
// revokeByGrantId on any of them removes every token of the grant.
const grantsOf = new Map(); // sub -> Set(grantId)
class Adapter extends MemoryAdapter {
  async upsert(id, payload, expiresIn) {
    const grantId = this.model === "Grant" ? id : payload.grantId;
    if (payload.accountId && grantId) {
      if (!grantsOf.has(payload.accountId)) grantsOf.set(payload.accountId, new Set());
      grantsOf.get(payload.accountId).add(grantId);
    }
    return super.upsert(id, payload, expiresIn);
  }
}

const provider = new Provider(issuer, {
  adapter: Adapter,
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      response_types: ["code"],
      grant_types: ["authorization_code", "refresh_token"],
      token_endpoint_auth_method: authMethod,
    },
  ],
  jwks: { keys: [signingKey] },
  // Cookies are per host, not per port: in one chromium run the company IdP
  // (oidc_idp.mjs, also oidc-provider) and this AS both live on 127.0.0.1,
  // so this one's cookies get names of their own (the defaults are _session,
  // _interaction, _interaction_resume) and neither overwrites the other's.
  cookies: {
    keys: [randomBytes(32).toString("base64url")],
    names: { session: "_upstream_session", interaction: "_upstream_interaction", resume: "_upstream_interaction_resume" },
  },
  pkce: { required: () => true },
  scopes: ["openid", "offline_access"],
  claims: { openid: ["sub"] },
  // A refresh token with every code exchange, whatever the scope, and not
  // bound to the login session.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed("refresh_token"),
  expiresWithSession: async () => false,
  rotateRefreshToken: () => rotate,
  ttl: {
    AccessToken: accessTtl,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: refreshTtl,
    Interaction: 600,
    Session: 86400,
    Grant: refreshTtl,
  },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    registration: { enabled: registration },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => {
        if (oneOf) return oneOf.includes(DEFAULT_RESOURCE) ? DEFAULT_RESOURCE : oneOf[0];
        return DEFAULT_RESOURCE;
      },
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (!resources.includes(resourceIndicator)) throw new errors.InvalidTarget();
        return {
          scope: resourceScopes,
          audience: resourceIndicator,
          accessTokenTTL: accessTtl,
          accessTokenFormat: "jwt",
          jwt: { sign: { alg: "RS256" } },
        };
      },
    },
  },
  async findAccount(_ctx, sub) {
    const u = Object.hasOwn(users, sub) ? users[sub] : undefined;
    if (!u) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub, name: u.name ?? sub, email: u.email ?? `${sub}@example.com` };
      },
    };
  },
});

const sha16 = (v) => (v ? createHash("sha256").update(String(v)).digest("hex").slice(0, 16) : null);
const tokenLog = [];
const registrations = [];
const faults = { count: 0, status: 503, delayMs: 0 };

function json(ctx, status, body) {
  ctx.status = status;
  ctx.type = "application/json";
  ctx.set("Cache-Control", "no-store");
  ctx.body = JSON.stringify(body);
}

async function readForm(ctx) {
  const chunks = [];
  let size = 0;
  for await (const c of ctx.req) {
    size += c.length;
    if (size > 64 * 1024) ctx.throw(413);
    chunks.push(c);
  }
  return querystring.parse(Buffer.concat(chunks).toString("utf8"));
}

provider.use(async (ctx, next) => {
  // ---- test endpoints
  if (ctx.path === "/test/revoke-all" && ctx.method === "POST") {
    const sub = String(ctx.query.sub ?? "");
    const ids = [...(grantsOf.get(sub) ?? [])];
    grantsOf.delete(sub);
    let grants = 0;
    for (const grantId of ids) {
      if (await provider.Grant.adapter.find(grantId)) grants += 1;
      await provider.RefreshToken.adapter.revokeByGrantId(grantId); // every token of the grant (shared store)
      await provider.Grant.adapter.destroy(grantId);
    }
    console.log(`test: revoke-all sub=${JSON.stringify(sub)} grants=${grants}`);
    return json(ctx, 200, { sub, grants });
  }
  if (ctx.path === "/test/token-faults" && ctx.method === "POST") {
    faults.count = Number(ctx.query.count ?? 1);
    faults.status = Number(ctx.query.status ?? 503);
    faults.delayMs = Number(ctx.query.delay_ms ?? 0);
    console.log(`test: token-faults count=${faults.count} status=${faults.status} delay_ms=${faults.delayMs}`);
    return json(ctx, 200, { count: faults.count, status: faults.status, delay_ms: faults.delayMs });
  }
  if (ctx.path === "/test/log" && ctx.method === "GET") {
    return json(ctx, 200, tokenLog);
  }
  if (ctx.path === "/test/registrations" && ctx.method === "GET") {
    return json(ctx, 200, registrations);
  }

  // ---- dynamic registration: a log of every attempt
  if (ctx.path === "/reg" && ctx.method === "POST") {
    await next();
    let body = {};
    try {
      body = typeof ctx.body === "string" ? JSON.parse(ctx.body) : (ctx.body ?? {});
    } catch {}
    const entry = {
      t: Date.now(),
      status: ctx.status,
      client_id: body.client_id ?? null,
      token_endpoint_auth_method: body.token_endpoint_auth_method ?? null,
      redirect_uris: body.redirect_uris ?? null,
      error: body.error ?? null,
      error_description: body.error_description ?? null,
    };
    registrations.push(entry);
    console.log(`registration ${JSON.stringify(entry)}`);
    return;
  }

  // ---- the token endpoint: injected faults, and a log of every request
  if (ctx.path === "/token" && ctx.method === "POST") {
    const tStart = Date.now();
    if (faults.count > 0) {
      faults.count -= 1;
      const { status, delayMs } = faults;
      if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
      const entry = { t_start: tStart, t: Date.now(), grant_type: null, status, error: "temporarily_unavailable", fault: true };
      tokenLog.push(entry);
      console.log(`token ${JSON.stringify(entry)}`);
      return json(ctx, status, { error: "temporarily_unavailable", error_description: "injected fault" });
    }
    let form = {};
    if (ctx.is("application/x-www-form-urlencoded")) {
      form = await readForm(ctx);
      ctx.req.body = form; // oidc-provider takes a pre-parsed body as is
    }
    await next();
    let body = {};
    try {
      body = typeof ctx.body === "string" ? JSON.parse(ctx.body) : (ctx.body ?? {});
    } catch {}
    const ent = ctx.oidc?.entities ?? {};
    const entry = {
      t_start: tStart,
      t: Date.now(),
      grant_type: form.grant_type ?? null,
      status: ctx.status,
      error: body.error ?? null,
      error_description: body.error_description ?? null,
      error_detail: ctx.state.grantErrorDetail ?? null,
      sub: ent.Account?.accountId ?? ent.RefreshToken?.accountId ?? ent.AuthorizationCode?.accountId ?? null,
      client_id: ent.Client?.clientId ?? null,
      rotated: !!ent.RotatedRefreshToken,
      fault: false,
      refresh_token_in: sha16(form.refresh_token),
      refresh_token_out: sha16(body.refresh_token),
      access_token_jti: ent.AccessToken?.jti ?? null,
    };
    tokenLog.push(entry);
    console.log(`token ${JSON.stringify(entry)}`);
    return;
  }

  // ---- refuse unknown login names at the dev login form (as oidc_idp.mjs)
  if (ctx.method === "POST" && /^\/interaction\/[^/]+$/.test(ctx.path) && ctx.is("application/x-www-form-urlencoded")) {
    const body = await readForm(ctx);
    ctx.req.body = body;
    if (body.prompt === "login" && !Object.hasOwn(users, String(body.login))) {
      console.error(`upstream_as: refused unknown login name ${JSON.stringify(body.login)}`);
      ctx.status = 403;
      ctx.type = "html";
      const esc = String(body.login).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
      ctx.body = `<!DOCTYPE html><html><head><title>Unknown user</title></head><body><h1>Unknown user</h1><p>unknown user: ${esc}</p></body></html>`;
      return;
    }
  }
  await next();
});

// The token endpoint answers only a generic error_description ("grant
// request is invalid"); the reason is in the error's detail, for the log.
provider.on("grant.error", (ctx, err) => {
  ctx.state.grantErrorDetail = err?.error_detail ?? err?.message ?? null;
});

const server = provider.listen(port, "127.0.0.1");
server.on("error", (e) => {
  console.error(`upstream_as: ${e.message}`);
  process.exit(1);
});
server.on("listening", () => console.log(`listening ${issuer}`));

const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
