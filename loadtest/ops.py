#!/usr/bin/env python3
"""Kernel operations per request (issue 15): what each target asks of the
kernel for one keep-alive `POST /mcp` of 1 KiB, counted with perf's
tracepoints while wrk drives it: io_uring requests submitted and completed,
internal poll arms (a read or write that found its socket not ready),
task-work runs, and system calls (io_uring_enter and everything else).

Targets: the bare relay (loadtest/relay.rs, the physical limit), portcullis
plain on io_uring and on epoll, and portcullis's full MCP path (cached JWT,
100-rule policy, audit to a file); a fixed-response nginx upstream. Counts,
not times: they do not move with the machine's load, so this runs anywhere
(perf needs tracepoint access: root or perf_event_paranoid ≤ -1).

Layout as loadtest/run: the target on core 0, wrk and the upstream on core 1.
Standalone: `loadtest/ops.py [-d SECONDS] [--targets relay,plain,epoll,mcp]`."""

import argparse
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ltlib  # noqa: E402
import scenlib  # noqa: E402
from ltlib import PROXY_CORE, Target, WrkSpec, log  # noqa: E402

EVENTS = {
    "io_uring:io_uring_submit_req": "submitted",
    "io_uring:io_uring_complete": "completed",
    "io_uring:io_uring_poll_arm": "poll arms",
    "io_uring:io_uring_task_work_run": "task-work runs",
    "syscalls:sys_enter_io_uring_enter": "io_uring_enter",
    "raw_syscalls:sys_enter": "syscalls (all)",
}


def count(pid, duration, run):
    """perf stat on pid (all threads) while run() drives load; {event: count}."""
    cmd = ["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", str(pid), "--",
           "sleep", str(duration + 1)]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    r = run()
    _, err = p.communicate(timeout=duration + 30)
    out = {}
    for line in err.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[2] in EVENTS:
            out[f[2]] = int(f[0]) if f[0].isdigit() else None
    return r, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--duration", type=int, default=5)
    ap.add_argument("--targets", default="relay,plain,epoll,mcp")
    ap.add_argument("--port-base", type=int, default=19380)
    args = ap.parse_args()
    wanted = args.targets.split(",")
    pbin = ltlib.ensure_portcullis()
    scope = scenlib.Scope("ops")
    tmp, base = scope.tmp, args.port_base
    try:
        upstream = scenlib.start_nginx_upstream(scope, base)
        body = ltlib.write(os.path.join(tmp, "mcp-body.json"), ltlib.mcp_call_body())
        specs = {}
        targets = []
        for i, name in enumerate(wanted, start=1):
            port = base + i
            if name == "relay":
                cmd = [ltlib.ensure_relay(), f"127.0.0.1:{port}", f"127.0.0.1:{base}"]
                spec = WrkSpec("post.lua")
            elif name in ("plain", "epoll"):
                conf = ltlib.portcullis_plain_conf(port, base, "epoll" if name == "epoll" else "io_uring")
                cmd = [pbin, "run", "-c", ltlib.write(os.path.join(tmp, f"{name}.yaml"), conf)]
                spec = WrkSpec("post.lua")
            elif name == "mcp":
                conf, spec = ltlib.full_path_target(tmp, port, base, body)
                cmd = [pbin, "run", "-c", ltlib.write(os.path.join(tmp, "mcp.yaml"), conf)]
            else:
                raise SystemExit(f"unknown target {name}")
            p = scope.spawn(["taskset", "-c", PROXY_CORE] + cmd, f"{name}.log")
            if not ltlib.wait_port(port, p):
                raise SystemExit(f"{name} did not start")
            t = Target(name, port, name, p)
            targets.append(t)
            specs[name] = spec
        rows = []
        for t in targets:
            t.refresh_pids()
            ltlib.run_wrk(tmp, t, "post", 1, upstream, "warm-up", spec=specs[t.name])
            r, counts = count(t.proc.pid, args.duration,
                              lambda: ltlib.run_wrk(tmp, t, "post", args.duration, upstream,
                                                    "ops", spec=specs[t.name]))
            n = r["requests"] or 1
            rows.append((t.name, r["requests"], r.get("cpu_us_per_req"),
                         {e: (c / n if c is not None else None) for e, c in counts.items()}))
            log(f"{t.name}: {r['requests']} requests")
    finally:
        scope.close()
    head = "| target | requests | CPU µs/req | " + " | ".join(EVENTS.values()) + " |"
    print(head)
    print("|" + "---|" * (3 + len(EVENTS)))
    for name, reqs, cpu, per in rows:
        cells = [f"{per.get(e):.2f}" if per.get(e) is not None else "–" for e in EVENTS]
        print(f"| {name} | {reqs} | {cpu:.2f} | " + " | ".join(cells) + " |")
    print("\n(per request; wrk -t1 -c32 keep-alive, `POST /mcp` 1 KiB; counted with perf stat "
          "tracepoints on the target's process)")


if __name__ == "__main__":
    main()
