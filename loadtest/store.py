#!/usr/bin/env python3
"""Scale-out's data-plane cost (issue 13): portcullis's MCP path with a token
of its own authorization server (cached per core), once against the embedded
store (SQLite) and once against PostgreSQL with three instances on the host
sharing the database (the measured one and two more, each with its change
watcher and its 250 ms tick). The data plane never reads the store, so the
CPU per request should not move: reports each variant's CPU/req (median of
rounds, measured one after the other in each round), their ratio, and the
upstream nginx's own req/s when hit directly (the machine's yardstick).

Layout: the measured proxies on core 0 (one worker each), wrk, the upstream
nginx, PostgreSQL (a private cluster from tests/pg-cluster) and the two extra
instances on core 1. Tokens: the OAuth flow run against each measured
instance (dynamic registration, development login, consent, code + PKCE).
Standalone: `loadtest/store.py --help`. Python 3 standard library only."""

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ltlib  # noqa: E402
import scenlib  # noqa: E402
from ltlib import LOAD_CORE, Target, log  # noqa: E402
from scenlib import Scope  # noqa: E402

SECRET = "6c" * 32


def parser():
    ap = argparse.ArgumentParser(
        description="portcullis's data plane with the embedded store vs PostgreSQL and three "
                    "instances: CPU per request on cached tokens (loadtest/store.py)")
    scenlib.common_args(ap, duration=8, port_base=19180)
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    return ap


def conf(port, up_port, store, driver, admin=None):
    admin_line = f"admin: {{ address: 127.0.0.1:{admin} }}\n" if admin else ""
    return f"""workers: 1
runtime: {{ driver: {driver}, ring_entries: 1024, coop_taskrun: true, single_issuer: true, defer_taskrun: true }}
upstream: {{ pool_max_idle: {ltlib.POOL_IDLE} }}
listen:
  - address: 127.0.0.1:{port}
{admin_line}authorization_server:
  issuer: http://127.0.0.1:{port}
  secret: "{SECRET}"
  login: {{ dev_users: [{{ sub: user-0042 }}] }}
  clients: {{ dynamic_registration: true }}
store: {store}
routes:
  - name: mcp
    from: http://127.0.0.1:{port}{ltlib.MCP_PATH}
    to: http://127.0.0.1:{up_port}{ltlib.MCP_PATH}
    mcp: {{}}
    auth: {{ issuers: [portcullis] }}
"""


class Browser:
    """Just enough of a browser for the development login and consent."""

    def __init__(self, port):
        self.port, self.jar = port, {}

    def go(self, method, target, form=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        headers = {}
        if self.jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["Origin"] = f"http://127.0.0.1:{self.port}"
        c.request(method, target, body=body, headers=headers)
        r = c.getresponse()
        text = r.read().decode(errors="replace")
        for k, v in r.getheaders():
            if k.lower() == "set-cookie":
                name, value = v.split(";")[0].split("=", 1)
                if "Max-Age=0" in v:
                    self.jar.pop(name, None)
                else:
                    self.jar[name] = value
        c.close()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), text


def token_for(port):
    """An access token of the instance on `port` for its MCP route."""
    origin = f"http://127.0.0.1:{port}"
    redirect = "http://127.0.0.1:9/cb"
    status, text, _ = ltlib.http_request(
        port, "POST", "/register",
        json.dumps({"redirect_uris": [redirect], "token_endpoint_auth_method": "none",
                    "grant_types": ["authorization_code"]}),
        {"Content-Type": "application/json"})
    assert status == 201, text
    client_id = json.loads(text)["client_id"]
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    q = urllib.parse.urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect, "state": "s",
        "code_challenge": challenge, "code_challenge_method": "S256",
        "resource": f"{origin}{ltlib.MCP_PATH}"})
    b = Browser(port)
    status, headers, text = b.go("GET", f"/authorize?{q}")
    for _ in range(10):
        if status == 302 and headers["location"].startswith(redirect):
            break
        if status == 302:
            status, headers, text = b.go("GET", headers["location"].replace(origin, ""))
            continue
        hidden = lambda name: re.search(rf'name="{name}" value="([^"]+)"', text).group(1)  # noqa: E731
        if 'name="user"' in text:
            status, headers, text = b.go("POST", "/.portcullis/login",
                                         {"tx": hidden("tx"), "csrf": hidden("csrf"), "user": "user-0042"})
        else:
            status, headers, text = b.go("POST", "/.portcullis/consent",
                                         {"tx": hidden("tx"), "csrf": hidden("csrf"), "decision": "allow"})
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(headers["location"]).query)["code"][0]
    status, text, _ = ltlib.http_request(
        port, "POST", "/token",
        urllib.parse.urlencode({"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
                                "code_verifier": verifier, "client_id": client_id,
                                "resource": f"{origin}{ltlib.MCP_PATH}"}),
        {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, text
    return json.loads(text)["access_token"]


def pin_cluster(pgdir):
    """PostgreSQL's processes on the load core (the proxy's core stays ours)."""
    with open(os.path.join(pgdir, "data", "postmaster.pid")) as f:
        master = int(f.readline())
    for pid in [master] + ltlib.descendants(master):
        try:
            os.sched_setaffinity(pid, {int(LOAD_CORE)})
        except OSError:
            pass


def run(args=None, **kw):
    args = scenlib.resolve_args(parser(), args, **kw)
    base = args.port_base
    up_port, sq_port, pg_port, extra = base, base + 1, base + 2, (base + 3, base + 4)
    scenlib.check_ports([up_port, sq_port, pg_port, *extra])
    with Scope("store", args.keep_tmp) as scope:
        _, pbin = scenlib.portcullis_bin(scope)
        upstream = scenlib.start_nginx_upstream(scope, up_port)
        pgdir = os.path.join(scope.tmp, "pg")
        out = subprocess.run([os.path.join(ltlib.REPO, "tests", "pg-cluster"), "start", pgdir],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise SystemExit("PostgreSQL did not start:\n" + out.stderr)
        url = re.search(r"PORTCULLIS_TEST_POSTGRES=(\S+)", out.stdout).group(1)
        try:
            pin_cluster(pgdir)
            pg_store = f'{{ postgres: {{ url: "{url}" }} }}'
            sq = scenlib.start_portcullis(scope, pbin, "portcullis-sqlite", sq_port,
                                          conf(sq_port, up_port, f"{{ path: {scope.tmp}/state.db }}", args.driver))
            pg = scenlib.start_portcullis(scope, pbin, "portcullis-postgres", pg_port,
                                          conf(pg_port, up_port, pg_store, args.driver))
            scenlib.wait_started([sq, pg])
            # Two more instances on the same database, on the load core.
            for i, port in enumerate(extra):
                path = ltlib.write(os.path.join(scope.tmp, f"extra-{i}.yaml"),
                                   conf(port, up_port, pg_store, args.driver))
                p = scope.spawn(["taskset", "-c", LOAD_CORE, pbin, "run", "-c", path], f"extra-{i}.log",
                                env=dict(os.environ, NO_COLOR="1"))
                if not ltlib.wait_port(port, p):
                    raise SystemExit(f"instance {port} did not start")
            body = ltlib.write(os.path.join(scope.tmp, "mcp-body.json"), ltlib.mcp_call_body())
            specs = {}
            for t in (sq, pg):
                tok = token_for(t.port)
                status, text, _ = ltlib.http_request(t.port, "POST", ltlib.MCP_PATH, open(body).read(),
                                                     ltlib.mcp_headers(tok))
                if status != 200 or text != ltlib.UPSTREAM_BODY:
                    raise SystemExit(f"{t.name} preflight: {status} {text[:200]}")
                path = ltlib.write(os.path.join(scope.tmp, f"{t.name}.tokens"), tok + "\n")
                specs[t.name] = ltlib.mcp_wrk_spec(body, path)
            direct = Target("direct", up_port, "direct")
            if args.quiet_wait:
                ltlib.wait_quiet(args.quiet_wait)
            rows = {"portcullis-sqlite": [], "portcullis-postgres": [], "direct": []}
            for r in range(args.rounds):
                order = (sq, pg) if r % 2 == 0 else (pg, sq)
                for t in order:
                    rows[t.name].append(ltlib.run_wrk(scope.tmp, t, "mcp", args.duration, upstream,
                                                      f"round {r + 1}", specs[t.name]))
                rows["direct"].append(ltlib.run_wrk(scope.tmp, direct, "post", args.duration, upstream,
                                                    f"round {r + 1}"))
                log(f"round {r + 1}: " + ", ".join(
                    f"{n} {rows[n][-1]['rps']:.0f} req/s"
                    + (f" {rows[n][-1]['cpu_us_per_req']:.2f} µs/req" if rows[n][-1]["cpu_us_per_req"] else "")
                    for n in rows))
        finally:
            subprocess.run([os.path.join(ltlib.REPO, "tests", "pg-cluster"), "stop", pgdir],
                           capture_output=True, timeout=120)
    return report(args, rows)


def report(args, rows):
    machine = ltlib.machine_info()
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    cpu = {n: med([r["cpu_us_per_req"] for r in rows[n] if r["cpu_us_per_req"]]) for n in rows}
    rps = {n: med([r["rps"] for r in rows[n]]) for n in rows}
    ratios = [p["cpu_us_per_req"] / s["cpu_us_per_req"]
              for s, p in zip(rows["portcullis-sqlite"], rows["portcullis-postgres"])
              if s["cpu_us_per_req"] and p["cpu_us_per_req"]]
    ratio = med(ratios)
    errors = sum(r["errors"] + r["non2xx"] for n in rows for r in rows[n])
    flags = sorted({f for n in rows for r in rows[n] for f in r["flags"]})
    md = [
        "## Scale-out: the data plane with the embedded store vs PostgreSQL (three instances)",
        "",
        f"Machine: {machine['cpu']}, {machine['nproc']} CPUs, kernel {machine['kernel']}; the upstream "
        f"nginx hit directly: {rps['direct']:.0f} req/s (median of {args.rounds}).",
        "",
        f"`loadtest/store.py --rounds {args.rounds} -d {args.duration}`: a 1 KiB `tools/call` with a cached "
        "portcullis token, one worker on core 0; wrk, the upstream, PostgreSQL and two more instances on core 1.",
        "",
        "| variant | req/s | CPU µs/req |",
        "|---|---:|---:|",
        f"| embedded store (SQLite) | {rps['portcullis-sqlite']:.0f} | {cpu['portcullis-sqlite']:.2f} |",
        f"| PostgreSQL, three instances | {rps['portcullis-postgres']:.0f} | {cpu['portcullis-postgres']:.2f} |",
        "",
        f"CPU per request, PostgreSQL / embedded (median of per-round ratios): **{ratio:.3f}×** "
        f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)}). Errors: {errors}."
        + (f" Flags: {'; '.join(flags)}." if flags else ""),
        "",
    ]
    return {"md": "\n".join(md), "data": {"rows": rows, "ratio": ratio, "machine": machine},
            "goals": [("data-plane CPU/req with PostgreSQL vs embedded", "≈ 1.0×", f"{ratio:.3f}×",
                       ratio is not None and ratio <= 1.05)]}


def main():
    scenlib.standalone_setup()
    args = parser().parse_args()
    result = run(args)
    print(result["md"])
    scenlib.write_outputs(args, result)


if __name__ == "__main__":
    main()
