#!/usr/bin/env python3
"""Scenario 5, open-loop latency: requests at a fixed rate (25 %, 50 % and
75 % of nginx's maximum, measured first in this run with a short closed-loop
wrk run) through each target: direct, portcullis plain, portcullis with the
full MCP path (cached JWT + 100-rule policy + audit to a file), nginx plain,
haproxy plain. p50/p99/p99.9 from a generator at a fixed rate, each
request's latency counted from when it was due, not from when it was sent
(coordinated omission corrected), and each proxy's CPU per request at each
rate. Goal (PERFORMANCE.md): p99 at 50 % of nginx's max rate, portcullis full
path ≤ nginx plain.

The generator (`--generator`) is `ltrate` by default (loadtest/ltrate.rs, a
cargo example built when missing): one thread, epoll with ns timeouts, a
request sent within microseconds of when it is due. `oha` (tokio) is the
other choice: its 1 ms timer sends the requests in bursts and counts its own
lateness (up to 1 ms) into every latency, and it needs ~19 µs of CPU per
request on the core it shares with the upstream, so its tail was mostly its
own (nginx's own p99 at 50 % moved from 5.8 to 71 ms between rounds).

Every target gets the same request: `POST /mcp`, a 1 KiB JSON-RPC
`tools/call`, a bearer token (ES256, the same one every time: portcullis's
token cache hits), MCP `Accept`. The key, JWKS, token, policy and portcullis
config come from ltlib (the full MCP path set-up shared with loadtest/run).
oha is installed when chosen and missing (`cargo install oha --locked --root
loadtest/.tools`, a few minutes). Layout: the proxy alone on core 0 (one
worker), the generator (one thread) and the nginx upstream on core 1.
Standalone: `loadtest/openloop.py --help`. From loadtest/run:
`openloop.run(args_or_dict_or_kwargs)` -> {"md", "data", "goals"}.
Python 3 standard library only."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ltlib  # noqa: E402
import scenlib  # noqa: E402
from ltlib import HERE, LOAD_CORE, PROXY_CORE, Target, log  # noqa: E402
from scenlib import Scope  # noqa: E402

TOOLS = os.path.join(HERE, ".tools")
TARGETS = ("direct", "portcullis-plain", "portcullis-mcp", "nginx", "haproxy")


def parser():
    ap = argparse.ArgumentParser(
        description="open-loop latency at 25/50/75 %% of nginx's max rate (fixed rate, "
                    "latency counted from when a request was due): direct, portcullis plain, "
                    "portcullis full MCP path, nginx, haproxy (loadtest/openloop.py)")
    scenlib.common_args(ap, duration=10, port_base=19100)
    ap.add_argument("-r", "--rounds", type=int, default=3,
                    help="rounds; each round runs every rate × target in turn (default 3)")
    ap.add_argument("--fractions", default="0.25,0.5,0.75",
                    help="rates as fractions of nginx's max (default 0.25,0.5,0.75)")
    ap.add_argument("--max-duration", type=int, default=5,
                    help="seconds of the closed-loop wrk run that finds nginx's max (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds per target (default 2)")
    ap.add_argument("-c", "--connections", type=int, default=32,
                    help="the generator's connections (default 32, as wrk)")
    ap.add_argument("--generator", choices=("ltrate", "oha"), default="ltrate",
                    help="ltrate (loadtest/ltrate.rs, default) or oha")
    ap.add_argument("--group-us", type=int, default=0,
                    help="ltrate: requests due in groups every this many µs (default 0: each "
                         "on its own)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="default: all five")
    return ap


def ensure_oha():
    b = shutil.which("oha") or (os.path.join(TOOLS, "bin", "oha")
                                if os.access(os.path.join(TOOLS, "bin", "oha"), os.X_OK) else None)
    if b:
        return b
    log("installing oha (cargo install oha --locked --root loadtest/.tools; a few minutes)")
    subprocess.run(["cargo", "install", "oha", "--locked", "--root", TOOLS], check=True)
    return os.path.join(TOOLS, "bin", "oha")


def oha_cmd(oha, port, rate, duration, conns, body_path, token):
    return ["taskset", "-c", LOAD_CORE, oha, "-z", f"{duration}s", "-q", str(rate),
            "--latency-correction", "--no-tui", "--output-format", "json",
            "-c", str(conns), "--worker-threads", "1", "-t", "10s",
            "-m", "POST", "-D", body_path, "-T", "application/json",
            "-A", "application/json, text/event-stream",
            "-H", f"Authorization: Bearer {token}",
            f"http://127.0.0.1:{port}/mcp"]


def ltrate_cmd(ltrate, port, rate, duration, conns, req_path, group_us):
    return ["taskset", "-c", LOAD_CORE, ltrate, f"127.0.0.1:{port}", str(rate), "1",
            str(duration), str(conns), req_path, str(group_us)]


def write_request(tmp, port, body_path, token):
    """The whole request ltrate sends to `port`: the same head oha sends."""
    with open(body_path, "rb") as f:
        body = f.read()
    head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    path = os.path.join(tmp, f"request-{port}.http")
    with open(path, "wb") as f:
        f.write(head.encode() + body)
    return path


class Generator:
    """The open-loop generator: its command for a target and rate, and its
    output read into one run's figures."""

    def __init__(self, name, tmp, body_path, token, conns, group_us):
        self.name, self.tmp, self.body_path, self.token, self.conns = name, tmp, body_path, token, conns
        self.group_us = group_us
        self.bin = ensure_oha() if name == "oha" else scenlib.ensure_helper("ltrate")

    def version(self):
        if self.name == "oha":
            return ltlib.sh([self.bin, "--version"]).stdout.strip()
        return "ltrate (loadtest/ltrate.rs)"

    def cmd(self, port, rate, duration):
        if self.name == "oha":
            return oha_cmd(self.bin, port, rate, duration, self.conns, self.body_path, self.token)
        req = write_request(self.tmp, port, self.body_path, self.token)
        return ltrate_cmd(self.bin, port, rate, duration, self.conns, req, self.group_us)

    def cmd_text(self, duration):
        if self.name == "oha":
            return " ".join(oha_cmd("oha", "<port>", "<rate>", duration, self.conns,
                                    "body.json", "<token>")[3:])
        return " ".join(ltrate_cmd("ltrate", "<port>", "<rate>", duration, self.conns,
                                   "request.http", self.group_us)[3:])

    def timeout(self, duration):
        return duration + 40

    def parse(self, out, err, wall):
        """{"error": ...} or the run's counts and latencies (µs)."""
        if self.name == "oha":
            return parse_oha(out, err, wall)
        line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            return {"error": f"no ltrate RESULT ({err.strip()[-300:]})"}
        j = json.loads(line[len("RESULT "):])
        codes = {str(k): int(v) for k, v in j["statuses"].items()}
        ok = codes.get("200", 0)
        d, sent, lag = j["from_due"], j["from_sent"], j["send_lag"]
        return {
            "responses": sum(codes.values()), "ok": ok, "non200": sum(codes.values()) - ok,
            "status_codes": codes, "due": j["due"],
            "aborted_at_deadline": j["missing_at_end"] + j["unsent"],
            "errors": {e: 1 for e in j["errors"]}, "n_errors": j["n_errors"],
            "achieved_rps": j["achieved_rps"],
            "p50_us": d["p50_us"], "p90_us": d["p90_us"], "p99_us": d["p99_us"],
            "p999_us": d["p999_us"], "max_us": d["max_us"],
            "p50_sent_us": sent["p50_us"], "p99_sent_us": sent["p99_us"],
            "lag_p50_us": lag["p50_us"], "lag_p99_us": lag["p99_us"],
            "max_queue": j["max_queue"], "gen_cpu_s": j["cpu_s"],
            # the proxy's CPU is read over the whole run, warm-up second too
            "answered_all": j["answered_all"],
        }


def parse_oha(out, err, wall):
    try:
        j = json.loads(out)
    except ValueError:
        return {"error": f"no oha JSON ({err.strip()[-300:]})"}
    codes = {k: int(v) for k, v in (j.get("statusCodeDistribution") or {}).items()}
    errs = {k: int(v) for k, v in (j.get("errorDistribution") or {}).items()}
    ok = codes.get("200", 0)
    total_time = (j.get("summary") or {}).get("total") or wall
    lp = j.get("latencyPercentiles") or {}

    def us(k):
        v = lp.get(k)
        return None if v is None else v * 1e6
    return {
        "responses": sum(codes.values()), "ok": ok, "non200": sum(codes.values()) - ok,
        "status_codes": codes,
        # requests still in flight when -z ends are aborted by oha: not errors of the target
        "aborted_at_deadline": errs.pop("aborted due to deadline", 0),
        "errors": errs, "n_errors": sum(errs.values()),
        "achieved_rps": ok / total_time if total_time else None,
        "p50_us": us("p50"), "p90_us": us("p90"), "p99_us": us("p99"), "p999_us": us("p99.9"),
        "max_us": ((j.get("summary") or {}).get("slowest") or 0) * 1e6,
    }


def run_gen(scope, gen, t, upstream, rate, duration, audit=None):
    cmd = gen.cmd(t.port, rate, duration)
    pids, up_pids = t.refresh_pids(), upstream.refresh_pids()
    a0 = audit.poll() if audit else None
    sampler = ltlib.CoreSampler().start()
    proxy_clock, up_clock = ltlib.CpuClock(pids), ltlib.CpuClock(up_pids)
    ru0 = __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN)
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=gen.timeout(duration))
        out, err = p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        out, err = "", f"{gen.name} timed out"
    wall = time.monotonic() - t0
    proxy_cpu, up_cpu = proxy_clock.seconds(), up_clock.seconds()
    ru1 = __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN)
    sampler.stop()
    with open(os.path.join(scope.tmp, f"{gen.name}.log"), "a") as f:
        f.write(f"==== {t.name} rate {rate} ====\n{' '.join(cmd[:-3])} ...\n{err[-2000:]}\n")
    r = {"target": t.name, "rate": rate, "wall_s": wall}
    r.update(gen.parse(out, err, wall))
    if r.get("error"):
        return r
    ok = r["ok"]
    r.update({
        "proxy_cpu_s": proxy_cpu if pids else None,
        "upstream_cpu_s": up_cpu,
        "gen_cpu_s": r.get("gen_cpu_s", (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)),
        "cores": sampler.summary(),
    })
    all_ok = r.get("answered_all", ok)
    r["cpu_us_per_req"] = 1e6 * r["proxy_cpu_s"] / all_ok if (all_ok and pids) else None
    r["gen_us_per_req"] = 1e6 * r["gen_cpu_s"] / ok if ok else None
    if audit is not None:
        r["audit_lines"] = audit.settle(timeout=3) - a0
    lost = r.get("audit_lines", all_ok) < all_ok
    flags = [f"audit lines fewer than answers ({r['audit_lines']} < {all_ok})"] if lost else []
    if r["achieved_rps"] is not None and r["achieved_rps"] < 0.95 * rate:
        flags.append(f"rate not reached ({r['achieved_rps']:.0f}/s of {rate}/s)")
    for cpu, s in r["cores"].items():
        if s["steal_pct"] > ltlib.STEAL_MEAN_PCT or s["steal_peak_pct"] > ltlib.STEAL_PEAK_PCT:
            flags.append(f"steal {cpu} {s['steal_pct']:.1f}% (peak {s['steal_peak_pct']:.0f}%)")
    c0s = r["cores"].get(f"cpu{PROXY_CORE}")
    if c0s and pids:
        foreign = 100.0 * max(c0s["busy_ticks"] - proxy_cpu * ltlib.CLK_TCK, 0) / (c0s["total_ticks"] or 1)
        r["core0_foreign_pct"] = foreign
        if foreign > ltlib.FOREIGN_CORE0_PCT:
            flags.append(f"foreign load on core {PROXY_CORE} {foreign:.0f}%")
    c1s = r["cores"].get(f"cpu{LOAD_CORE}")
    if c1s:
        r["core1_busy_pct"] = c1s["busy_pct"]
    r["flags"] = flags
    return r


def run(args=None, **kw):
    args = scenlib.resolve_args(parser(), args, **kw)
    fractions = [float(x) for x in args.fractions.split(",") if x]
    names = [x for x in args.targets.split(",") if x]
    if "nginx" not in names:
        names.append("nginx")  # its max sets the rates
    data = {"runs": [], "errors": [], "preflight": {}, "nofile": scenlib.raise_nofile()}
    base = args.port_base
    ports = {"upstream": base, "portcullis-plain": base + 1, "portcullis-mcp": base + 2,
             "nginx": base + 3, "haproxy": base + 4}
    scenlib.check_ports(ports.values())
    if args.quiet_wait:
        data["quiet"] = ltlib.wait_quiet(args.quiet_wait)
    t_start = time.monotonic()
    with Scope("openloop", args.keep_tmp) as scope:
        tmp = scope.tmp
        src, pbin = scenlib.portcullis_bin(scope)
        data["portcullis_binary"] = ltlib.binary_info(src, pbin)
        data["versions"] = {"nginx": ltlib.sh([ltlib.find_bin("nginx"), "-v"]).stderr.strip(),
                            "haproxy": ltlib.sh([ltlib.find_bin("haproxy"), "-v"]).stdout.splitlines()[0],
                            "wrk": (lambda w: (w.stdout + w.stderr).splitlines()[0])(ltlib.sh(["wrk", "-v"]))}
        # --- full MCP path set-up (ltlib): issuer, one token, a control token, 100 rules
        issuer = ltlib.make_issuer(tmp)
        tok_path = ltlib.mint_tokens(issuer, 1, os.path.join(tmp, "token.txt"))
        ctl_path = ltlib.mint_tokens(issuer, 1, os.path.join(tmp, "control.txt"),
                                     claims=ltlib.LT_CONTROL_CLAIMS)
        token = ltlib.first_token(tok_path)
        rules, allow_rule = ltlib.mcp_policy_rules(100)
        body_path = write_body(tmp)
        gen = Generator(args.generator, tmp, body_path, token, args.connections, args.group_us)
        data["generator"] = gen.version()
        audit_path = os.path.join(tmp, "audit.jsonl")
        upstream = scenlib.start_nginx_upstream(scope, ports["upstream"])
        targets = []
        for name in names:
            if name == "direct":
                targets.append(Target("direct", ports["upstream"], "direct"))
            elif name == "portcullis-plain":
                targets.append(scenlib.start_portcullis(
                    scope, pbin, name, ports[name],
                    ltlib.portcullis_plain_conf(ports[name], ports["upstream"], args.driver)))
            elif name == "portcullis-mcp":
                targets.append(scenlib.start_portcullis(
                    scope, pbin, name, ports[name],
                    ltlib.portcullis_mcp_conf(ports[name], ports["upstream"], issuer, args.driver,
                                              audit_path=audit_path, policy_rules=rules)))
            elif name == "nginx":
                targets.append(scenlib.start_nginx_proxy(scope, ports[name], ports["upstream"]))
            elif name == "haproxy":
                targets.append(scenlib.start_haproxy(scope, ports[name], ports["upstream"]))
        scenlib.wait_started(targets)
        audit = ltlib.AuditCounter(audit_path)
        for t in targets:
            if t.kind == "portcullis":
                data.setdefault("portcullis_driver", {})[t.name] = scenlib.driver_lines(t)
            if t.name == "portcullis-mcp":
                pre = ltlib.mcp_preflight(t.port, token, audit, allow_rule,
                                          control_token=ltlib.first_token(ctl_path))
            else:
                pre = ltlib.mcp_preflight(t.port, token, expect_auth=False)
            data["preflight"][t.name] = pre
            for check, ok, info in pre:
                if not ok:
                    data["errors"].append(f"preflight {t.name}: {check}: {info}")
                    log(f"PREFLIGHT FAILED {t.name}: {check}: {info}")
        # --- nginx's max (closed loop, wrk, the same request)
        ng = [t for t in targets if t.name == "nginx"][0]
        spec = ltlib.mcp_wrk_spec(body_path, tok_path)
        ltlib.run_wrk(tmp, ng, "mcp", 2, upstream, "warmup", spec=spec)
        wr = ltlib.run_wrk(tmp, ng, "mcp", args.max_duration, upstream, "max", spec=spec)
        data["nginx_max"] = {k: wr.get(k) for k in ("rps", "requests", "non2xx", "errors",
                                                     "cpu_us_per_req", "flags", "p99_us")}
        data["nginx_max"]["cmd"] = spec.cmd_text(args.max_duration)
        nmax = wr["rps"]
        if not nmax or wr.get("non2xx") or wr.get("errors"):
            data["errors"].append(f"nginx max run failed: {data['nginx_max']}")
        rates = [max(1, int(round(f * nmax))) for f in fractions]
        data["rates"] = dict(zip([str(f) for f in fractions], rates))
        log(f"nginx max {nmax:.0f} req/s (closed loop, wrk, {args.max_duration} s): rates {rates}")
        # --- warm-up, then rounds: per round, per rate, every target in turn
        for t in targets:
            run_gen(scope, gen, t, upstream, rates[0], args.warmup)
        data["audit_before_rounds"] = audit.settle(timeout=3)
        for rnd in range(1, args.rounds + 1):
            for f, rate in zip(fractions, rates):
                for t in targets:
                    if not t.alive():
                        data["errors"].append(f"{t.name} not running (round {rnd}): {t.log_tail(10)}")
                        continue
                    if args.quiet_wait:
                        ltlib.wait_core_quiet(5)
                    r = run_gen(scope, gen, t, upstream, rate, args.duration,
                                audit if t.name == "portcullis-mcp" else None)
                    r.update({"round": rnd, "fraction": f})
                    data["runs"].append(r)
                    log(f"r{rnd} {f:.2f} {t.name:17} {rate:6}/s got {ltlib.fmt(r.get('achieved_rps'), '.0f')} "
                        f"p50 {ltlib.fmt_us(r.get('p50_us'))} p99 {ltlib.fmt_us(r.get('p99_us'))} "
                        f"p99.9 {ltlib.fmt_us(r.get('p999_us'))} cpu {ltlib.fmt(r.get('cpu_us_per_req'), '.1f')} "
                        f"µs/req err {r.get('n_errors')} non200 {r.get('non200')} "
                        f"{'FLAG ' + '; '.join(r.get('flags') or []) if r.get('flags') else ''}")
                    if not t.alive():
                        data["errors"].append(f"{t.name} exited during round {rnd}: {t.log_tail(10)}")
        data["configs"] = {t.name: t.conf for t in targets if t.conf}
        data["generator_cmd"] = gen.cmd_text(args.duration)
    data["elapsed_s"] = time.monotonic() - t_start
    goals = goals_of(data)
    return {"md": report(data, goals, args, fractions), "data": data, "goals": goals}


def write_body(tmp):
    return ltlib.write(os.path.join(tmp, "mcp-body.json"), ltlib.mcp_call_body())


def pairs(data, frac, a, b, key):
    """Per-round ratio a/b of `key` at one rate, and whether either run was flagged."""
    out = []
    for rnd in sorted({r["round"] for r in data["runs"]}):
        ra = [r for r in data["runs"] if r["round"] == rnd and r["fraction"] == frac and r["target"] == a]
        rb = [r for r in data["runs"] if r["round"] == rnd and r["fraction"] == frac and r["target"] == b]
        if ra and rb and ra[0].get(key) and rb[0].get(key):
            out.append((ra[0][key] / rb[0][key], bool(ra[0].get("flags") or rb[0].get("flags"))))
    return out


def goals_of(data):
    p = pairs(data, 0.5, "portcullis-mcp", "nginx", "p99_us")
    clean = [x for x, fl in p if not fl]
    v = ltlib.med(clean) if clean else ltlib.med([x for x, _ in p])
    errs = [r for r in data["runs"] if r["target"] in ("portcullis-mcp", "nginx") and r["fraction"] == 0.5
            and (r.get("error") or r.get("n_errors") or r.get("non200"))]
    ok = None if v is None or errs else v <= 1.0
    return [{"goal": "p99 at 50 % of nginx's max rate: portcullis full MCP path ÷ nginx plain ≤ 1 "
                     "(median of per-round ratios)", "value": v, "ok": ok}]


def report(data, goals, args, fractions):
    md = ["## Open-loop latency at fixed rates (scenario 5)\n"]
    nm = data.get("nginx_max") or {}
    md.append(f"Rates: {', '.join(f'{float(f) * 100:.0f} % = {r}/s' for f, r in (data.get('rates') or {}).items())} "
              f"of nginx's maximum, {ltlib.fmt(nm.get('rps'), ',.0f')} req/s, measured first in this run "
              f"closed-loop with wrk (`{nm.get('cmd')}`, 32 connections, {args.max_duration} s, "
              f"the same request; {ltlib.fmt(nm.get('cpu_us_per_req'), '.1f')} µs nginx CPU/req). "
              f"Load generator: **{data.get('generator')}** at a fixed rate with coordinated-omission "
              f"correction: `{data.get('generator_cmd')}` (a request's latency counts from when it was "
              f"due; one thread, pinned to core {LOAD_CORE} with the nginx upstream; the proxy alone on "
              f"core {PROXY_CORE}, one worker). "
              + (f"ltrate sends each request within microseconds of when it is due (epoll, ns "
                 f"timeouts) on a free connection of its {args.connections}, after a 1 s warm-up on the same "
                 "connections; its p99 from when the request was sent and its own send lateness are "
                 "in the per-run table. " if args.generator == "ltrate" else
                 "oha's timer has a 1 ms resolution: requests go out in bursts, and its own "
                 "lateness counts into the latencies. ")
              + f"{args.rounds} round(s); in each, every rate and every target in turn, {args.duration} s "
              "each, after a warm-up. Request: `POST /mcp`, 1 KiB JSON-RPC `tools/call`, a bearer "
              "token (ES256, the same one: cached), MCP `Accept`, to every target. "
              "portcullis-mcp = the full MCP path: JWT (cached) + 100-rule policy (the call allowed "
              "by rule 90) + audit to a file; portcullis-plain = `mcp: {}` route, no auth/policy/audit; "
              "nginx and haproxy plain (configs as in loadtest/run). CPU µs/req: time on a CPU (schedstat, ns) of the "
              "proxy's processes over the run ÷ 200 responses.\n")
    md.append(scenlib.goals_md(goals) + "\n")
    if data["errors"]:
        md.append("**Errors:** " + "; ".join(data["errors"]) + "\n")
    pre = data.get("preflight", {}).get("portcullis-mcp")
    if pre:
        md.append("Preflight of the full path: " + "; ".join(
            f"{c}: {'ok' if ok else 'FAILED ' + info}" for c, ok, info in pre) + ".\n")
    md.append("Medians over rounds (all runs; flagged ones marked in the per-run table):\n")
    md.append("| rate | target | achieved req/s | p50 | p99 | p99.9 | max | proxy CPU µs/req | "
              "p99 ÷ nginx (median of rounds) |")
    md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    names = []
    for r in data["runs"]:
        if r["target"] not in names:
            names.append(r["target"])
    for f in fractions:
        rate = (data.get("rates") or {}).get(str(f))
        for n in names:
            rs = [r for r in data["runs"] if r["fraction"] == f and r["target"] == n]
            if not rs:
                continue

            def m(k):
                return ltlib.med([r.get(k) for r in rs])
            ratio = ltlib.med([x for x, _ in pairs(data, f, n, "nginx", "p99_us")]) if n != "nginx" else None
            md.append(f"| {f * 100:.0f} % ({rate}/s) | {n} | {ltlib.fmt(m('achieved_rps'), ',.0f')} | "
                      f"{ltlib.fmt_us(m('p50_us'))} | {ltlib.fmt_us(m('p99_us'))} | {ltlib.fmt_us(m('p999_us'))} | "
                      f"{ltlib.fmt_us(m('max_us'))} | {ltlib.fmt(m('cpu_us_per_req'), '.1f')} | "
                      f"{ltlib.fmt(ratio)} |")
    md.append("")
    md.append("<details><summary>Every run</summary>\n")
    md.append("| round | rate | target | 200s | non-200 | errors | unanswered at end | achieved/s | p50 | p90 | "
              "p99 | p99.9 | max | p99 from send | send lag p99 | CPU µs/req | generator µs/req | "
              "core 1 busy | audit lines (warm-up too) | flags |")
    md.append("|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in data["runs"]:
        md.append(f"| {r['round']} | {r['fraction'] * 100:.0f} % | {r['target']} | {r.get('ok', '–')} | "
                  f"{r.get('non200', '–')} | {r.get('error') or r.get('errors') or 'none'} | "
                  f"{r.get('aborted_at_deadline', '–')} | {ltlib.fmt(r.get('achieved_rps'), ',.0f')} | "
                  f"{ltlib.fmt_us(r.get('p50_us'))} | {ltlib.fmt_us(r.get('p90_us'))} | "
                  f"{ltlib.fmt_us(r.get('p99_us'))} | {ltlib.fmt_us(r.get('p999_us'))} | "
                  f"{ltlib.fmt_us(r.get('max_us'))} | {ltlib.fmt_us(r.get('p99_sent_us'))} | "
                  f"{ltlib.fmt_us(r.get('lag_p99_us'))} | {ltlib.fmt(r.get('cpu_us_per_req'), '.1f')} | "
                  f"{ltlib.fmt(r.get('gen_us_per_req'), '.1f')} | {ltlib.fmt(r.get('core1_busy_pct'), '.0f')} % | "
                  f"{r.get('audit_lines', '')} | {'; '.join(r.get('flags') or [])} |")
    md.append("\n</details>\n")
    md.append("If a run is flagged \"rate not reached\", the generator or the target fell behind the "
              "schedule; with latency correction that shows as latency, so compare such runs with "
              "care. The generator runs on the same core as the upstream: its own CPU per request is listed.\n")
    md.append(f"portcullis: {data.get('portcullis_binary')}; drivers: "
              + "; ".join(f"{k}: {' / '.join(v)}" for k, v in (data.get("portcullis_driver") or {}).items())
              + f". {data['versions']['nginx']}; {data['versions']['haproxy']}; {data['versions']['wrk']}. "
              f"{data.get('quiet', '')}. Took {data['elapsed_s']:.0f} s.\n")
    return "\n".join(md)


def main():
    args = parser().parse_args()
    ltlib.KEEP_TMP = args.keep_tmp
    scenlib.standalone_setup()
    res = run(args)
    print(res["md"])
    scenlib.write_outputs(args, res)


if __name__ == "__main__":
    main()
