#!/usr/bin/env python3
"""Scenario 6, SSE: many concurrent long-lived event streams (default 1k and
10k) through each proxy, with one event per stream every --interval-ms from an
upstream that stamps each event with its send time. Reports events/s, the
latency of an event (receive time − send time) direct and through each proxy
(p50/p99, and what the proxy adds), the proxy's CPU per event, and errors.
Goal (PERFORMANCE.md): 10k SSE streams held without error.

The stream is MCP's: `GET /mcp` with `Accept: text/event-stream` on a route
with `mcp: {}` (portcullis relays the upstream's chunked `text/event-stream`
read by read, re-framed, flushed; no policy here, so no list filtering).
Upstream and client are the `ltconn` helper (loadtest/ltconn.rs, a cargo
example, built when missing; monoio/epoll, one thread each) on core 1, the
proxy alone on core 0 with one worker.
Standalone: `loadtest/sse.py --help`. From loadtest/run:
`sse.run(args_or_dict_or_kwargs)` -> {"md", "data", "goals"}.
Python 3 standard library only."""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ltlib  # noqa: E402
import scenlib  # noqa: E402
from ltlib import LOAD_CORE, PROXY_CORE, Target, log  # noqa: E402
from scenlib import Helper, Scope  # noqa: E402

TARGETS = ("direct", "portcullis", "nginx", "haproxy")


def parser():
    ap = argparse.ArgumentParser(
        description="many concurrent SSE streams through portcullis / nginx / haproxy / direct: "
                    "events/s, per-event latency, proxy CPU per event, errors (loadtest/sse.py)")
    scenlib.common_args(ap, duration=10, port_base=19140)
    ap.add_argument("--streams", default="1000,10000",
                    help="stream counts (default 1000,10000)")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help="default direct,portcullis,nginx,haproxy")
    ap.add_argument("--interval-ms", type=int, default=1000,
                    help="event period per stream (default 1000: N streams = N events/s)")
    ap.add_argument("--pad", type=int, default=100, help="padding bytes per event (default 100)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="seconds after all streams are open before measuring (default 3)")
    ap.add_argument("--ramp-batch", type=int, default=200,
                    help="connects in flight at a time while opening (default 200)")
    ap.add_argument("--over-limit", action="store_true",
                    help="try the full stream count even when a proxy's RLIMIT_NOFILE cannot hold "
                         "2 fds per stream (to see how it fails)")
    return ap


def conf_portcullis(port, up_port, driver):
    return ltlib.portcullis_conf(port, up_port, driver) + "limits: { max_connections: 30000 }\n"


def fd_room(t, per_stream):
    if t.proc is None:
        return None, None
    lim = None
    for pid in t.refresh_pids():
        lim = scenlib.nofile_limit(pid)
        if lim:
            break
    if not lim:
        return None, None
    used = max(scenlib.fd_count([p]) for p in t.pids)
    room = max(0, (lim[0] - used - 200) // per_stream)
    if getattr(t, "maxconn", None):
        room = min(room, t.maxconn - 16)  # haproxy: client connections beyond maxconn wait unaccepted
    return room, lim[0]


def one_run(scope, helper_bin, t, upstream, n, args):
    """Open n streams through t, warm up, measure; CPU of proxy/upstream/client
    over the measurement window."""
    h = Helper(scope, ["taskset", "-c", LOAD_CORE, helper_bin, "sse-client",
                       f"127.0.0.1:{t.port}", "/mcp", str(n), str(args.ramp_batch),
                       str(args.warmup), str(args.duration)],
               f"client-{t.name}-{n}.log")
    ready = h.wait_line("READY", timeout=60 + n / 50)
    if ready is None:
        h.stop()
        return {"n": n, "error": f"client gave no READY ({h.stderr_tail()})", "alive": t.alive()}
    time.sleep(args.warmup)
    pids, up_pids, cl_pids = t.refresh_pids(), upstream.refresh_pids(), ltlib.descendants(h.p.pid)
    sampler = ltlib.CoreSampler().start()
    clocks = [ltlib.CpuClock(p) for p in (pids, up_pids, cl_pids)]
    t0 = time.monotonic()
    res = h.wait_line("RESULT", timeout=args.duration + 30)
    wall = time.monotonic() - t0
    proxy_cpu, up_cpu, client_cpu = (c.seconds() for c in clocks)
    sampler.stop()
    h.stop()
    out = {"n": n, "ready": ready, "result": res or {}, "wall_s": wall,
           "proxy_cpu_s": proxy_cpu if pids else None,
           "upstream_cpu_s": up_cpu, "client_cpu_s": client_cpu,
           "cores": sampler.summary(), "alive": t.alive()}
    if res is None:
        out["error"] = f"client gave no RESULT ({h.stderr_tail()})"
        return out
    ev = res.get("events") or 0
    out["events_per_s"] = ev / res["window_s"] if res.get("window_s") else None
    out["proxy_us_per_event"] = 1e6 * out["proxy_cpu_s"] / ev if (ev and pids) else None
    out["upstream_us_per_event"] = 1e6 * out["upstream_cpu_s"] / ev if ev else None
    out["client_us_per_event"] = 1e6 * out["client_cpu_s"] / ev if ev else None
    flags = []
    for cpu, s in out["cores"].items():
        if s["steal_pct"] > ltlib.STEAL_MEAN_PCT or s["steal_peak_pct"] > ltlib.STEAL_PEAK_PCT:
            flags.append(f"steal {cpu} {s['steal_pct']:.1f}% (peak {s['steal_peak_pct']:.0f}%)")
    c0s = out["cores"].get(f"cpu{PROXY_CORE}")
    if c0s and pids:
        foreign = 100.0 * max(c0s["busy_ticks"] - proxy_cpu * ltlib.CLK_TCK, 0) / (c0s["total_ticks"] or 1)
        if foreign > ltlib.FOREIGN_CORE0_PCT:
            flags.append(f"foreign load on core {PROXY_CORE} {foreign:.0f}%")
    out["flags"] = flags
    return out


def errors_of(r):
    if "error" in r:
        return r["error"]
    rd, res = r.get("ready") or {}, r.get("result") or {}
    bad = {k: rd[k] for k in ("connect_err", "bad_status", "io_err") if rd.get(k)}
    if rd.get("opened", 0) < r["n"]:
        bad["not_opened"] = r["n"] - rd.get("opened", 0)
    for k in ("ended_in_window", "eof"):
        if res.get(k):
            bad[k] = res[k]
    if not r.get("alive", True):
        bad["proxy_exited"] = True
    s = "; ".join(f"{k} {v}" for k, v in bad.items())
    if s and res.get("first_error"):
        s += f" (first: {res['first_error']})"
    return s


def run(args=None, **kw):
    args = scenlib.resolve_args(parser(), args, **kw)
    counts = [int(x) for x in args.streams.split(",") if x]
    names = [x for x in args.targets.split(",") if x]
    data = {"runs": [], "errors": [], "nofile": scenlib.raise_nofile(),
            "interval_ms": args.interval_ms, "pad": args.pad}
    base = args.port_base
    ports = {"upstream": base, "portcullis": base + 1, "nginx": base + 2, "haproxy": base + 3}
    scenlib.check_ports(ports.values())
    helper_bin = scenlib.ensure_helper("ltconn")
    if args.quiet_wait:
        data["quiet"] = ltlib.wait_quiet(args.quiet_wait)
    t_start = time.monotonic()
    maxn = max(counts)
    with Scope("sse", args.keep_tmp) as scope:
        src, pbin = scenlib.portcullis_bin(scope)
        data["portcullis_binary"] = ltlib.binary_info(src, pbin)
        data["versions"] = {"nginx": ltlib.sh([ltlib.find_bin("nginx"), "-v"]).stderr.strip(),
                            "haproxy": ltlib.sh([ltlib.find_bin("haproxy"), "-v"]).stdout.splitlines()[0]}
        up_proc = scope.spawn(["taskset", "-c", LOAD_CORE, helper_bin, "sse-upstream",
                               f"127.0.0.1:{ports['upstream']}", str(args.interval_ms),
                               str(args.pad)], "sse-upstream.log")
        upstream = Target("upstream", ports["upstream"], "upstream", up_proc)
        if not ltlib.wait_port(ports["upstream"], up_proc):
            raise SystemExit("sse upstream did not start")
        targets = []
        for name in names:
            if name == "direct":
                targets.append(Target("direct", ports["upstream"], "direct"))
            elif name == "portcullis":
                targets.append(scenlib.start_portcullis(scope, pbin, "portcullis", ports[name],
                                                        conf_portcullis(ports[name], ports["upstream"],
                                                                        args.driver)))
            elif name == "nginx":
                targets.append(scenlib.start_nginx_proxy(scope, ports[name], ports["upstream"],
                                                         conns=2 * maxn + 200, sse=True))
            elif name == "haproxy":
                targets.append(scenlib.start_haproxy(scope, ports[name], ports["upstream"],
                                                     conns=maxn + 200, sse=True))
        scenlib.wait_started(targets)
        for t in targets:
            if t.kind == "portcullis":
                data["portcullis_driver"] = scenlib.driver_lines(t)
            t.conf_text = t.conf
        # Warm-up: 50 streams for 1 s through each target.
        for t in targets:
            w = one_run(scope, helper_bin, t, upstream, 50,
                        argparse.Namespace(**{**vars(args), "warmup": 1, "duration": 1}))
            if errors_of(w):
                data["errors"].append(f"warm-up {t.name}: {errors_of(w)}")
        for n in counts:
            for t in targets:
                if not t.alive():
                    data["errors"].append(f"{t.name} not running before n={n}: {t.log_tail(10)}")
                    continue
                if t.proc is not None:
                    scenlib.wait_fds_below(t, 200)
                room, lim = fd_room(t, 2)
                run_n = n if (room is None or n <= room or args.over_limit) else room
                if args.quiet_wait:
                    ltlib.wait_core_quiet(5)
                r = one_run(scope, helper_bin, t, upstream, run_n, args)
                r.update({"target": t.name, "requested": n, "capped": run_n < n,
                          "nofile": lim, "fd_room": room})
                data["runs"].append(r)
                lat = (r.get("result") or {}).get("latency") or {}
                log(f"sse {t.name:10} n={run_n:5} (asked {n}) events/s "
                    f"{ltlib.fmt(r.get('events_per_s'), '.0f')} p50 {lat.get('p50_us')} µs p99 "
                    f"{lat.get('p99_us')} µs cpu/event {ltlib.fmt(r.get('proxy_us_per_event'), '.1f')} µs "
                    f"errors: {errors_of(r) or 'none'}")
                if not t.alive():
                    data["errors"].append(f"{t.name} exited during n={run_n}: {t.log_tail(10)}")
        data["configs"] = {t.name: t.conf for t in targets if t.conf}
    data["elapsed_s"] = time.monotonic() - t_start
    goals = goals_of(data, counts)
    return {"md": report(data, goals, args, counts), "data": data, "goals": goals}


def find(data, target, n):
    for r in data["runs"]:
        if r["target"] == target and r["requested"] == n:
            return r
    return None


def goals_of(data, counts):
    want = max(counts)
    r = find(data, "portcullis", want)
    if r is None:
        return [{"goal": f"portcullis holds {want} SSE streams without error", "value": None,
                 "ok": None}]
    held = (r.get("result") or {}).get("open_at_window_end")
    if r["capped"]:
        ok = None
    else:
        ok = held == want and not errors_of(r)
    return [{"goal": f"portcullis holds {want} SSE streams without error (streams held)",
             "value": held, "ok": ok}]


def report(data, goals, args, counts):
    md = ["## SSE: many concurrent event streams (scenario 6)\n"]
    md.append(f"Each stream: `GET /mcp`, `Accept: text/event-stream`, answered `200` chunked "
              f"`text/event-stream` by `ltconn sse-upstream`, which sends every stream one event "
              f"each {args.interval_ms} ms: a JSON-RPC `notifications/progress` carrying its send time "
              f"(`\"t\"`, CLOCK_REALTIME ns, one clock for all processes here) and {args.pad} bytes of "
              f"padding. The client (`ltconn sse-client`) opens the streams {args.ramp_batch} connects "
              f"at a time, waits {args.warmup} s, then counts for {args.duration} s every event it "
              "receives and its latency (receive time − send time). Both helpers: loadtest/ltconn.rs "
              f"(monoio, epoll, one thread) on core {LOAD_CORE}; the proxy alone on core {PROXY_CORE} "
              "(one worker). Proxy CPU: time on a CPU of its processes' threads (schedstat, ns) over the measuring window. "
              "portcullis: route with `mcp: {}` (no auth/policy: no list filtering), "
              "`limits.max_connections: 30000`; nginx: `proxy_buffering off`; haproxy: `mode http`, `option http-no-delay` (without it haproxy holds each small chunk back ~200 ms).\n")
    md.append(scenlib.goals_md(goals) + "\n")
    if data["errors"]:
        md.append("**Errors:** " + "; ".join(data["errors"]) + "\n")
    md.append("| streams asked | target | streams run | opened | held at end | events/s | "
              "latency p50 | p99 | p99.9 | added p50 | added p99 | proxy CPU µs/event | "
              "upstream µs/event | client µs/event | errors | flags |")
    md.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for n in counts:
        d = find(data, "direct", n)
        dl = ((d or {}).get("result") or {}).get("latency") or {}
        for r in [x for x in data["runs"] if x["requested"] == n]:
            res = r.get("result") or {}
            lat = res.get("latency") or {}

            def added(k):
                if r["target"] == "direct" or lat.get(k) is None or dl.get(k) is None:
                    return "–"
                return f"{lat[k] - dl[k]:+.0f} µs"

            def us(v):
                return "–" if v is None else ltlib.fmt_us(v)
            md.append(f"| {n} | {r['target']} | {r['n']} | {(r.get('ready') or {}).get('opened', '–')} | "
                      f"{res.get('open_at_window_end', '–')} | {ltlib.fmt(r.get('events_per_s'), ',.0f')} | "
                      f"{us(lat.get('p50_us'))} | {us(lat.get('p99_us'))} | {us(lat.get('p999_us'))} | "
                      f"{added('p50_us')} | {added('p99_us')} | "
                      f"{ltlib.fmt(r.get('proxy_us_per_event'), '.1f')} | "
                      f"{ltlib.fmt(r.get('upstream_us_per_event'), '.1f')} | "
                      f"{ltlib.fmt(r.get('client_us_per_event'), '.1f')} | "
                      f"{errors_of(r) or 'none'} | {'; '.join(r.get('flags') or []) or ''} |")
    md.append("")
    md.append("\"added\" = the proxy's percentile minus direct's in the same run (the client and the "
              "upstream share core 1, so direct's latency includes their own scheduling). Ramp times: "
              + ", ".join(f"{r['target']}@{r['n']} {(r.get('ready') or {}).get('ramp_s', '–')} s"
                          for r in data["runs"]) + ".\n")
    capped = [r for r in data["runs"] if r.get("capped")]
    if capped:
        md.append("Some runs used fewer streams than asked: a proxy relaying N streams holds 2N "
                  "sockets (client + upstream) and this machine's hard `RLIMIT_NOFILE` is "
                  f"{data['nofile'][1]} (it cannot be raised here: no CAP_SYS_RESOURCE), so one proxy "
                  "process can hold at most about half that many streams: "
                  + "; ".join(f"{r['target']} {r['n']} of {r['requested']}" for r in capped)
                  + ". The 10k goal is not measurable on this machine; `--over-limit` tries the full "
                  "count anyway to show how each proxy fails.\n")
    md.append(f"portcullis: {data.get('portcullis_binary')}; driver: "
              f"{'; '.join(data.get('portcullis_driver') or []) or '?'}. {data['versions']['nginx']}; "
              f"{data['versions']['haproxy']}. RLIMIT_NOFILE: {data['nofile'][0]} (hard "
              f"{data['nofile'][1]}). {data.get('quiet', '')}. Took {data['elapsed_s']:.0f} s.\n")
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
