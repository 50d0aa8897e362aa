#!/usr/bin/env python3
"""User-space instructions per request (issue 15): portcullis run under
valgrind's callgrind while wrk drives keep-alive `POST /mcp` of 1 KiB at it,
on the plain route and on the full MCP path (cached JWT, 100-rule policy,
audit to a file); a fixed-response nginx upstream.

CPU time per request on a shared machine moves by ±10 % from one run to the
next; the instructions portcullis executes per request do not (the same
binary gives the same count to within 0.5 %). So a change to the request path
is measured here first, and its CPU time then confirmed with paired load
runs. Counts are of portcullis's own process (its threads, libc and the
runtime included), not of the kernel's work: for those, `loadtest/ops.py`.

Callgrind slows portcullis about fifty times, so the counts hold for a warm
path at a low rate: the warm-up's requests are not counted (the counters are
zeroed after it), the measured ones are divided by wrk's own request count.

`mcp-noaudit` is the full path without its audit log: the two counts'
difference is what the audit record costs the worker and the writer thread in
user space (the writer's `write` calls are kernel work, not counted).
`mcp-screen` is the full path with content screening (`screen: {}`, as the
load test's portcullis-mcp-screen): its difference to `mcp` is the screen's.

Standalone: `loadtest/instructions.py [-d SECONDS] [--targets plain,mcp,mcp-noaudit,mcp-screen]
[--top N] [--bin PATH]`."""

import argparse
import collections
import glob
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ltlib  # noqa: E402
import scenlib  # noqa: E402
from ltlib import PROXY_CORE, Target, WrkSpec, log  # noqa: E402


def self_costs(path):
    """{function: self Ir} from a callgrind output file (compressed names)."""
    names, cur, skip = {}, None, False
    costs = collections.Counter()
    with open(path) as f:
        for line in f:
            m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
            if m:
                if m[3]:
                    names[m[2]] = m[3]
                if m[1] == "fn":
                    cur = names.get(m[2], m[2])
                continue
            if line.startswith("calls="):
                skip = True  # the next cost line is the call's, not this function's
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    costs[cur] += int(parts[1])
    return costs


def callgrind(cmd, out_prefix):
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_prefix}.%p"] + cmd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--duration", type=int, default=4)
    ap.add_argument("--targets", default="plain,mcp")
    ap.add_argument("--top", type=int, default=15, help="functions listed per target")
    ap.add_argument("--bin", help="this portcullis binary instead of building one")
    ap.add_argument("--port-base", type=int, default=19400)
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp dir with the callgrind dumps (for callgrind_annotate)")
    args = ap.parse_args()
    if not ltlib.find_bin("valgrind"):
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    pbin = args.bin or ltlib.ensure_portcullis()
    scope = scenlib.Scope("instructions", keep_tmp=args.keep)
    tmp, base = scope.tmp, args.port_base
    results = []
    try:
        upstream = scenlib.start_nginx_upstream(scope, base)
        body = ltlib.write(os.path.join(tmp, "mcp-body.json"), ltlib.mcp_call_body())
        for i, name in enumerate(args.targets.split(","), start=1):
            port = base + i
            if name == "plain":
                conf = ltlib.portcullis_plain_conf(port, base)
                spec = WrkSpec("post.lua")
            elif name in ("mcp", "mcp-noaudit", "mcp-screen"):
                conf, spec = ltlib.full_path_target(tmp, port, base, body,
                                                    audit=name != "mcp-noaudit",
                                                    screen="{}" if name == "mcp-screen" else None)
            else:
                raise SystemExit(f"unknown target {name} (plain, mcp, mcp-noaudit or mcp-screen)")
            out_prefix = os.path.join(tmp, f"callgrind.{name}")
            cmd = [pbin, "run", "-c", ltlib.write(os.path.join(tmp, f"{name}.yaml"), conf)]
            p = scope.spawn(["taskset", "-c", PROXY_CORE] + callgrind(cmd, out_prefix),
                            f"{name}.log")
            if not ltlib.wait_port(port, p, timeout=60):
                raise SystemExit(f"{name} did not start under valgrind (see {tmp}/{name}.log)")
            t = Target(name, port, name, p)
            t.refresh_pids()
            log(f"{name}: warm-up, then {args.duration} s counted")
            ltlib.run_wrk(tmp, t, "post", 2, upstream, "warm-up", spec=spec)
            subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            r = ltlib.run_wrk(tmp, t, "post", args.duration, upstream, "counted", spec=spec)
            subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            scope.stop(p)
            dumps = sorted(glob.glob(f"{out_prefix}.*.1"))
            if not dumps or not r["requests"]:
                raise SystemExit(f"{name}: no dump or no requests counted")
            costs = self_costs(dumps[-1])
            results.append((name, r["requests"], costs))
    finally:
        scope.close()
    for name, n, costs in results:
        total = sum(costs.values())
        print(f"\n## {name}: {total / n:,.0f} instructions per request "
              f"({n} requests, {total:,} instructions)\n")
        print("| instructions/req | share | function (self) |\n|---:|---:|---|")
        for fn, c in costs.most_common(args.top):
            print(f"| {c / n:,.0f} | {100 * c / total:.1f} % | `{(fn or '?')[:110]}` |")
    print(f"\n(portcullis {pbin} under callgrind on core {PROXY_CORE}; wrk -t1 -c32 keep-alive "
          "`POST /mcp` 1 KiB; the kernel's work is not counted)")


if __name__ == "__main__":
    main()
