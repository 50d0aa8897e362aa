// A company OpenID Provider for the e2e tests: oidc-provider (npm, 9.x, a
// certified OpenID Connect implementation) on 127.0.0.1, issuer
// http://127.0.0.1:PORT (no trailing slash), discovery at
// /.well-known/openid-configuration.
//
// Usage: node oidc_idp.mjs --port P --client-id portcullis --client-secret S
//            --redirect-uri URI [--redirect-uri URI2 ...]
//            [--auth-method client_secret_basic|client_secret_post]
//            [--users JSON]
//
// What it is configured to do (everything else is oidc-provider's default):
//  * one confidential client (--client-id/--client-secret), response_type code,
//    grant types authorization_code and refresh_token, token endpoint
//    authentication --auth-method (default client_secret_basic; oidc-provider
//    accepts only the registered method, so a test of client_secret_post
//    starts the IdP with --auth-method client_secret_post);
//  * PKCE required for every client, S256 (the only method oidc-provider 9 has);
//  * its development interactions on: GET /interaction/<uid> shows a login
//    form (input[name=login], input[name=password], button[type=submit]) and
//    then a consent form (input[name=prompt][value=consent], a "Continue"
//    submit button);
//  * accounts: alice (alice@example.com, groups engineering, admins) and bob
//    (bob@example.com, groups sales), or the table of --users, e.g.
//    '{"carol": {"email": "carol@example.com", "groups": []}}'.
//    Any password is accepted. An unknown login name is REFUSED: the login
//    form's POST answers 403 with a page titled "Unknown user" (the dev
//    interactions themselves would take any name);
//  * scopes openid, email, profile, groups, offline_access; claims
//    email -> email, email_verified; profile -> name, preferred_username;
//    groups -> groups. conformIdTokenClaims is off, so the claims of the
//    granted scopes are in the ID token itself (not only at /me);
//  * ID tokens RS256 (a fresh 2048-bit RSA key per run, JWKS at /jwks),
//    nonce echoed;
//  * a refresh token comes with the code exchange when the request has scope
//    offline_access AND prompt=consent (oidc-provider drops offline_access
//    otherwise).
// Plain http on loopback works as is (cookies are not Secure on http).
// Prints "listening <issuer>" once ready; exits 0 on SIGTERM/SIGINT.

import { generateKeyPairSync, randomBytes } from "node:crypto";
import * as querystring from "node:querystring";

const { default: Provider } = await import(
  new URL("../node/node_modules/oidc-provider/lib/index.js", import.meta.url)
);

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const opts = (name) => args.flatMap((a, i) => (a === name ? [args[i + 1]] : []));

const port = Number(opt("--port"));
const clientId = opt("--client-id", "portcullis");
const clientSecret = opt("--client-secret");
const redirectUris = opts("--redirect-uri");
const authMethod = opt("--auth-method", "client_secret_basic");
if (!port || !clientSecret || redirectUris.length === 0) {
  console.error("usage: oidc_idp.mjs --port P --client-id ID --client-secret S --redirect-uri URI [...]");
  process.exit(2);
}

const users = JSON.parse(
  opt(
    "--users",
    JSON.stringify({
      alice: { email: "alice@example.com", name: "Alice Example", groups: ["engineering", "admins"] },
      bob: { email: "bob@example.com", name: "Bob Example", groups: ["sales"] },
    }),
  ),
);

const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: "jwk" }), use: "sig", alg: "RS256", kid: "e2e-rs256" };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      response_types: ["code"],
      grant_types: ["authorization_code", "refresh_token"],
      token_endpoint_auth_method: authMethod,
      id_token_signed_response_alg: "RS256",
    },
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString("base64url")] },
  pkce: { required: () => true },
  scopes: ["openid", "email", "profile", "groups", "offline_access"],
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name", "preferred_username"],
    groups: ["groups"],
  },
  conformIdTokenClaims: false,
  // Explicit lifetimes (seconds), as oidc-provider asks for (it logs a notice
  // for each default one it uses).
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 86400,
    Interaction: 600,
    Session: 86400,
    Grant: 86400,
  },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
  },
  async findAccount(_ctx, sub) {
    const u = Object.hasOwn(users, sub) ? users[sub] : undefined;
    if (!u) return undefined;
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          email: u.email ?? `${sub}@example.com`,
          email_verified: true,
          name: u.name ?? sub,
          preferred_username: sub,
          groups: u.groups ?? [],
        };
      },
    };
  },
});

// Refuse unknown login names at the dev login form's POST (the dev
// interactions would log in any name; findAccount then finds nobody and
// oidc-provider asks to log in again, forever). The body read here is handed
// on as req.body, which oidc-provider's body parser takes as "already parsed"
// (it logs one warning about that, once).
provider.use(async (ctx, next) => {
  if (ctx.method === "POST" && /^\/interaction\/[^/]+$/.test(ctx.path) && ctx.is("application/x-www-form-urlencoded")) {
    const chunks = [];
    let size = 0;
    for await (const c of ctx.req) {
      size += c.length;
      if (size > 64 * 1024) ctx.throw(413);
      chunks.push(c);
    }
    const body = querystring.parse(Buffer.concat(chunks).toString("utf8"));
    ctx.req.body = body;
    if (body.prompt === "login" && !Object.hasOwn(users, String(body.login))) {
      console.error(`oidc_idp: refused unknown login name ${JSON.stringify(body.login)}`);
      ctx.status = 403;
      ctx.type = "html";
      const esc = String(body.login).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
      ctx.body = `<!DOCTYPE html><html><head><title>Unknown user</title></head><body><h1>Unknown user</h1><p>unknown user: ${esc}</p></body></html>`;
      return;
    }
  }
  await next();
});

const server = provider.listen(port, "127.0.0.1");
server.on("error", (e) => {
  console.error(`oidc_idp: ${e.message}`);
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
