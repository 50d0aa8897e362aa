"""The authorization server's embedded store under `kill -9`: a burst of
refresh-token rotations through the token endpoint, the process killed in
the middle, started again on the same file. Every rotation it answered was
committed: the last refresh token it handed out still works (current, or
within its grace window when a later rotation committed but its answer was
lost with the process), the grant is live, its new access token works, and
the store opens cleanly (`portcullis grants list`)."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
import urllib.parse

import httpx

from conftest import Portcullis, free_port, portcullis_bin, start_mcp2

CB = "http://127.0.0.1:9/cb"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def login_and_consent(issuer: str, resource: str) -> str:
    """The browser steps done by hand (development login, consent form):
    the authorization code."""
    jar: dict[str, str] = {}

    def go(method: str, url: str, form: dict | None = None) -> httpx.Response:
        headers = {"cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {}
        if form is not None:
            headers["origin"] = issuer
        r = httpx.request(method, url, data=form, headers=headers, timeout=10)
        for line in r.headers.get_list("set-cookie"):
            name, value = line.split(";")[0].split("=", 1)
            if "Max-Age=0" in line:
                jar.pop(name, None)
            else:
                jar[name] = value
        return r

    def hidden(html: str, name: str) -> str:
        return re.search(rf'name="{name}" value="([^"]+)"', html).group(1)

    url = f"{issuer}/authorize?" + urllib.parse.urlencode({
        "response_type": "code", "client_id": "burst", "redirect_uri": CB, "state": "s",
        "code_challenge": CHALLENGE, "code_challenge_method": "S256", "resource": resource,
    })
    for _ in range(8):
        r = go("GET", url)
        if r.status_code == 302:
            url = r.headers["location"]
            continue
        if 'name="user"' in r.text:
            r = go("POST", f"{issuer}/.portcullis/login",
                   {"tx": hidden(r.text, "tx"), "csrf": hidden(r.text, "csrf"), "user": "alice"})
        elif 'id="allow"' in r.text:
            r = go("POST", f"{issuer}/.portcullis/consent",
                   {"tx": hidden(r.text, "tx"), "csrf": hidden(r.text, "csrf"), "decision": "allow"})
        assert r.status_code == 302, r.text
        url = r.headers["location"]
        if url.startswith(CB):
            return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["code"]
    raise AssertionError(f"no code; last page {url}")


def test_kill_9_mid_burst_of_refreshes_loses_no_committed_rotation(procs, tmp_path):
    upstream = start_mcp2(procs, "mcp2-burst", json_mode=True)
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    cfg = f"""
listen: [{{address: 127.0.0.1:{port}}}]
authorization_server:
  issuer: {issuer}
  login: {{dev_users: [{{sub: alice, groups: [engineering]}}]}}
  clients: {{registered: [{{client_id: burst, redirect_uris: ["{CB}"]}}]}}
  tokens: {{refresh_grace: 60s}}
store: {{path: {tmp_path}/state.db}}
routes:
  - {{name: mcp, from: {issuer}/mcp, to: {upstream.url}, mcp: {{}}, auth: {{issuers: [portcullis]}}}}
"""
    pc = Portcullis(procs, tmp_path / "config")
    proc = pc.start(cfg, [port], name="portcullis-burst")
    code = login_and_consent(issuer, f"{issuer}/mcp")
    r = httpx.post(f"{issuer}/token", data={"grant_type": "authorization_code", "code": code, "client_id": "burst",
                                             "redirect_uri": CB, "code_verifier": VERIFIER}, timeout=10)
    assert r.status_code == 200, r.text
    latest = {"rt": r.json()["refresh_token"], "answered": 0}
    stop = threading.Event()

    def burst():
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                try:
                    r = c.post(f"{issuer}/token", data={"grant_type": "refresh_token", "client_id": "burst",
                                                         "refresh_token": latest["rt"]})
                except httpx.HTTPError:
                    return  # the process is gone
                assert r.status_code == 200, r.text
                latest["rt"] = r.json()["refresh_token"]
                latest["answered"] += 1

    t = threading.Thread(target=burst)
    t.start()
    time.sleep(1.5)
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(timeout=10)
    stop.set()
    t.join(timeout=10)
    assert latest["answered"] > 20, latest["answered"]

    proc = pc.start(cfg, [port], name="portcullis-burst-again")
    listed = subprocess.run([portcullis_bin(), "grants", "list", "-c", str(tmp_path / "config" / "portcullis-burst-again.yaml")],
                                          capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and " live " in listed.stdout, listed
    r = httpx.post(f"{issuer}/token", data={"grant_type": "refresh_token", "client_id": "burst",
                                             "refresh_token": latest["rt"]}, timeout=10)
    # 200 either way: the last token it answered with is the current one, or
    # (when a rotation committed but its answer was cut off by the kill) the
    # one just replaced, inside its grace window.
    assert r.status_code == 200 and r.json()["access_token"], r.text
    at = r.json()["access_token"]
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}}
    r = httpx.post(f"{issuer}/mcp", json=init, headers={"authorization": f"Bearer {at}",
                                                        "accept": "application/json, text/event-stream"}, timeout=10)
    assert r.status_code == 200, r.text
