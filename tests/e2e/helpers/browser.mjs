// A real headless browser for the e2e tests: Debian's chromium driven by
// playwright-core (npm), through an OAuth authorization flow's login and
// consent pages, up to the redirect to the client's callback.
//
// Usage: node browser.mjs --url AUTHORIZE_URL --stop-at CALLBACK_PREFIX --user NAME
//            [--screenshots DIR] [--deny] [--timeout-ms 60000]
//            [--chromium /usr/bin/chromium]   (default: $E2E_CHROMIUM or /usr/bin/chromium)
//
// Opens AUTHORIZE_URL in a fresh profile and then, page after page:
//  * a request to a URL starting with CALLBACK_PREFIX (navigation, redirect
//    or not) is paused and failed in the browser (DevTools Fetch interception,
//    which also catches the requests redirects lead to, unlike Playwright's
//    routes), so nothing needs to listen there and a listener gets nothing;
//    its URL is printed as the one stdout line `callback <url>`; exit 0;
//  * portcullis's consent page, a form with button#allow and button#deny:
//    screenshot consent.png, then click #allow (#deny with --deny);
//  * portcullis's development login page, button[name=user][value=NAME]:
//    screenshot dev-login.png, click it;
//  * an IdP login form, input[name=login] + input[type=password] (the
//    development interactions of oidc-provider): screenshot login.png, fill
//    login=NAME, password=any, submit;
//  * oidc-provider's consent form, input[name=prompt][value=consent]: submit
//    ("Continue");
//  * anything else (after the page has had a moment to settle), the same
//    page coming back too often, or the timeout: the page's URL, title and
//    the start of its text go to stderr (and error.png to DIR); exit 1.
// Progress lines go to stderr. Screenshots only with --screenshots DIR.

import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const { chromium } = await import(new URL("../node/node_modules/playwright-core/index.mjs", import.meta.url));

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const url = opt("--url");
const stopAt = opt("--stop-at");
const user = opt("--user");
const shots = opt("--screenshots");
const deny = args.includes("--deny");
const timeoutMs = Number(opt("--timeout-ms", "60000"));
const executablePath = opt("--chromium", process.env.E2E_CHROMIUM || "/usr/bin/chromium");
if (!url || !stopAt || !user) {
  console.error("usage: browser.mjs --url AUTHORIZE_URL --stop-at CALLBACK_PREFIX --user NAME [--screenshots DIR] [--deny] [--timeout-ms MS]");
  process.exit(2);
}

const log = (msg) => console.error(`browser: ${msg}`);
const deadline = Date.now() + timeoutMs;
const left = () => Math.max(1, deadline - Date.now());

const profile = mkdtempSync(join(tmpdir(), "e2e-chromium-"));
if (shots) mkdirSync(shots, { recursive: true });

let context;
let exiting = false;
async function finish(code) {
  if (exiting) return;
  exiting = true;
  clearTimeout(hardStop);
  try {
    await context?.close();
  } catch {}
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}
// If playwright itself hangs, still leave within the timeout (+ a margin).
const hardStop = setTimeout(() => {
  log(`hard timeout after ${timeoutMs} ms`);
  rmSync(profile, { recursive: true, force: true });
  process.exit(1);
}, timeoutMs + 15000);
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => finish(1));

async function describe(page, why) {
  let title = "";
  let text = "";
  try {
    title = await page.title();
    text = (await page.evaluate(() => document.body?.innerText ?? "")).replace(/\s+/g, " ").trim().slice(0, 500);
  } catch {}
  console.error(`browser: ${why}\n  url: ${page.url()}\n  title: ${title}\n  text: ${text}`);
  if (shots) {
    try {
      await page.screenshot({ path: join(shots, "error.png"), fullPage: true, timeout: 5000 });
    } catch {}
  }
}

let callbackUrl = null;
let onCallback;
const callbackSeen = new Promise((resolve) => (onCallback = resolve));
const isCallback = (u) => u.startsWith(stopAt);
function sawCallback(u) {
  if (callbackUrl === null) {
    callbackUrl = u;
    onCallback(u);
  }
}

const flags = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

let page;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: flags,
    timeout: left(),
  });
  page = context.pages()[0] ?? (await context.newPage());
  // The callback is stopped in the browser with the DevTools Fetch domain,
  // not with context.route(): Playwright's routes never see the request a
  // redirect leads to (microsoft/playwright#3993, "as designed"), and the
  // callback is always reached by a redirect (after the consent POST), so a
  // client listening there would get the code from the browser. Fetch
  // interception pauses redirected requests too: the callback is failed
  // before it leaves the browser, and only this script's caller delivers it.
  const cdp = await context.newCDPSession(page);
  cdp.on("Fetch.requestPaused", (ev) => {
    const u = ev.request.url;
    if (isCallback(u)) {
      sawCallback(u);
      cdp.send("Fetch.failRequest", { requestId: ev.requestId, errorReason: "Aborted" }).catch(() => {});
    } else {
      cdp.send("Fetch.continueRequest", { requestId: ev.requestId }).catch(() => {});
    }
  });
  await cdp.send("Fetch.enable", { patterns: [{ urlPattern: "*", requestStage: "Request" }] });
  // A callback request the interception did not pause still counts (and a
  // listener there may have received it).
  context.on("request", (req) => {
    if (isCallback(req.url())) sawCallback(req.url());
  });
  page.setDefaultTimeout(15000);
  log(`open ${url}`);
  await Promise.race([page.goto(url, { timeout: left() }).catch(() => {}), callbackSeen]);
} catch (e) {
  log(`cannot start chromium or open the page: ${e.message}`);
  await finish(1);
}

// What is on the page now? Evaluated in the page; "none" while it loads.
function classify(user) {
  const q = (s) => document.querySelector(s);
  const form = (el) => el && el.closest("form");
  if (form(q("#allow")) && form(q("#deny"))) return { kind: "consent" };
  const devButtons = [...document.querySelectorAll("button[name=user]")];
  if (devButtons.length) {
    return devButtons.some((b) => b.value === user)
      ? { kind: "dev-login" }
      : { kind: "dev-login-without-user", users: devButtons.map((b) => b.value) };
  }
  if (form(q("input[name=login]")) && q("input[type=password]")) return { kind: "idp-login" };
  if (form(q("input[name=prompt][value=consent]"))) return { kind: "idp-consent" };
  return { kind: "unknown" };
}

// Run an action that submits a form, and wait until the page has moved on
// (a new document committed) or the callback was seen.
async function submit(action) {
  const moved = page.waitForNavigation({ timeout: left(), waitUntil: "commit" }).catch(() => {});
  await action();
  await Promise.race([moved, callbackSeen]);
}

const seen = new Map(); // url + kind -> times acted on
let unknownSince = null;
while (callbackUrl === null) {
  if (Date.now() >= deadline) {
    await describe(page, `timeout after ${timeoutMs} ms without reaching ${stopAt}`);
    await finish(1);
  }
  await Promise.race([page.waitForLoadState("load", { timeout: left() }).catch(() => {}), callbackSeen]);
  if (callbackUrl !== null) break;
  let state;
  try {
    state = await page.evaluate(classify, user);
  } catch {
    // The document went away under us (a navigation): look again.
    await page.waitForTimeout(100);
    continue;
  }
  const here = page.url();
  if (state.kind === "unknown" || state.kind === "dev-login-without-user") {
    // Give redirects and scripts a moment before calling the page unknown.
    unknownSince ??= Date.now();
    if (Date.now() - unknownSince < 3000) {
      await Promise.race([page.waitForTimeout(200), callbackSeen]);
      continue;
    }
    const why =
      state.kind === "unknown"
        ? "a page that is neither login nor consent nor the callback"
        : `a dev login page without user ${JSON.stringify(user)} (it has ${JSON.stringify(state.users)})`;
    await describe(page, why);
    await finish(1);
  }
  unknownSince = null;
  const key = `${state.kind} ${here}`;
  const times = (seen.get(key) ?? 0) + 1;
  seen.set(key, times);
  if (times > 3) {
    await describe(page, `the same ${state.kind} page came back ${times} times`);
    await finish(1);
  }
  log(`${state.kind} page at ${here}`);
  const shot = async (name) => {
    if (shots) await page.screenshot({ path: join(shots, name), fullPage: true });
  };
  try {
    switch (state.kind) {
      case "consent":
        await shot("consent.png");
        await submit(() => page.click(deny ? "#deny" : "#allow"));
        break;
      case "dev-login":
        await shot("dev-login.png");
        await submit(() => page.click(`button[name=user][value="${user.replace(/["\\]/g, "\\$&")}"]`));
        break;
      case "idp-login":
        await page.fill("input[name=login]", user);
        await page.fill("input[type=password]", "any-password");
        await shot("login.png");
        await submit(() => page.click("form:has(input[name=login]) [type=submit]"));
        break;
      case "idp-consent":
        await submit(() => page.click("form:has(input[name=prompt][value=consent]) [type=submit]"));
        break;
    }
  } catch (e) {
    if (callbackUrl !== null) break;
    log(`action on the ${state.kind} page failed: ${e.message.split("\n")[0]}`);
    // Loop: the page is looked at again (and the repeat count bounds this).
  }
}

console.log(`callback ${callbackUrl}`);
await finish(0);
