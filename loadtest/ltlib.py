"""Shared parts of the load tests (loadtest/run and the scenario scripts):
process bookkeeping, /proc CPU accounting, the per-core machine check,
nginx/haproxy/portcullis configs, wrk runs and report formatting.
Python 3 standard library only."""

import argparse
import atexit
import datetime
import http.client
import json
import os
import platform
import resource
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")

PROXY_CORE = "0"
LOAD_CORE = "1"
CONNECTIONS = 32
POOL_IDLE = 64  # upstream keep-alive pool size, the same for every proxy

# ~200-byte JSON-RPC result returned by the upstream for every request.
UPSTREAM_BODY = (
    '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":'
    '"ok: fixed response of the loadtest upstream, padded to about two hundred '
    'bytes of JSON-RPC result ........"}],"isError":false}}'
)

# Flag thresholds (per run, over the whole run).
STEAL_MEAN_PCT = 5.0     # mean steal on either core
STEAL_PEAK_PCT = 20.0    # any single second
FOREIGN_CORE0_PCT = 15.0  # core 0 busy time not accounted to the proxy

# ----------------------------------------------------------------------------
# process bookkeeping and cleanup (the "trap")

STARTED = []  # Popen objects, each in its own session/process group
TMPDIR = None
KEEP_TMP = False


def log(msg):
    print(f"[loadtest {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stop_proc(p, grace=5.0):
    """SIGTERM the process group of a process we started (pgid == its pid),
    wait, then SIGKILL that group."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # nginx workers may outlive a killed master: the group still names them.
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass


def cleanup():
    global TMPDIR
    while STARTED:
        stop_proc(STARTED.pop())
    if TMPDIR and os.path.isdir(TMPDIR):
        if KEEP_TMP:
            log(f"kept temp dir {TMPDIR}")
        else:
            shutil.rmtree(TMPDIR, ignore_errors=True)
    TMPDIR = None


def on_signal(signum, _frame):
    log(f"signal {signum}: cleaning up")
    sys.exit(128 + signum)


def spawn(cmd, logfile, **kw):
    out = open(logfile, "ab")
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True, **kw)
    out.close()
    STARTED.append(p)
    return p


# ----------------------------------------------------------------------------
# /proc helpers

def proc_stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()  # fields from 3 (state) on


def descendants(root):
    """root and all its descendants (by ppid), from a /proc scan."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(proc_stat_fields(d)[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_ticks(pids):
    """utime+stime (clock ticks) summed over pids (all threads of each)."""
    total = 0
    for pid in pids:
        try:
            f = proc_stat_fields(pid)
            total += int(f[11]) + int(f[12])
        except (OSError, ValueError, IndexError):
            pass
    return total


def thread_stats(pid):
    """{tid: (name, ns on a CPU, context switches, minor faults)} for every
    thread of pid (its comm, schedstat's first field, status's voluntary and
    involuntary switches, stat's minflt); a thread that ends meanwhile is left
    out."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/comm") as f:
                name = f.read().strip()
            with open(f"{base}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"{base}/status") as f:
                st = dict(ln.split(":\t", 1) for ln in f if ":\t" in ln)
            with open(f"{base}/stat") as f:
                minflt = int(f.read().rsplit(")", 1)[1].split()[7])
            switches = int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])
        except (OSError, ValueError, IndexError, KeyError):
            continue
        out[tid] = (name, ns, switches, minflt)
    return out


def _task_ns(pid):
    """{tid: ns on a CPU} for every thread of pid."""
    return {tid: s[1] for tid, s in thread_stats(pid).items()}


class CpuClock:
    """CPU time the processes pids (all their threads) use from now on.

    utime+stime count in clock ticks (10 ms): a proxy relaying 1,000 SSE
    events a second for 10 s uses ~20 ticks, so one tick moves its CPU per
    event by 5 %. Each thread's schedstat counts the same time in ns. A
    process one of whose threads ended in between is counted in ticks (an
    ended thread's time is gone from the task list, not from utime+stime); a
    thread that both started and ended in between is missed (the proxies
    measured here start none while they serve)."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.ticks = {pid: cpu_ticks([pid]) for pid in self.pids}
        self.ns = {pid: _task_ns(pid) for pid in self.pids}

    def seconds(self):
        total = 0.0
        for pid in self.pids:
            before, now = self.ns[pid], _task_ns(pid)
            if before and all(tid in now for tid in before):
                total += sum(ns - before.get(tid, 0) for tid, ns in now.items()) / 1e9
            else:
                total += (cpu_ticks([pid]) - self.ticks[pid]) / CLK_TCK
        return total


def read_cpus():
    """{cpuN: (busy, idle, steal, total)} in ticks, from /proc/stat."""
    res = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            parts = line.split()
            v = [int(x) for x in parts[1:]] + [0] * 10
            user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
            busy = user + nice + system + irq + softirq
            res[parts[0]] = (busy, idle + iowait, steal, busy + idle + iowait + steal)
    return res


class CoreSampler:
    """Samples per-core /proc/stat every second during a run (vmstat 1
    equivalent, per core) to compute steal, idle and peak steal."""

    def __init__(self):
        self.samples = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while True:
            self.samples.append((time.monotonic(), read_cpus()))
            if self._stop.wait(1.0):
                break

    def start(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join()
        self.samples.append((time.monotonic(), read_cpus()))

    def summary(self):
        first, last = self.samples[0][1], self.samples[-1][1]
        out = {}
        for cpu in (f"cpu{PROXY_CORE}", f"cpu{LOAD_CORE}"):
            if cpu not in first:
                continue
            d = [b - a for a, b in zip(first[cpu], last[cpu])]
            tot = d[3] or 1
            peak = 0.0
            for (_, a), (_, b) in zip(self.samples, self.samples[1:]):
                dd = [y - x for x, y in zip(a[cpu], b[cpu])]
                if dd[3] > 0:
                    peak = max(peak, 100.0 * dd[2] / dd[3])
            out[cpu] = {
                "busy_ticks": d[0],
                "busy_pct": 100.0 * d[0] / tot,
                "idle_pct": 100.0 * d[1] / tot,
                "steal_pct": 100.0 * d[2] / tot,
                "steal_peak_pct": peak,
                "total_ticks": d[3],
            }
        return out


def wait_quiet(max_wait, busy_limit=15.0):
    """Wait until both cores were < busy_limit % busy over one second (other
    sessions' builds share this machine). Returns a description for the report."""
    t0 = time.monotonic()
    last = None
    while True:
        a = read_cpus()
        time.sleep(1.0)
        b = read_cpus()
        busy = {c: 100.0 * (b[c][0] - a[c][0]) / max(b[c][3] - a[c][3], 1) for c in b}
        last = ", ".join(f"{c} {v:.0f}%" for c, v in sorted(busy.items()))
        waited = time.monotonic() - t0
        if max(busy.values()) < busy_limit:
            return f"machine quiet after {waited:.0f} s (busy: {last})"
        if waited >= max_wait:
            log(f"machine still busy after {waited:.0f} s ({last}); going ahead, runs will be flagged")
            return f"machine NOT quiet after waiting {waited:.0f} s (busy: {last})"
        if int(waited) % 10 in (0, 1):
            log(f"waiting for a quiet machine ({last})")


def wait_core_quiet(max_wait, busy_limit=15.0):
    """Before a measured run: wait up to max_wait s until both cores were
    < busy_limit % busy over half a second (nothing of ours runs between runs)."""
    t0 = time.monotonic()
    while True:
        a = read_cpus()
        time.sleep(0.5)
        b = read_cpus()
        busy = [100.0 * (b[c][0] - a[c][0]) / max(b[c][3] - a[c][3], 1) for c in b]
        if max(busy) < busy_limit or time.monotonic() - t0 >= max_wait:
            return time.monotonic() - t0


# ----------------------------------------------------------------------------
# setup

def sh(cmd, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True,
                          text=True, **kw)


def ensure_tools(need_perf):
    missing = [p for p, b in (("nginx", "nginx"), ("haproxy", "haproxy"),
                              ("wrk", "wrk"))
               if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")]
    if need_perf and shutil.which("perf") is None:
        missing.append("linux-perf")
    if not missing:
        return
    log(f"installing {' '.join(missing)} via apt")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    pre = [] if os.geteuid() == 0 else ["sudo", "-E"]
    subprocess.run(pre + ["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(pre + ["apt-get", "install", "-y", "-qq", "--no-install-recommends"]
                   + missing, env=env, check=True)
    # Debian's packages may start system services; we use our own instances.


def find_bin(name):
    p = shutil.which(name)
    if p:
        return p
    for d in ("/usr/sbin", "/usr/local/sbin"):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    raise SystemExit(f"{name} not found")


def ensure_portcullis():
    b = os.environ.get("PORTCULLIS_BIN")
    if b:
        if not os.access(b, os.X_OK):
            raise SystemExit(f"PORTCULLIS_BIN={b} is not executable")
        return os.path.abspath(b)
    return cargo_build("portcullis")


def port_free(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_port(port, proc, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def nginx_common(prefix):
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
"""


def nginx_temp_paths(prefix):
    return "\n".join(
        f"    {k}_temp_path {prefix}/{k};" for k in
        ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")) + "\n"


def upstream_conf(prefix, port):
    return nginx_common(prefix) + f"""http {{
    access_log off;
{nginx_temp_paths(prefix)}    default_type application/json;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            return 200 '{UPSTREAM_BODY}';
        }}
    }}
}}
"""


def nginx_proxy_conf(prefix, port, up_port):
    return nginx_common(prefix) + f"""http {{
    access_log off;
{nginx_temp_paths(prefix)}    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream up {{
        server 127.0.0.1:{up_port};
        keepalive {POOL_IDLE};
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def haproxy_conf(port, up_port):
    return f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    server up 127.0.0.1:{up_port} pool-max-conn {POOL_IDLE}
"""


def portcullis_conf(port, up_port, driver):
    return f"""workers: 1
runtime: {{ driver: {driver}, ring_entries: 1024, coop_taskrun: true, single_issuer: true, defer_taskrun: true }}
upstream: {{ pool_max_idle: {POOL_IDLE} }}
listen:
  - address: 127.0.0.1:{port}
routes:
  - name: bench
    from: http://127.0.0.1:{port}/
    to: http://127.0.0.1:{up_port}/
    mcp: {{}}
"""


class Target:
    def __init__(self, name, port, kind, proc=None, conf=None, conf_path=None, logfile=None):
        self.name, self.port, self.kind = name, port, kind
        self.proc, self.conf, self.conf_path, self.logfile = proc, conf, conf_path, logfile
        self.pids = []
        self.crashes = []
        self.scheme = "http"      # "https" for a TLS listener (wrk and preflight use it)
        self.span_both = False    # True when the proxy runs on both cores (scaling, 2 workers)
        self.bin = None

    def refresh_pids(self):
        if self.proc is not None and self.proc.poll() is None:
            self.pids = descendants(self.proc.pid)
        else:
            self.pids = []
        return self.pids

    def alive(self):
        return self.proc is None or self.proc.poll() is None

    def log_tail(self, n=30):
        if not self.logfile or not os.path.exists(self.logfile):
            return ""
        with open(self.logfile, errors="replace") as f:
            return "".join(f.readlines()[-n:])


def http_request(port, method, path, body=None, headers=None, tls=False, timeout=5):
    """One request with http.client (Host header = 127.0.0.1:port); with tls, over
    HTTPS without certificate verification (our self-signed test certificate).
    Returns (status, body text, response headers as a dict with lower-case names)."""
    if tls:
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read().decode(errors="replace")
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        if tls:
            hdrs[":tls-version"] = c.sock.version() if c.sock else "?"
        return r.status, data, hdrs
    finally:
        c.close()


def check_http(port, method, path, body, headers, expect_body, tls=False):
    """One request; ok when it returns 200 with exactly expect_body."""
    try:
        status, data, _ = http_request(port, method, path, body, headers, tls)
        ok = status == 200 and data == expect_body
        return ok, f"{status} {data[:120]!r}"
    except Exception as e:  # noqa: BLE001
        return False, repr(e)


def post_body():
    head = ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search",'
            '"arguments":{"query":"')
    tail = '"}}}'
    return head + "x" * (1024 - len(head) - len(tail)) + tail


def preflight(t):
    res = []
    for method, path, body, hdr in (
            ("GET", "/", None, {}),
            ("POST", "/mcp", post_body(),
             {"Content-Type": "application/json",
              "Accept": "application/json, text/event-stream"})):
        ok, info = check_http(t.port, method, path, body, hdr, UPSTREAM_BODY,
                              tls=getattr(t, "scheme", "http") == "https")
        res.append((method, ok, info))
    return res


# ----------------------------------------------------------------------------
# one wrk run

ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


class WrkSpec:
    """What wrk sends: a lua script (in loadtest/), environment for it (mcp.lua reads
    LT_BODY / LT_TOKENS / LT_DYNAMIC), extra -H headers (e.g. "Connection: close")."""

    def __init__(self, script, env=None, headers=(), describe=""):
        self.script = script if os.path.isabs(script) else os.path.join(HERE, script)
        self.env = dict(env or {})
        self.headers = list(headers)
        self.describe = describe

    def cmd_text(self, duration, url="<scheme>://127.0.0.1:<port>/"):
        env = " ".join(f"{k}={os.path.basename(v) if k in ('LT_BODY', 'LT_TOKENS') else v}"
                       if k != "LT_OFFSET" else "LT_OFFSET=<where the last run stopped>"
                       for k, v in sorted(self.env.items()))
        hdr = " ".join(f"-H '{h}'" for h in self.headers)
        return (f"{env + ' ' if env else ''}taskset -c {LOAD_CORE} wrk -t1 -c{CONNECTIONS} "
                f"-d{duration}s --latency --timeout 5s {hdr + ' ' if hdr else ''}"
                f"-s loadtest/{os.path.basename(self.script)} {url}")


def run_wrk(tmp, target, workload, duration, upstream, tag, spec=None):
    """One wrk run against target. workload names get.lua/post.lua unless spec
    (a WrkSpec) says what to send."""
    script = spec.script if spec else os.path.join(HERE, f"{workload}.lua")
    url = f"{getattr(target, 'scheme', 'http')}://127.0.0.1:{target.port}/"
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{CONNECTIONS}",
           f"-d{duration}s", "--latency", "--timeout", "5s"]
    for h in (spec.headers if spec else ()):
        cmd += ["-H", h]
    cmd += ["-s", script, url]
    env = dict(os.environ, **spec.env) if spec else None
    pids = target.refresh_pids()
    up_pids = upstream.refresh_pids()
    sampler = CoreSampler().start()
    c0, u0 = cpu_ticks(pids), cpu_ticks(up_pids)
    proxy_clock, up_clock = CpuClock(pids), CpuClock(up_pids)
    ru0, rs0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                             timeout=duration + 30).stdout
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += "\n[wrk timed out]\n"
    wall = time.monotonic() - t0
    c1, u1 = cpu_ticks(pids), cpu_ticks(up_pids)
    proxy_cpu, up_cpu = proxy_clock.seconds(), up_clock.seconds()
    ru1, rs1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    sampler.stop()
    wrk_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    self_cpu = (rs1.ru_utime + rs1.ru_stime) - (rs0.ru_utime + rs0.ru_stime)
    cores = sampler.summary()
    with open(os.path.join(tmp, "wrk.log"), "a") as f:
        f.write(f"==== {tag} {target.name} {workload} ====\n{' '.join(cmd)}\n{out}\n")
    m = re.search(r"^LOADTEST (\{.*\})$", out, re.M)
    r = json.loads(m.group(1)) if m else {"requests": 0, "duration_us": int(wall * 1e6)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    r["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    r["wrk_output_ok"] = bool(m)
    r["target"], r["workload"], r["tag"] = target.name, workload, tag
    secs = r["duration_us"] / 1e6 if r.get("duration_us") else wall
    r["rps"] = r["requests"] / secs if secs > 0 else 0.0
    r["proxy_cpu_s"] = proxy_cpu
    r["upstream_cpu_s"] = up_cpu
    r["cpu_us_per_req"] = (1e6 * r["proxy_cpu_s"] / r["requests"]) if (r["requests"] and pids) else None
    r["upstream_us_per_req"] = (1e6 * r["upstream_cpu_s"] / r["requests"]) if r["requests"] else None
    r["cores"] = cores
    r["errors"] = sum(r.get(k, 0) for k in ("err_connect", "err_read", "err_write", "err_timeout"))
    # machine check
    flags = []
    for cpu, s in cores.items():
        if s["steal_pct"] > STEAL_MEAN_PCT or s["steal_peak_pct"] > STEAL_PEAK_PCT:
            flags.append(f"steal {cpu} {s['steal_pct']:.1f}% (peak {s['steal_peak_pct']:.0f}%)")
    c0s = cores.get(f"cpu{PROXY_CORE}")
    c1s = cores.get(f"cpu{LOAD_CORE}")
    if getattr(target, "span_both", False) and c0s and c1s:
        # The proxy runs on both cores: only the sum of both cores can be accounted.
        mine = (wrk_cpu + self_cpu) * CLK_TCK + (u1 - u0) + (c1 - c0)
        foreign = c0s["busy_ticks"] + c1s["busy_ticks"] - mine
        tot = (c0s["total_ticks"] + c1s["total_ticks"]) or 1
        r["core0_foreign_pct"] = r["core1_foreign_pct"] = 100.0 * max(foreign, 0) / tot
        if r["core0_foreign_pct"] > FOREIGN_CORE0_PCT / 2:
            flags.append(f"foreign load on cores {PROXY_CORE}+{LOAD_CORE} "
                         f"{r['core0_foreign_pct']:.0f}% of both")
        c0s = c1s = None
    if c0s:
        foreign = c0s["busy_ticks"] - (c1 - c0)
        r["core0_foreign_pct"] = 100.0 * max(foreign, 0) / (c0s["total_ticks"] or 1)
        # direct leaves core 0 unused: load there does not touch its figures.
        if r["core0_foreign_pct"] > FOREIGN_CORE0_PCT and target.kind != "direct":
            flags.append(f"foreign load on core {PROXY_CORE} {r['core0_foreign_pct']:.0f}%")
    if c1s:
        mine = (wrk_cpu + self_cpu) * CLK_TCK + (u1 - u0)
        foreign = c1s["busy_ticks"] - mine
        r["core1_foreign_pct"] = 100.0 * max(foreign, 0) / (c1s["total_ticks"] or 1)
        if r["core1_foreign_pct"] > FOREIGN_CORE0_PCT:
            flags.append(f"foreign load on core {LOAD_CORE} {r['core1_foreign_pct']:.0f}%")
    r["wrk_cpu_s"] = wrk_cpu
    r["flags"] = flags
    r["alive_after"] = target.alive()
    return r


# ----------------------------------------------------------------------------
# report helpers

def fmt_us(v):
    if v is None:
        return "–"
    if v >= 10000:
        return f"{v / 1000:.1f} ms"
    if v >= 1000:
        return f"{v / 1000:.2f} ms"
    return f"{v:.0f} µs"


def fmt(v, spec=".2f"):
    return "–" if v is None else format(v, spec)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def binary_info(src, copy):
    import hashlib
    h = hashlib.sha256()
    with open(copy, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    mtime = datetime.datetime.fromtimestamp(os.stat(src).st_mtime).strftime("%Y-%m-%d %H:%M:%S")
    ver = sh([copy, "--version"]).stdout.strip()
    g = sh(["git", "-C", REPO, "log", "-1", "--format=%h %s"]).stdout.strip()
    dirty = sh(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    label = os.environ.get("PORTCULLIS_LABEL")
    inside = os.path.abspath(src).startswith(os.path.abspath(REPO) + os.sep)
    where = (f"label: {label}" if label else
             f"work tree at {g or '?'}{' (with uncommitted changes)' if dirty else ''}" if inside else
             "binary from outside this work tree: its commit is not known here "
             "(set PORTCULLIS_LABEL)")
    return f"{ver}; binary {src} built {mtime}, sha256 {h.hexdigest()[:16]}; {where}"


def tool_versions(bin_info):
    v = {}
    v["nginx"] = sh([find_bin("nginx"), "-v"]).stderr.strip()
    v["haproxy"] = sh([find_bin("haproxy"), "-v"]).stdout.splitlines()[0].strip()
    w = sh(["wrk", "-v"])
    v["wrk"] = (w.stdout + w.stderr).splitlines()[0].strip()
    v["portcullis"] = bin_info
    return v


def machine_info():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    iod = "n/a"
    if os.path.exists("/proc/sys/kernel/io_uring_disabled"):
        iod = open("/proc/sys/kernel/io_uring_disabled").read().strip()
    osr = "?"
    if os.path.exists("/etc/os-release"):
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                osr = line.split("=", 1)[1].strip().strip('"')
    return {
        "nproc": str(len(os.sched_getaffinity(0))) + f" (online: {os.cpu_count()})",
        "kernel": platform.release(),
        "cpu": cpu,
        "memory": mem,
        "os": osr,
        "ulimit -l": sh("ulimit -l").stdout.strip(),
        "kernel.io_uring_disabled": iod,
    }


# ----------------------------------------------------------------------------
# The full MCP path: issuer key, JWKS, tokens, a 100-rule policy, the request,
# portcullis configs with auth / policy / audit / TLS, TLS certificates and the
# TLS configs of nginx and haproxy. Used by loadtest/run (scenarios mcp, tls,
# newconn, scaling) and by the other scenario scripts.
#
#   iss = make_issuer(tmp)                        # keygen: tmp/issuer/{issuer.p8,jwks.json}
#   tok = mint_tokens(iss, 1, tmp + "/one.txt")   # one valid token per line
#   rules, allow_rule = mcp_policy_rules()        # 100 rules; allow_rule is rule 90, not the first
#   conf = portcullis_mcp_conf(port, up_port, iss, audit_path=tmp + "/audit.jsonl")
#   body = write(tmp + "/mcp-body.json", mcp_call_body())
#   spec = mcp_wrk_spec(body, tok)                # WrkSpec for loadtest/mcp.lua
#   ctl = mint_tokens(iss, 1, tmp + "/ctl.txt", claims=LT_CONTROL_CLAIMS)
#   pre = mcp_preflight(port, first_token(tok), AuditCounter(path), allow_rule,
#                       control_token=first_token(ctl))   # 200 / 401 / denials / audit

LT_ISSUER = "https://idp.loadtest.example"
LT_ISSUER_NAME = "loadtest-idp"
# Every MCP route of the load tests accepts this audience (issuer `audiences`), so the
# same tokens work on every port and scheme.
LT_AUDIENCE = "https://mcp.loadtest.example/mcp"
# The principal of the load-test tokens.
LT_CLAIMS = {
    "iss": LT_ISSUER,
    "aud": LT_AUDIENCE,
    "sub": "user-0042",
    "email": "dev42@example.com",
    "groups": ["engineering", "team-payments"],
    "scope": "mcp repo:read",
    "client_id": "loadtest-cli",
    "account": {"status": "active"},
}
# The same principal without the team-payments group: rule 90 no longer applies and no
# other rule allows the call (a negative control that the call is allowed by rule 90).
LT_CONTROL_CLAIMS = dict(LT_CLAIMS, sub="user-0043", email="dev43@example.com",
                         groups=["engineering", "team-mobile"])
MCP_TOOL = "search_issues"            # allowed (by rule 90 of 100)
MCP_DENIED_TOOL = "delete_repository"  # denied (by the no-deletes guardrail)
MCP_PATH = "/mcp"
# Where the load test's cargo examples (loadtest/*.rs) are built.
HELPERS_TARGET = os.environ.get("LOADTEST_HELPERS_TARGET", os.path.join(REPO, "target"))
if not os.path.isdir(os.path.dirname(HELPERS_TARGET)):
    HELPERS_TARGET = os.path.join(REPO, "target")
_BUILT = {}


def cargo_build(name):
    """Path of the release binary `name`: portcullis itself (target/), or a cargo example
    of loadtest/ (into $LOADTEST_HELPERS_TARGET, default target/). cargo runs once per
    process for each, every time: it rebuilds only what changed (a few minutes the first
    time), so a binary older than its source is never run and reported under the
    source's commit."""
    if name not in _BUILT:
        cmd = ["cargo", "build", "--release"]
        if name == "portcullis":
            env, out = None, os.path.join(REPO, "target", "release", "portcullis")
        else:
            cmd += ["--example", name]
            env = dict(os.environ, CARGO_TARGET_DIR=HELPERS_TARGET)
            out = os.path.join(HELPERS_TARGET, "release", "examples", name)
        log(f"{name}: built if out of date ({' '.join(cmd)})")
        subprocess.run(cmd, cwd=REPO, env=env, check=True)
        _BUILT[name] = out
    return _BUILT[name]


def ensure_mint_tokens():
    """The mint_tokens helper (loadtest/mint_tokens.rs)."""
    return cargo_build("mint_tokens")


def ensure_relay():
    """The bare io_uring relay (loadtest/relay.rs)."""
    return cargo_build("relay")


def make_issuer(tmp):
    """A fresh ES256 (P-256) issuer key in tmp/issuer: issuer.p8 (private, PKCS#8) and
    jwks.json (public). Returns a dict used by mint_tokens and portcullis_mcp_conf."""
    d = os.path.join(tmp, "issuer")
    os.makedirs(d, exist_ok=True)
    subprocess.run([ensure_mint_tokens(), "keygen", d], check=True)
    return {"dir": d, "jwks_file": os.path.join(d, "jwks.json"), "issuer": LT_ISSUER,
            "name": LT_ISSUER_NAME, "audience": LT_AUDIENCE}


def mint_tokens(issuer, count, out_path, claims=None, lifetime=7200):
    """count distinct valid ES256 tokens (distinct jti; iat now, exp now + lifetime),
    one per line in out_path, for the principal `claims` (default LT_CLAIMS)."""
    cpath = out_path + ".claims.json"
    write(cpath, json.dumps(claims or LT_CLAIMS))
    subprocess.run([ensure_mint_tokens(), "mint", issuer["dir"], str(count), cpath, out_path,
                    str(lifetime)], check=True)
    return out_path


def first_token(path):
    with open(path) as f:
        return f.readline().strip()


def mcp_call_body(tool=MCP_TOOL, size=1024, rpc_id=1, repo="acme/payments-api"):
    """A JSON-RPC tools/call of exactly `size` bytes (the query argument is padding)."""
    head = ('{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s",'
            '"arguments":{"repo":"%s","state":"open","per_page":30,"query":"'
            % (rpc_id, tool, repo))
    tail = '"}}}'
    pad = size - len(head) - len(tail)
    if pad < 1:
        raise ValueError("body size too small")
    return head + "open issues about refunds " .ljust(pad, "x")[:pad] + tail


def _rule(name, kind, cond, message=None):
    r = {"name": name, kind: cond}
    if message:
        r["message"] = message
    return r


def mcp_policy_rules(n=100):
    """A realistic policy of exactly n rules (n >= 40) for the load-test principal:
    guardrail denies (tools, argument patterns, a DLP regex on the query, source
    networks, headers, claims, a rate limit far above any load-test rate), then team
    grants on groups / scopes / tools / arguments / times / clients. The load-test
    request (MCP_TOOL by LT_CLAIMS's principal) is allowed by rule number n-10 (not the
    first; every deny still has to be checked), MCP_DENIED_TOOL is denied by
    `no-deletes`. Returns (list of rule dicts, name of the allowing rule)."""
    if n < 40:
        raise ValueError("n >= 40")
    deny = [
        _rule("no-deletes", "deny", {"mcp_tool": {"starts_with": "delete_"}},
              "deleting is not allowed through portcullis"),
        _rule("no-shell", "deny", {"mcp_tool": {"matches": "^(shell|exec|run_command)$"}}),
        _rule("no-db-drops", "deny", {"mcp_tool": {"in": ["drop_database", "truncate_table"]}}),
        _rule("no-secret-repos", "deny", {"argument": {"pointer": "/repo", "matches": "^secret-"}}),
        _rule("sane-page-size", "deny", {"argument": {"pointer": "/per_page", "min": 101}}),
        _rule("no-path-traversal", "deny", {"argument": {"pointer": "/path", "matches": "\\.\\./"}}),
        _rule("no-plain-http-fetch", "deny", {"argument": {"pointer": "/url", "matches": "^http://"}}),
        _rule("no-credentials-in-queries", "deny",
              {"argument": {"pointer": "/query",
                            "matches": "(?i)(password=|secret_key|BEGIN [A-Z ]*PRIVATE KEY)"}},
              "credentials must not be sent to tools"),
        _rule("no-system-files", "deny", {"mcp_resource": {"glob": "file:///etc/**"}}),
        _rule("offices-only", "deny",
              {"not": {"source_ip": {"in": ["127.0.0.0/8", "10.0.0.0/8", "192.168.0.0/16",
                                            "::1/128"]}}}),
        _rule("blocked-tenants", "deny", {"header": {"name": "X-Tenant",
                                                     "in": ["suspended", "trial-expired"]}}),
        _rule("suspended-accounts", "deny", {"claim": {"path": "account.status",
                                                       "equals": "suspended"}}),
        _rule("contractors-no-admin", "deny",
              {"and": [{"groups": {"has": "contractors"}},
                       {"mcp_tool": {"starts_with": "admin_"}}]}),
        _rule("no-force-push", "deny",
              {"and": [{"mcp_tool": {"equals": "push_files"}},
                       {"argument": {"pointer": "/force", "equals": True}}]}),
        _rule("interns-read-only", "deny",
              {"and": [{"groups": {"has": "interns"}},
                       {"mcp_tool": {"in": ["create_issue", "update_issue",
                                            "merge_pull_request", "push_files"]}}]}),
        _rule("legacy-client-needs-scope", "deny",
              {"and": [{"client_id": {"in": ["legacy-cli"]}}, {"not": {"scope": {"has": "mcp"}}}]}),
        _rule("no-competitors", "deny", {"email": {"ends_with": "@competitor.example"}}),
        _rule("no-debug-header", "deny", {"header": {"name": "X-Debug-Override", "exists": True}}),
        _rule("per-user-budget", "deny",
              {"rate_limit": {"requests": 1000000000, "per": "1m", "key": "principal_and_tool"}},
              "too many calls; try again later"),
        _rule("everyone-may-connect", "allow",
              {"mcp_method": {"in": ["initialize", "notifications/initialized", "ping",
                                     "tools/list", "prompts/list", "resources/list"]}}),
    ]
    teams = ["billing", "checkout", "search", "ads", "mobile", "web", "infra", "sre", "data",
             "ml", "security", "identity", "growth", "support", "docs", "qa", "release", "edge",
             "storage", "network", "observability", "platform", "frontend", "backend", "ios",
             "android", "legal", "finance", "hr", "sales", "marketing", "design", "research",
             "partners", "compliance", "analytics", "ledger", "fraud", "risk", "shipping",
             "catalog", "pricing", "inventory", "orders", "notifications", "messaging", "media",
             "maps", "travel", "games", "music", "video", "photos", "payroll", "procurement",
             "tax", "treasury", "audit", "devex", "build", "ci", "cd", "tooling", "kernel",
             "compilers", "runtime", "db", "cache", "queue", "stream", "batch", "etl"]
    tool_sets = [["search_issues", "get_issue"], ["list_pull_requests", "get_pull_request"],
                 ["get_file_contents", "search_code"], ["create_issue", "update_issue"],
                 ["list_commits", "get_commit"], ["search_repositories"]]
    grants = []
    i = 0
    while len(deny) + len(grants) < n - 12:
        team = teams[i % len(teams)] + ("" if i < len(teams) else f"-{i // len(teams)}")
        tools = tool_sets[i % len(tool_sets)]
        conds = [{"groups": {"has": f"team-{team}"}}, {"mcp_tool": {"in": tools}}]
        if i % 3 == 0:
            conds.append({"scope": {"has": "mcp"}})
        if i % 4 == 1:
            conds.append({"argument": {"pointer": "/repo", "matches": f"^acme/{team}-"}})
        if i % 5 == 2:
            conds.append({"time": {"days": ["mon", "tue", "wed", "thu", "fri"],
                                   "hours": "07:00-20:00", "tz": "Europe/Berlin"}})
        if i % 7 == 3:
            conds.append({"email": {"ends_with": "@example.com"}})
        grants.append(_rule(f"team-{team}-{tools[0].split('_')[0]}", "allow", {"and": conds}))
        i += 1
    # Rule n-10: the one that allows the load-test call. Rule n-11 is a near miss for the
    # same team (other tools, office hours only), the last ten are other grants.
    grants.append(_rule("team-payments-write-office-hours", "allow",
                        {"and": [{"groups": {"has": "team-payments"}},
                                 {"mcp_tool": {"in": ["create_issue", "update_issue"]}},
                                 {"time": {"days": ["mon", "tue", "wed", "thu", "fri"],
                                           "hours": "08:00-19:00", "tz": "Europe/Berlin"}}]}))
    allow_rule = "team-payments-read"
    grants.append(_rule(allow_rule, "allow",
                        {"and": [{"groups": {"has": "team-payments"}},
                                 {"scope": {"has": "mcp"}},
                                 {"mcp_tool": {"in": ["search_issues", "get_issue",
                                                      "list_pull_requests"]}},
                                 {"argument": {"pointer": "/repo", "matches": "^acme/payments-"}}]}))
    tail = [
        _rule("on-call-incidents", "allow", {"and": [{"claim": {"path": "roles", "contains": "on-call"}},
                                                     {"mcp_tool": {"starts_with": "incident_"}}]}),
        _rule("company-prompts", "allow", {"and": [{"email": {"ends_with": "@example.com"}},
                                                   {"mcp_prompt": {"in": ["code_review", "summarize"]}}]}),
        _rule("docs-app-resources", "allow", {"and": [{"client_id": {"in": ["docs-app"]}},
                                                      {"issuer": {"equals": LT_ISSUER_NAME}},
                                                      {"mcp_resource": {"starts_with": "file:///srv/docs/"}}]}),
        _rule("sre-any-read", "allow", {"and": [{"groups": {"any": ["sre", "oncall-primary"]}},
                                                {"mcp_tool": {"starts_with": ["get_", "list_"]}}]}),
        _rule("admins", "allow", {"and": [{"groups": {"all": ["admins", "mfa-verified"]}},
                                          {"mcp_tool": {"starts_with": "admin_"}}]}),
        _rule("bots-ci", "allow", {"and": [{"client_id": {"equals": "ci-bot"}},
                                           {"mcp_tool": {"in": ["get_commit", "list_commits"]}}]}),
        _rule("release-managers", "allow", {"and": [{"claim": {"path": "title", "in": ["release manager"]}},
                                                    {"mcp_tool": {"equals": "create_release"}}]}),
        _rule("analysts-queries", "allow", {"and": [{"groups": {"has": "analysts"}},
                                                    {"mcp_tool": {"equals": "run_query"}},
                                                    {"argument": {"pointer": "/limit", "max": 10000}}]}),
        _rule("support-tickets", "allow", {"and": [{"groups": {"has": "support"}},
                                                   {"mcp_tool": {"matches": "^(get|search)_tickets?$"}}]}),
        _rule("design-assets", "allow", {"and": [{"groups": {"has": "design"}},
                                                 {"mcp_resource": {"glob": "file:///srv/assets/**"}}]}),
    ]
    rules = deny + grants + tail
    assert len(rules) == n, len(rules)
    assert [r["name"] for r in rules].index(allow_rule) == n - 11
    return rules, allow_rule


def mcp_policy_yaml(rules, indent=6):
    """The rules as YAML (one flow mapping per rule: YAML accepts JSON)."""
    pad = " " * indent
    return "".join(f"{pad}- {json.dumps(r)}\n" for r in rules)


def portcullis_mcp_conf(port, up_port, issuer, driver="io_uring", *, workers=1, tls=None,
                        audit_path=None, policy_rules=None, upstream_auth=None,
                        route_path=MCP_PATH, admin_port=None, screen=None):
    """portcullis with the full MCP path: one listener (TLS when tls=(cert, key)), an MCP
    route with `auth` (the ES256 issuer from make_issuer, jwks_file), the 100-rule policy
    (policy_rules, default mcp_policy_rules()[0]; [] for none) and, with audit_path, the
    audit log to that file. upstream_auth: None = portcullis's default (an ES256 identity
    assertion per principal, cached per core), or a YAML flow mapping such as
    '{ none: true }'. admin_port: the admin listener (/metrics, e.g. token cache hits; off
    the data plane: the counters are kept whether it is on or not). screen: the route's
    `screen` section as a YAML flow mapping (`{}`: every built-in detector), or None."""
    rules = mcp_policy_rules()[0] if policy_rules is None else policy_rules
    scheme = "https" if tls else "http"
    listen = f"  - address: 127.0.0.1:{port}\n"
    if tls:
        listen += (f"    tls:\n      certificates:\n"
                   f"        - {{ cert_file: {tls[0]}, key_file: {tls[1]} }}\n")
    audit = (f"audit: {{ path: {audit_path}, on_overflow: block }}\n" if audit_path else "")
    if admin_port:
        audit += f"admin: {{ address: 127.0.0.1:{admin_port} }}\n"
    policy = ("    policy:\n" + mcp_policy_yaml(rules)) if rules else ""
    ua = f"    upstream_auth: {upstream_auth}\n" if upstream_auth else ""
    if screen is not None:
        ua += f"    screen: {screen}\n"
    return f"""workers: {workers}
runtime: {{ driver: {driver}, ring_entries: 1024, coop_taskrun: true, single_issuer: true, defer_taskrun: true }}
upstream: {{ pool_max_idle: {POOL_IDLE} }}
listen:
{listen}{audit}identity:
  issuers:
    - name: {issuer['name']}
      issuer: {issuer['issuer']}
      jwks_file: {issuer['jwks_file']}
      algorithms: [ES256]
      audiences: [{issuer['audience']}]
routes:
  - name: mcp
    from: {scheme}://127.0.0.1:{port}{route_path}
    to: http://127.0.0.1:{up_port}{route_path}
    mcp: {{}}
    auth: {{ issuers: [{issuer['name']}], scopes: [mcp] }}
{ua}{policy}"""


def full_path_target(tmp, port, up_port, body_path, audit=True, screen=None):
    """The full MCP path as ops.py and instructions.py drive it: its config (one
    minted token's issuer, the 100-rule policy, audit to a file in tmp unless
    audit=False, content screening when screen is its YAML, e.g. "{}") and the
    wrk spec posting body_path with that token."""
    issuer = make_issuer(tmp)
    tokens = mint_tokens(issuer, 1, os.path.join(tmp, "token.txt"))
    audit_path = os.path.join(tmp, "audit.jsonl") if audit else None
    conf = portcullis_mcp_conf(port, up_port, issuer, audit_path=audit_path, screen=screen)
    return conf, mcp_wrk_spec(body_path, tokens)


def portcullis_plain_conf(port, up_port, driver="io_uring", *, workers=1, tls=None):
    """Plain pass-through (the `plain` scenario's route), optionally TLS-terminating
    (tls=(cert, key)) and with more workers."""
    scheme = "https" if tls else "http"
    listen = f"  - address: 127.0.0.1:{port}\n"
    if tls:
        listen += (f"    tls:\n      certificates:\n"
                   f"        - {{ cert_file: {tls[0]}, key_file: {tls[1]} }}\n")
    return f"""workers: {workers}
runtime: {{ driver: {driver}, ring_entries: 1024, coop_taskrun: true, single_issuer: true, defer_taskrun: true }}
upstream: {{ pool_max_idle: {POOL_IDLE} }}
listen:
{listen}routes:
  - name: bench
    from: {scheme}://127.0.0.1:{port}/
    to: http://127.0.0.1:{up_port}/
    mcp: {{}}
"""


def mcp_wrk_spec(body_path, tokens_path, dynamic=False, headers=(), describe=""):
    """wrk with loadtest/mcp.lua: POST MCP_PATH with the body file and a bearer token
    from tokens_path (one per line). dynamic=True builds each request in lua, rotating
    through the tokens (with one token it then costs wrk the same as with many)."""
    env = {"LT_BODY": body_path, "LT_TOKENS": tokens_path, "LT_PATH": MCP_PATH,
           "LT_DYNAMIC": "1" if dynamic else "0"}
    return WrkSpec("mcp.lua", env, headers, describe)


def mcp_headers(token=None):
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return h


class AuditCounter:
    """Counts the lines appended to an audit file (reads only what is new)."""

    def __init__(self, path):
        self.path, self.offset, self.lines, self.partial = path, 0, 0, b""

    def poll(self):
        if not os.path.exists(self.path):
            return self.lines
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                self.offset += len(chunk)
                self.lines += chunk.count(b"\n")
                nl = chunk.rfind(b"\n")
                self.partial = chunk[nl + 1:] if nl >= 0 else self.partial + chunk
        return self.lines

    def settle(self, timeout=5.0, quiet=0.3):
        """Wait until no new line arrived for `quiet` s (the writer thread flushes
        per-core buffers); returns the line count."""
        end = time.monotonic() + timeout
        last = self.poll()
        since = time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.05)
            n = self.poll()
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last

    def last_record(self):
        """The last complete JSON line (reads the file's tail)."""
        if not os.path.exists(self.path):
            return None
        with open(self.path, "rb") as f:
            f.seek(max(0, os.path.getsize(self.path) - 65536))
            lines = f.read().splitlines()
        for ln in reversed(lines):
            try:
                return json.loads(ln)
            except ValueError:
                continue
        return None


def mcp_preflight(port, token, audit=None, allow_rule=None, tls=False, expect_auth=True,
                  control_token=None):
    """Checks that the full MCP path really authenticates and judges. With the token the
    call returns the upstream's body (and, with an AuditCounter, its audit record says
    allowed, by allow_rule if the record names the allowing rule); without a token 401; a
    broken signature 401; a call of MCP_DENIED_TOOL a JSON-RPC error naming the denial;
    the same call for another repository (rule 90's argument condition) and, with
    control_token, by a principal outside team-payments (rule 90's group condition) are
    denied: so the call is allowed by rule 90 and by no other. With expect_auth=False (a
    plain proxy such as nginx) only the first check applies. Returns [(check, ok, info)]."""
    res = []
    body = mcp_call_body()

    def rpc_error(data):
        try:
            j = json.loads(data)
        except ValueError:
            return False
        return isinstance(j, dict) and "error" in j and "result" not in j

    try:
        st, data, _ = http_request(port, "POST", MCP_PATH, body, mcp_headers(token), tls)
        ok = st == 200 and data == UPSTREAM_BODY
        res.append(("valid token, allowed call → 200 + upstream body", ok, f"{st} {data[:100]!r}"))
        if audit is not None:
            audit.settle(timeout=3)
            rec = audit.last_record() or {}
            ok = (rec.get("decision") == "allowed" and rec.get("target") == MCP_TOOL
                  and (rec.get("principal") or {}).get("sub") == LT_CLAIMS["sub"]
                  and rec.get("rule") in (None, allow_rule))
            res.append(("its audit record: allowed, tool and principal"
                        + ("" if rec.get("rule") else
                           " (the record names no allowing rule: portcullis records `rule` "
                           "only for denials)"), ok,
                        json.dumps({k: rec.get(k) for k in ("decision", "rule", "method", "target",
                                                            "status")})[:300]))
        if not expect_auth:
            return res
        st, data, hdrs = http_request(port, "POST", MCP_PATH, body, mcp_headers(None), tls)
        ok = st == 401 and "bearer" in hdrs.get("www-authenticate", "").lower()
        res.append(("no token → 401 with a Bearer challenge", ok,
                    f"{st} www-authenticate={hdrs.get('www-authenticate', '')[:70]!r}"))
        bad = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        st, data, _ = http_request(port, "POST", MCP_PATH, body, mcp_headers(bad), tls)
        res.append(("token with a broken signature → 401", st == 401, f"{st} {data[:90]!r}"))
        st, data, _ = http_request(port, "POST", MCP_PATH, mcp_call_body(MCP_DENIED_TOOL),
                                   mcp_headers(token), tls)
        ok = rpc_error(data) and "no-deletes" in data
        res.append((f"tools/call {MCP_DENIED_TOOL} → JSON-RPC error (rule no-deletes)", ok,
                    f"{st} {data[:140]!r}"))
        st, data, _ = http_request(port, "POST", MCP_PATH, mcp_call_body(repo="acme/ledger-core"),
                                   mcp_headers(token), tls)
        res.append((f"{MCP_TOOL} on another team's repo → JSON-RPC error (no rule allows)",
                    rpc_error(data), f"{st} {data[:140]!r}"))
        if control_token:
            st, data, _ = http_request(port, "POST", MCP_PATH, body, mcp_headers(control_token), tls)
            res.append((f"{MCP_TOOL} by a principal outside team-payments → JSON-RPC error",
                        rpc_error(data), f"{st} {data[:140]!r}"))
    except Exception as e:  # noqa: BLE001
        res.append(("request", False, repr(e)))
    return res


def token_cache_counts(admin_port):
    """(hits, misses) of portcullis's token cache from its admin /metrics, or None."""
    try:
        st, data, _ = http_request(admin_port, "GET", "/metrics", timeout=3)
    except Exception:  # noqa: BLE001
        return None
    if st != 200:
        return None
    h = re.search(r'^portcullis_token_cache_lookups_total\{result="hit"\} (\d+)', data, re.M)
    m = re.search(r'^portcullis_token_cache_lookups_total\{result="miss"\} (\d+)', data, re.M)
    return (int(h.group(1)), int(m.group(1))) if h and m else None


def tls_cert(tmp):
    """A self-signed ECDSA P-256 certificate for 127.0.0.1/localhost (openssl CLI).
    Returns (cert.pem, key.pem, combined.pem for haproxy)."""
    d = os.path.join(tmp, "tls")
    os.makedirs(d, exist_ok=True)
    cert, key, both = (os.path.join(d, n) for n in ("cert.pem", "key.pem", "combined.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "3", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    write(both, open(cert).read() + open(key).read())
    return cert, key, both


def nginx_tls_proxy_conf(prefix, port, up_port, cert, key):
    """nginx_proxy_conf with a TLS 1.3 listener (ECDSA P-256 certificate)."""
    conf = nginx_proxy_conf(prefix, port, up_port)
    return conf.replace(
        f"        listen 127.0.0.1:{port} backlog=4096;\n",
        f"        listen 127.0.0.1:{port} ssl backlog=4096;\n"
        f"        ssl_certificate {cert};\n"
        f"        ssl_certificate_key {key};\n"
        f"        ssl_protocols TLSv1.3;\n"
        f"        ssl_session_cache shared:SSL:10m;\n")


def haproxy_tls_conf(port, up_port, combined_pem):
    """haproxy_conf with a TLS 1.3 `bind ... ssl crt`."""
    conf = haproxy_conf(port, up_port)
    return conf.replace(f"    bind 127.0.0.1:{port}\n",
                        f"    bind 127.0.0.1:{port} ssl crt {combined_pem} ssl-min-ver TLSv1.3\n")


# ----------------------------------------------------------------------------
# chart: grouped bars (req/s and CPU µs/req), hand-written SVG

KIND_COLORS = {"direct": ["#9e9e9e"], "relay": ["#6a3d9a"], "nginx": ["#2ca02c", "#74c476"],
               "haproxy": ["#ff7f0e", "#fdae6b"],
               "portcullis": ["#1f4e99", "#4a86d4", "#8cb8ec", "#0d2b57"]}


def _nice_max(v):
    if not v or v <= 0:
        return 1.0
    import math
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def _esc(s):
    return (str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def svg_grouped_bars(groups, title="",
                     panels=(("requests/s (higher is better)", 2, ",.0f", False),
                             ("proxy CPU µs per request (lower is better)", 3, ".1f", True))):
    """groups: [(group title, [(bar label, kind, value, value, ...), ...]), ...]; each
    panel (title, index into the bar tuple, number format, may cut) draws one value per bar.
    Bars are coloured by kind (direct, portcullis, nginx, haproxy) and labelled below the
    last panel; a missing value (None) is marked n/a. A panel that may cut ends at 2.5× the
    median bar when a few bars are far above it: those are cut (zig-zag) and keep their
    value label, so the others stay readable."""
    barw, gap, left, right, top = 18, 30, 70, 20, 48
    ph, pgap, label_h = 230, 70, 150
    gw = [max(len(b) * barw, 7 * len(t)) for t, b in groups]
    width = max(left + right + sum(w + gap for w in gw), 640)
    height = top + len(panels) * (ph + pgap) + label_h
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" '
         f'font-weight="bold">{_esc(title)}</text>']
    lx = left
    for kind in ("direct", "relay", "portcullis", "nginx", "haproxy"):
        o.append(f'<rect x="{lx}" y="30" width="12" height="10" fill="{KIND_COLORS[kind][0]}"/>')
        o.append(f'<text x="{lx + 16}" y="39">{kind}{" (shades: variants)" if kind == "portcullis" else ""}</text>')
        lx += 60 + 7 * len(kind) + (110 if kind == "portcullis" else 0)
    last = len(panels) - 1
    for pi, (ptitle, idx, nf, may_cut) in enumerate(panels):
        y0 = top + pi * (ph + pgap) + 20
        vals = sorted(b[idx] for _, bars in groups for b in bars if b[idx] is not None)
        top_v = vals[-1] if vals else 1
        mid = statistics.median(vals) if vals else 1
        cut = may_cut and top_v > 3 * mid > 0
        vmax = _nice_max(2.5 * mid if cut else top_v * 1.15)  # headroom for the value labels
        o.append(f'<text x="{left}" y="{y0 - 6}" font-weight="bold">{_esc(ptitle)}'
                 + (" — scale cut, taller bars broken" if cut else "") + '</text>')
        for k in range(6):
            v = vmax * k / 5
            y = y0 + ph - ph * k / 5
            o.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>')
            o.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{format(v, ",.0f" if vmax >= 10 else ".1f")}</text>')
        o.append(f'<line x1="{left}" y1="{y0 + ph}" x2="{width - right}" y2="{y0 + ph}" stroke="#333"/>')
        x = left + gap / 2
        for (gtitle, bars), w in zip(groups, gw):
            gx = x
            x += (w - len(bars) * barw) / 2
            used = {}
            for b in bars:
                label, kind, v = b[0], b[1], b[idx]
                shades = KIND_COLORS.get(kind, ["#666"])
                col = shades[used.get(kind, 0) % len(shades)]
                used[kind] = used.get(kind, 0) + 1
                cx = x + barw / 2 - 1
                if v is None:
                    o.append(f'<text x="{cx:.1f}" y="{y0 + ph - 4}" text-anchor="middle" '
                             f'font-size="8">n/a</text>')
                else:
                    h = min(ph * v / vmax, ph + 8)
                    o.append(f'<rect x="{x:.1f}" y="{y0 + ph - h:.1f}" width="{barw - 2}" '
                             f'height="{h:.1f}" fill="{col}"><title>{_esc(gtitle)}: {_esc(label)} '
                             f'{format(v, nf)}</title></rect>')
                    if v > vmax:
                        zy = y0 + 14
                        o.append(f'<polyline points="{x - 1:.1f},{zy + 4:.1f} {x + 4:.1f},{zy:.1f} '
                                 f'{x + 9:.1f},{zy + 4:.1f} {x + 14:.1f},{zy:.1f} {x + barw - 1:.1f},{zy + 3:.1f}" '
                                 f'fill="none" stroke="white" stroke-width="3"/>')
                        ty = y0 + ph - 4
                        o.append(f'<text x="{cx:.1f}" y="{ty:.1f}" font-size="8" fill="white" '
                                 f'transform="rotate(-90 {cx:.1f} {ty:.1f})" dy="3">{format(v, nf)}</text>')
                    else:
                        ty = y0 + ph - h - 3
                        o.append(f'<text x="{cx:.1f}" y="{ty:.1f}" font-size="8" '
                                 f'transform="rotate(-90 {cx:.1f} {ty:.1f})" dy="3">{format(v, nf)}</text>')
                if pi == last:
                    ly = y0 + ph + 8
                    o.append(f'<text x="{x + barw / 2:.1f}" y="{ly}" font-size="9" text-anchor="end" '
                             f'transform="rotate(-60 {x + barw / 2:.1f} {ly})">{_esc(label)}</text>')
                x += barw
            x = gx + w
            gy = y0 + ph + (label_h if pi == last else 0) + 14
            o.append(f'<text x="{gx + w / 2:.1f}" y="{gy}" text-anchor="middle" '
                     f'font-weight="bold">{_esc(gtitle)}</text>')
            x += gap
    o.append("</svg>")
    return "\n".join(o) + "\n"


def tls_resumption(port, path="/"):
    """Does the TLS listener on port resume a TLS 1.3 session? One HTTPS request on a
    new connection, then a second connection offering the first's session ticket.
    Returns (version, resumed: bool, info). wrk resumes sessions on reconnect, so with
    `Connection: close` a server that resumes does an abbreviated handshake per request."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()

    def one(session=None):
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        try:
            s.sendall(req)
            while s.recv(65536):  # read to the close: TLS 1.3 tickets arrive after the handshake
                pass
            return s.version(), s.session, s.session_reused
        finally:
            s.close()

    try:
        v, sess, _ = one()
        if sess is None:
            return v, False, "no session from the first connection"
        v2, _, reused = one(sess)
        return v2, bool(reused), "second connection " + ("resumed" if reused else "full handshake")
    except Exception as e:  # noqa: BLE001
        return None, False, repr(e)
