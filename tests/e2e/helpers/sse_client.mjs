// A real TypeScript SDK client (@modelcontextprotocol/sdk `Client` over the
// legacy HTTP+SSE `SSEClientTransport`) for the e2e tests: connects to --url
// (the GET /sse stream), then calls the tools of --calls one after the other
// on that one connection, each under its own timeout, and prints one JSON
// report line:
//
//   {"sdk": "1.32.2", "calls": [{"tool", "ok", "ms", "text" | "error", "code", "timedOut"}]}
//
// Usage: node sse_client.mjs --url URL --calls '[{"tool": "add", "arguments": {...}}]'
//        [--timeout MS]   (per call, default 10000; the SDK's own is 60 s)

const sdk = (p) => new URL(`../node/node_modules/@modelcontextprotocol/sdk/${p}`, import.meta.url);
const { Client } = await import(sdk("dist/esm/client/index.js"));
const { SSEClientTransport } = await import(sdk("dist/esm/client/sse.js"));
const { ErrorCode } = await import(sdk("dist/esm/types.js"));
const { readFileSync } = await import("node:fs");

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const url = new URL(opt("--url"));
const calls = JSON.parse(opt("--calls", "[]"));
const timeout = Number(opt("--timeout", "10000"));
const version = JSON.parse(readFileSync(sdk("package.json"), "utf8")).version;

const client = new Client({ name: "e2e-ts-sse", version: "0" });
const transport = new SSEClientTransport(url);
// Transport errors are reported by the calls they fail; keep them off stderr noise.
client.onerror = () => {};
await client.connect(transport, { timeout });

const report = { sdk: version, calls: [] };
for (const { tool, arguments: callArgs } of calls) {
  const started = performance.now();
  const entry = { tool };
  try {
    const result = await client.callTool({ name: tool, arguments: callArgs ?? {} }, undefined, { timeout });
    entry.ok = !result.isError;
    entry.text = (result.content ?? []).map((c) => c.text ?? "").join("");
  } catch (e) {
    entry.ok = false;
    entry.error = String(e?.message ?? e);
    entry.code = e?.code ?? null;
    entry.timedOut = e?.code === ErrorCode.RequestTimeout;
  }
  entry.ms = Math.round(performance.now() - started);
  report.calls.push(entry);
}
await client.close();
console.log(JSON.stringify(report));
process.exit(0);
