"""Common parts of the scenario scripts (openloop.py, sse.py, memory.py):
arguments, a scope that starts processes and always stops them, the ltconn
helper (built when missing), proxies configured for many connections, and
memory/fd figures from /proc. Python 3 standard library only; everything
else comes from ltlib."""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ltlib  # noqa: E402
from ltlib import (HERE, REPO, LOAD_CORE, PROXY_CORE, STARTED, Target, log,  # noqa: E402
                   spawn, stop_proc, wait_port, write, find_bin)


def common_args(ap, duration, port_base):
    ap.add_argument("-d", "--duration", type=int, default=duration,
                    help=f"seconds per measured run (default {duration})")
    ap.add_argument("--port-base", type=int,
                    default=int(os.environ.get("LOADTEST_PORT_BASE", port_base)),
                    help=f"first port used (default {port_base}); the script uses the next ~10")
    ap.add_argument("--quiet-wait", type=int, default=30,
                    help="wait up to this many seconds for idle cores first (default 30; 0 = don't)")
    ap.add_argument("--driver", default=os.environ.get("PORTCULLIS_DRIVER", "io_uring"),
                    help="portcullis runtime driver: io_uring | epoll (default io_uring)")
    ap.add_argument("--out-json", help="write the result (data and goals) as JSON here")
    ap.add_argument("--out-md", help="write the markdown section here")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    return ap


def resolve_args(parser, args=None, **kw):
    """run() accepts an argparse Namespace, a dict, or keyword arguments;
    anything missing takes the parser's default."""
    ns = parser.parse_args([])
    if isinstance(args, argparse.Namespace):
        vars(ns).update(vars(args))
    elif isinstance(args, dict):
        vars(ns).update(args)
    vars(ns).update(kw)
    return ns


class Scope:
    """Processes started inside it are stopped when it ends (by pid, process
    group = pid); a temp dir of its own. Works standalone and when called from
    loadtest/run (which keeps its own STARTED list and atexit cleanup)."""

    def __init__(self, name, keep_tmp=False):
        self.name, self.keep_tmp = name, keep_tmp
        self.mark = len(STARTED)
        self.tmp = tempfile.mkdtemp(prefix=f"portcullis-{name}-")
        os.chmod(self.tmp, 0o755)
        self.procs = []

    def spawn(self, cmd, logname, **kw):
        p = spawn(cmd, os.path.join(self.tmp, logname), **kw)
        self.procs.append(p)
        return p

    def stop(self, p):
        stop_proc(p)
        if p in STARTED:
            STARTED.remove(p)

    def close(self):
        for p in reversed(self.procs):
            self.stop(p)
        self.procs = []
        if self.keep_tmp:
            log(f"kept temp dir {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def standalone_setup():
    """For a script run on its own: cleanup on exit and signals, pinned to
    the load core (the proxy's core stays free)."""
    import atexit
    atexit.register(ltlib.cleanup)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, ltlib.on_signal)
    raise_nofile()
    try:
        os.sched_setaffinity(0, {int(LOAD_CORE)})
    except OSError:
        pass


def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by everything we
    spawn). Returns (soft, hard)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def portcullis_bin(scope):
    src = ltlib.ensure_portcullis()
    os.makedirs(os.path.join(scope.tmp, "bin"), exist_ok=True)
    dst = os.path.join(scope.tmp, "bin", "portcullis")
    shutil.copy2(src, dst)
    return src, dst


def ensure_helper(name="ltconn"):
    """The cargo example `name` of loadtest/ (ltlib.cargo_build)."""
    return ltlib.cargo_build(name)


def check_ports(ports):
    busy = [p for p in ports if not ltlib.port_free(p)]
    if busy:
        raise SystemExit(f"ports in use: {busy} (choose --port-base)")


# ----------------------------------------------------------------------------
# proxies, configured for many connections (nginx worker_connections and
# haproxy maxconn raised; every proxy inherits our RLIMIT_NOFILE)

def many_conns_nginx(conf, conns):
    conf = conf.replace("events { worker_connections 4096; }",
                        f"worker_rlimit_nofile {nofile_hard()};\n"
                        f"events {{ worker_connections {conns}; }}")
    return conf


def nofile_hard():
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def start_nginx_upstream(scope, port, conns=4096):
    prefix = os.path.join(scope.tmp, "upstream")
    os.makedirs(prefix, exist_ok=True)
    conf = many_conns_nginx(ltlib.upstream_conf(prefix, port), conns)
    path = write(os.path.join(prefix, "nginx.conf"), conf)
    p = scope.spawn(["taskset", "-c", LOAD_CORE, find_bin("nginx"), "-p", prefix, "-c", path,
                     "-e", os.path.join(prefix, "error.log")], "upstream.log")
    t = Target("upstream", port, "upstream", p, conf, path, os.path.join(prefix, "error.log"))
    if not wait_port(port, p):
        raise SystemExit("upstream nginx did not start:\n" + t.log_tail())
    return t


def start_nginx_proxy(scope, port, up_port, conns=4096, sse=False):
    prefix = os.path.join(scope.tmp, "nginx-proxy")
    os.makedirs(prefix, exist_ok=True)
    conf = many_conns_nginx(ltlib.nginx_proxy_conf(prefix, port, up_port), conns)
    if sse:
        # Event streams: no response buffering, long reads.
        conf = conf.replace('proxy_set_header Connection "";',
                            'proxy_set_header Connection "";\n'
                            '            proxy_buffering off;\n'
                            '            proxy_read_timeout 300s;')
    path = write(os.path.join(prefix, "nginx.conf"), conf)
    p = scope.spawn(["taskset", "-c", PROXY_CORE, find_bin("nginx"), "-p", prefix, "-c", path,
                     "-e", os.path.join(prefix, "error.log")], "nginx.log")
    t = Target("nginx", port, "nginx", p, conf, path, os.path.join(prefix, "error.log"))
    return t


def start_haproxy(scope, port, up_port, conns=4096, sse=False):
    """haproxy refuses to start unless its RLIMIT_NOFILE holds 2 fds per
    `maxconn` (maxsock = 2 × maxconn + ~14): maxconn is capped to what our hard
    limit allows (Target.maxconn says how many client connections it takes)."""
    maxconn = min(conns, (nofile_hard() - 64) // 2)
    conf = ltlib.haproxy_conf(port, up_port).replace("maxconn 4096", f"maxconn {maxconn}")
    if sse:
        # Without it haproxy holds small chunks back (MSG_MORE): ~200 ms per event.
        conf = conf.replace("    http-reuse always\n", "    http-reuse always\n    option http-no-delay\n")
    path = write(os.path.join(scope.tmp, "haproxy.cfg"), conf)
    p = scope.spawn(["taskset", "-c", PROXY_CORE, find_bin("haproxy"), "-db", "-f", path],
                    "haproxy.log")
    t = Target("haproxy", port, "haproxy", p, conf, path, os.path.join(scope.tmp, "haproxy.log"))
    t.maxconn = maxconn
    return t


def start_portcullis(scope, pbin, name, port, conf):
    path = write(os.path.join(scope.tmp, f"{name}.yaml"), conf)
    lf = os.path.join(scope.tmp, f"{name}.log")
    p = scope.spawn(["taskset", "-c", PROXY_CORE, pbin, "run", "-c", path], f"{name}.log",
                    env=dict(os.environ, NO_COLOR="1",
                             PORTCULLIS_LOG=os.environ.get("PORTCULLIS_LOG", "info")))
    t = Target(name, port, "portcullis", p, conf, path, lf)
    t.bin = pbin
    return t


def wait_started(targets):
    for t in targets:
        if t.proc is not None and not wait_port(t.port, t.proc):
            raise SystemExit(f"{t.name} did not start:\n{t.log_tail()}")
    time.sleep(0.3)
    for t in targets:
        t.refresh_pids()


def driver_lines(t):
    return [ln.strip() for ln in ltlib.ANSI_RE.sub("", t.log_tail(60)).splitlines()
            if "worker started" in ln or "ring options" in ln or "falling back" in ln
            or "not available" in ln]


# ----------------------------------------------------------------------------
# memory and fds from /proc

def mem_figures(pids):
    """Sum over pids: VmRSS (status), Rss/Pss/Private_* (smaps_rollup), in KiB."""
    tot = {"vmrss_kib": 0, "rss_kib": 0, "pss_kib": 0, "private_kib": 0, "procs": 0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        tot["vmrss_kib"] += int(line.split()[1])
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    k, _, rest = line.partition(":")
                    v = rest.split()
                    if not v or not v[0].isdigit():
                        continue
                    if k == "Rss":
                        tot["rss_kib"] += int(v[0])
                    elif k == "Pss":
                        tot["pss_kib"] += int(v[0])
                    elif k in ("Private_Clean", "Private_Dirty"):
                        tot["private_kib"] += int(v[0])
            tot["procs"] += 1
        except (OSError, ValueError):
            pass
    return tot


def wait_fds_below(t, limit, timeout=8.0):
    """Wait (up to timeout s) until the target's processes hold fewer than
    `limit` fds (connections of a previous step closing)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if fd_count(t.refresh_pids()) < limit:
            return True
        time.sleep(0.2)
    return False


def fd_count(pids):
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


def nofile_limit(pid):
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    parts = line.split()
                    return int(parts[3]), int(parts[4])
    except (OSError, ValueError, IndexError):
        pass
    return None


# ----------------------------------------------------------------------------
# the ltconn helper as a child: READY / RESULT lines

class Helper:
    def __init__(self, scope, cmd, logname, stdin_pipe=False):
        self.logf = os.path.join(scope.tmp, logname)
        self.errf = open(self.logf + ".err", "ab")
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.errf,
                                  stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                                  start_new_session=True, text=True)
        STARTED.append(self.p)
        scope.procs.append(self.p)
        self.scope = scope

    def wait_line(self, prefix, timeout):
        """Next stdout line starting with prefix, parsed as JSON (None on timeout/exit)."""
        import select
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r, _, _ = select.select([self.p.stdout], [], [], max(0.0, min(1.0, end - time.monotonic())))
            if not r:
                if self.p.poll() is not None:
                    return None
                continue
            line = self.p.stdout.readline()
            if not line:
                return None
            with open(self.logf, "a") as f:
                f.write(line)
            if line.startswith(prefix + " "):
                return json.loads(line[len(prefix) + 1:])
        return None

    def send(self, text):
        try:
            self.p.stdin.write(text)
            self.p.stdin.flush()
        except (BrokenPipeError, OSError, AttributeError):
            pass

    def stop(self):
        self.scope.stop(self.p)
        self.errf.close()

    def stderr_tail(self, n=5):
        try:
            with open(self.logf + ".err", errors="replace") as f:
                return "".join(f.readlines()[-n:]).strip()
        except OSError:
            return ""


def write_outputs(args, result):
    if getattr(args, "out_json", None):
        with open(args.out_json, "w") as f:
            json.dump(result, f, indent=1, default=str)
        log(f"wrote {args.out_json}")
    if getattr(args, "out_md", None):
        with open(args.out_md, "w") as f:
            f.write(result["md"])
        log(f"wrote {args.out_md}")


def goal_mark(ok):
    return "✅" if ok else ("❌" if ok is False else "–")


def goals_md(goals):
    lines = ["| goal | value | met |", "|---|---:|:---:|"]
    for g in goals:
        v = g["value"]
        txt = "–" if v is None else (str(v) if isinstance(v, int) else format(v, ".3g"))
        lines.append(f"| {g['goal']} | {txt} | {goal_mark(g['ok'])} |")
    return "\n".join(lines)
