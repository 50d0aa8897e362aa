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
    b = os.path.join(REPO, "target", "release", "portcullis")
    if not os.access(b, os.X_OK):
        log("building portcullis (cargo build --release)")
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    return b


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


def check_http(port, method, path, body, headers, expect_body):
    """One request with http.client (Host header = 127.0.0.1:port)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read().decode(errors="replace")
        ok = r.status == 200 and data == expect_body
        return ok, f"{r.status} {data[:120]!r}"
    except Exception as e:  # noqa: BLE001
        return False, repr(e)
    finally:
        c.close()


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
        ok, info = check_http(t.port, method, path, body, hdr, UPSTREAM_BODY)
        res.append((method, ok, info))
    return res


# ----------------------------------------------------------------------------
# one wrk run

ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def run_wrk(tmp, target, workload, duration, upstream, tag):
    script = os.path.join(HERE, f"{workload}.lua")
    url = f"http://127.0.0.1:{target.port}/"
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{CONNECTIONS}",
           f"-d{duration}s", "--latency", "--timeout", "5s", "-s", script, url]
    pids = target.refresh_pids()
    up_pids = upstream.refresh_pids()
    sampler = CoreSampler().start()
    c0, u0 = cpu_ticks(pids), cpu_ticks(up_pids)
    ru0, rs0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=duration + 30).stdout
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += "\n[wrk timed out]\n"
    wall = time.monotonic() - t0
    c1, u1 = cpu_ticks(pids), cpu_ticks(up_pids)
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
    r["proxy_cpu_s"] = (c1 - c0) / CLK_TCK
    r["upstream_cpu_s"] = (u1 - u0) / CLK_TCK
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
    if c0s:
        foreign = c0s["busy_ticks"] - (c1 - c0)
        r["core0_foreign_pct"] = 100.0 * max(foreign, 0) / (c0s["total_ticks"] or 1)
        # direct leaves core 0 unused: load there does not touch its figures.
        if r["core0_foreign_pct"] > FOREIGN_CORE0_PCT and target.kind != "direct":
            flags.append(f"foreign load on core {PROXY_CORE} {r['core0_foreign_pct']:.0f}%")
    c1s = cores.get(f"cpu{LOAD_CORE}")
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
    where = (f"label: {label}" if label else
             f"work tree at {g or '?'}{' (with uncommitted changes)' if dirty else ''}")
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
