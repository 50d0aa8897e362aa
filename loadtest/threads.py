#!/usr/bin/env python3
"""CPU per request by thread (issue 15): portcullis's full MCP path (cached
JWT, 100-rule policy) with its audit log to a file and without, driven by wrk
with keep-alive `POST /mcp` of 1 KiB, in alternating rounds; for each run,
every thread's time on a CPU (its schedstat, ns), context switches (voluntary
and not) and minor page faults, per request.

`loadtest/run` reports what the audit log adds as the difference of two
runs' CPU per request, which moves by as much as the figure between two 10 s
runs on a shared machine. Here the audit writer's own thread, and any other
thread that works only because an audit log is configured, show by name in
the same run. The worker's part of the audit (formatting, the arguments'
HMAC) is in `portcullis-w0` and shows only as the difference of the two
targets' worker figures.

Layout as loadtest/run: portcullis on core 0 (all its threads), wrk and the
upstream nginx on core 1. Standalone:
`loadtest/threads.py [-d SECONDS] [-r ROUNDS] [--bin PATH]`."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ltlib  # noqa: E402
import scenlib  # noqa: E402
from ltlib import PROXY_CORE, Target, log  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--duration", type=int, default=5)
    ap.add_argument("-r", "--rounds", type=int, default=4)
    ap.add_argument("--bin", help="this portcullis binary instead of building one")
    ap.add_argument("--port-base", type=int, default=19600)
    args = ap.parse_args()
    pbin = args.bin or ltlib.ensure_portcullis()
    scope = scenlib.Scope("threads", keep_tmp=False)
    tmp, base = scope.tmp, args.port_base
    rows = []
    try:
        upstream = scenlib.start_nginx_upstream(scope, base)
        body = ltlib.write(os.path.join(tmp, "mcp-body.json"), ltlib.mcp_call_body())
        targets = []
        for i, name in enumerate(["mcp", "mcp-noaudit"], start=1):
            port, sub = base + i, os.path.join(tmp, name)
            os.makedirs(sub)
            conf, spec = ltlib.full_path_target(sub, port, base, body, audit=name == "mcp")
            cmd = [pbin, "run", "-c", ltlib.write(os.path.join(sub, "portcullis.yaml"), conf)]
            p = scope.spawn(["taskset", "-c", PROXY_CORE] + cmd, f"{name}.log")
            if not ltlib.wait_port(port, p):
                raise SystemExit(f"{name} did not start (see {tmp}/{name}.log)")
            t = Target(name, port, name, p)
            t.refresh_pids()
            targets.append((t, spec))
        for t, spec in targets:
            ltlib.run_wrk(tmp, t, "post", 2, upstream, "warm-up", spec=spec)
        for rnd in range(1, args.rounds + 1):
            for t, spec in targets:
                before = ltlib.thread_stats(t.proc.pid)
                r = ltlib.run_wrk(tmp, t, "post", args.duration, upstream, f"round {rnd}",
                                  spec=spec)
                after = ltlib.thread_stats(t.proc.pid)
                n = r["requests"]
                if not n:
                    raise SystemExit(f"{t.name}: no requests answered in round {rnd}")
                parts = []
                for tid, (name, ns, switches, minflt) in sorted(after.items()):
                    if tid not in before:
                        continue
                    _, ns0, sw0, flt0 = before[tid]
                    if ns - ns0 > 0:
                        parts.append(f"{name} {(ns - ns0) / 1e3 / n:.2f} µs, "
                                     f"{(switches - sw0) / n:.3f} cs, {(minflt - flt0) / n:.3f} flt")
                flags = "; ".join(r["flags"])
                rows.append(f"| {rnd} | {t.name} | {r['rps']:,.0f} | {r['cpu_us_per_req']:.2f} | "
                            f"{'<br>'.join(parts)} | {flags} |")
                log(f"r{rnd} {t.name}: {r['cpu_us_per_req']:.2f} µs/req")
    finally:
        scope.close()
    print("\n| round | target | req/s | CPU µs/req (all threads) | per thread, per request: "
          "CPU, context switches, minor faults | machine check |\n|---:|---|---:|---:|---|---|")
    print("\n".join(rows))
    print(f"\n(portcullis {pbin} on core {PROXY_CORE}; wrk -t1 -c{ltlib.CONNECTIONS} keep-alive "
          f"`POST /mcp` 1 KiB, {args.duration} s a run; threads with no CPU time are left out)")


if __name__ == "__main__":
    main()
