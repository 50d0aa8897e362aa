// A real TypeScript SDK OAuth client for the e2e tests: @modelcontextprotocol/sdk's
// `Client` over `StreamableHTTPClientTransport` with an `authProvider` (the
// SDK's `OAuthClientProvider` interface, kept in memory), the way Claude Code
// and VS Code use it. The SDK does everything OAuth itself: the 401, RFC 9728
// protected resource metadata, RFC 8414 discovery, dynamic registration
// (token_endpoint_auth_method none), PKCE S256, `resource`, the code exchange.
// This script only plays the user: `redirectToAuthorization(url)` runs
// helpers/browser.mjs (headless chromium through login and consent) up to the
// redirect URI and keeps the code; then `transport.finishAuth(code)` and a
// new connection, tools/list and the tools of --calls.
//
// Usage: node ts_oauth_client.mjs --url MCP_URL --redirect-uri http://127.0.0.1:P/callback
//            --user alice [--screenshots DIR] [--calls JSON] [--timeout-ms 90000]
//
// Prints one JSON report line on stdout:
//   {"sdk", "registration": {client_id, token_endpoint_auth_method, ...},
//    "authorization": {url params}, "callback": {code?, state_ok, iss},
//    "tokens": {access_token, token_type, scope, expires_in, refresh_token?},
//    "unauthorizedFirst": true, "tools": [names], "calls": [{tool, ok, text | error}]}
// Exit 0 when the flow and the calls ran (call errors are in the report), 1 otherwise
// (the reason on stderr).

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";

const sdk = (p) => new URL(`../node/node_modules/@modelcontextprotocol/sdk/${p}`, import.meta.url);
const { Client } = await import(sdk("dist/esm/client/index.js"));
const { StreamableHTTPClientTransport } = await import(sdk("dist/esm/client/streamableHttp.js"));
const { UnauthorizedError } = await import(sdk("dist/esm/client/auth.js"));
const version = JSON.parse(readFileSync(sdk("package.json"), "utf8")).version;

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const url = new URL(opt("--url"));
const redirectUri = opt("--redirect-uri");
const user = opt("--user", "alice");
const shots = opt("--screenshots");
const calls = JSON.parse(opt("--calls", "[]"));
const timeoutMs = Number(opt("--timeout-ms", "90000"));
if (!opt("--url") || !redirectUri) {
  console.error("usage: ts_oauth_client.mjs --url MCP_URL --redirect-uri URI [--user NAME] [--screenshots DIR] [--calls JSON]");
  process.exit(2);
}
const log = (msg) => console.error(`ts-oauth-client: ${msg}`);
const fail = (msg) => {
  log(msg);
  process.exit(1);
};
setTimeout(() => fail(`timeout after ${timeoutMs} ms`), timeoutMs).unref();

const report = { sdk: version, calls: [] };

// The user at the browser: helpers/browser.mjs up to the redirect URI (it
// stops the callback in the browser and prints it).
function runBrowser(authorizationUrl) {
  const argv = [new URL("./browser.mjs", import.meta.url).pathname, "--url", authorizationUrl, "--stop-at", redirectUri, "--user", user,
    "--timeout-ms", String(Math.max(10000, timeoutMs - 20000))];
  if (shots) argv.push("--screenshots", shots);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.on("error", reject);
    child.on("close", (code) => {
      const line = out.split("\n").find((l) => l.startsWith("callback "));
      if (code !== 0 || !line) reject(new Error(`browser.mjs exited with ${code}: ${out.trim()}`));
      else resolve(line.slice("callback ".length));
    });
  });
}

class Provider {
  constructor() {
    this._state = randomBytes(16).toString("base64url");
    this._client = undefined;
    this._tokens = undefined;
    this._verifier = undefined;
    this.code = undefined;
  }
  get redirectUrl() {
    return redirectUri;
  }
  get clientMetadata() {
    return {
      client_name: "e2e TypeScript SDK client",
      redirect_uris: [redirectUri],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  }
  state() {
    return this._state;
  }
  clientInformation() {
    return this._client;
  }
  saveClientInformation(info) {
    this._client = info;
    report.registration = info;
  }
  tokens() {
    return this._tokens;
  }
  saveTokens(tokens) {
    this._tokens = tokens;
    report.tokens = tokens;
  }
  async redirectToAuthorization(authorizationUrl) {
    report.authorization = Object.fromEntries(authorizationUrl.searchParams);
    report.authorization.endpoint = `${authorizationUrl.origin}${authorizationUrl.pathname}`;
    log(`authorize at ${authorizationUrl}`);
    const callback = new URL(await runBrowser(authorizationUrl.href));
    const p = callback.searchParams;
    report.callback = {
      code: p.has("code"),
      error: p.get("error"),
      state_ok: p.get("state") === this._state,
      iss: p.get("iss"),
    };
    if (!p.get("code")) throw new Error(`no code at the callback: ${callback}`);
    if (p.get("state") !== this._state) throw new Error(`state mismatch at the callback: ${callback}`);
    this.code = p.get("code");
  }
  saveCodeVerifier(v) {
    this._verifier = v;
  }
  codeVerifier() {
    if (!this._verifier) throw new Error("no code verifier saved");
    return this._verifier;
  }
}

const provider = new Provider();
const newTransport = () => new StreamableHTTPClientTransport(url, { authProvider: provider });
const newClient = () => {
  const c = new Client({ name: "e2e-ts-oauth", version: "0" });
  c.onerror = () => {};
  return c;
};

let client = newClient();
const first = newTransport();
try {
  await client.connect(first);
  report.unauthorizedFirst = false;
} catch (e) {
  if (!(e instanceof UnauthorizedError) || !provider.code) fail(`connect failed: ${e?.stack ?? e}`);
  report.unauthorizedFirst = true;
  // As the SDK's own example does: the transport that got the 401 finishes
  // the flow (the code exchange), then a new connection carries the token.
  try {
    await first.finishAuth(provider.code);
  } catch (e2) {
    fail(`finishAuth failed: ${e2?.stack ?? e2}`);
  }
  client = newClient();
  try {
    await client.connect(newTransport());
  } catch (e3) {
    fail(`connect after finishAuth failed: ${e3?.stack ?? e3}`);
  }
}

try {
  report.tools = (await client.listTools()).tools.map((t) => t.name).sort();
} catch (e) {
  fail(`tools/list failed: ${e?.stack ?? e}`);
}
for (const { tool, arguments: callArgs } of calls) {
  const entry = { tool };
  try {
    const result = await client.callTool({ name: tool, arguments: callArgs ?? {} });
    entry.ok = !result.isError;
    entry.text = (result.content ?? []).map((c) => c.text ?? "").join("");
  } catch (e) {
    entry.ok = false;
    entry.error = String(e?.message ?? e);
    entry.code = e?.code ?? null;
  }
  report.calls.push(entry);
}
await client.close();
console.log(JSON.stringify(report));
process.exit(0);
