// An independent token issuer for the e2e tests: oauth2-mock-server (npm)
// on 127.0.0.1, issuer URL http://127.0.0.1:PORT, one signing key (RS256 or --alg),
// JWKS at /jwks, OpenID discovery at /.well-known/openid-configuration,
// /authorize (redirects at once with a code) and /token.
//
// Usage: node idp.mjs --port P [--alg RS256|ES256] [--code-claims JSON]
//
// The one addition (a persistent `beforeTokenSigning` hook, the package's own
// customisation point) shapes access tokens only (those carrying `scope`;
// id_tokens are left alone):
//  * a token request may carry `claims` (a JSON object, form field) whose
//    members are set on the token (sub, groups, aud, exp, ...; null removes
//    one);
//  * an authorization_code grant gets the claims of --code-claims and, as
//    RFC 8707 wants, `aud` = the `resource` the client sent.
// Prints "listening <issuer>" once ready.

const lib = await import(new URL("../node/node_modules/oauth2-mock-server/dist/index.mjs", import.meta.url));
const { OAuth2Server, Events } = lib;

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const port = Number(opt("--port"));
const codeClaims = JSON.parse(opt("--code-claims", "{}"));
const alg = opt("--alg", "RS256");

const server = new OAuth2Server();
await server.issuer.keys.generate(alg);
server.issuer.url = `http://127.0.0.1:${port}`;

server.service.on(Events.BeforeTokenSigning, (token, req) => {
  const body = req.body ?? {};
  if (!("scope" in token.payload)) return; // an id_token
  if (body.grant_type === "authorization_code") {
    Object.assign(token.payload, codeClaims);
    if (typeof body.resource === "string") token.payload.aud = body.resource;
  }
  if (typeof body.claims === "string") {
    Object.assign(token.payload, JSON.parse(body.claims));
  }
  for (const [k, v] of Object.entries(token.payload)) {
    if (v === null) delete token.payload[k]; // `"claim": null` removes one
  }
});

await server.start(port, "127.0.0.1");
console.log(`listening ${server.issuer.url}`);

const stop = async () => {
  await server.stop();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
