"""TLS: a CA made at test time (trustme), two server certificates chosen by
SNI on one portcullis listener, TLS 1.2 and 1.3, ALPN http/1.1, real MCP
clients over https through portcullis, and an https:// upstream verified
against `upstream.ca_file`."""

from __future__ import annotations

import json
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import trustme
from cryptography import x509

from conftest import HELPERS, PY2, Portcullis, Upstream, free_port, run_mcp1_client
from mcpclient import exercise

NAMES = ("localhost", "mcp.test")  # the first certificate is the default


@dataclass
class Pki:
    ca: trustme.CA
    ca_file: Path
    certs: dict[str, tuple[Path, Path]]  # name -> (cert chain, key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA(organization_name="portcullis e2e test CA")
    ca_file = d / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    certs = {}
    for name in NAMES + ("127.0.0.1",):
        cert = ca.issue_cert(name) if name != "localhost" else ca.issue_cert("localhost", "127.0.0.1")
        c, k = d / f"{name}.pem", d / f"{name}.key"
        for i, blob in enumerate(cert.cert_chain_pems):
            blob.write_to_path(str(c), append=i > 0)
        cert.private_key_pem.write_to_path(str(k))
        certs[name] = (c, k)
    return Pki(ca, ca_file, certs)


@dataclass
class TlsGateway:
    port: int
    audit: Path


@pytest.fixture(scope="module")
def https_upstream(pki, tmp_path_factory) -> Upstream:
    """The mcp 2.x server itself serving https (uvicorn with a cert for 127.0.0.1)."""
    from conftest import Procs

    procs = Procs(tmp_path_factory.mktemp("https-upstream-logs"))
    port = free_port()
    cert, key = pki.certs["127.0.0.1"]
    p = procs.start(
        "mcp2-https",
        [PY2, str(HELPERS / "mcp2_server.py"), "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
    )
    try:
        p.wait_ports([port])
        yield Upstream("mcp2-https", port, "/mcp", p)
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def tls_gateway(pki, mcp2_sse, mcp2_json, https_upstream, tmp_path_factory) -> TlsGateway:
    from conftest import Procs

    procs = Procs(tmp_path_factory.mktemp("tls-gateway-logs"))
    port = free_port()
    cfg_dir = tmp_path_factory.mktemp("tls-gateway")
    certs = "\n".join(
        f"        - {{ cert_file: {pki.certs[n][0]}, key_file: {pki.certs[n][1]} }}" for n in NAMES
    )
    cfg = f"""
workers: 1
shutdown_timeout: 3s
audit: {{ path: {cfg_dir / "audit.jsonl"} }}
upstream:
  ca_file: {pki.ca_file}
listen:
  - address: 127.0.0.1:{port}
    tls:
      certificates:
{certs}
routes:
  - name: localhost-sse
    from: https://localhost:{port}/mcp
    to: {mcp2_sse.url}
    mcp: {{}}
  - name: mcptest-json
    from: https://mcp.test:{port}/mcp
    to: {mcp2_json.url}
    mcp: {{}}
  - name: https-upstream
    from: https://localhost:{port}/tls-up/mcp
    to: https://127.0.0.1:{https_upstream.port}/mcp
    mcp: {{}}
"""
    pc = Portcullis(procs, cfg_dir)
    try:
        pc.start(cfg, [port], name="portcullis-tls")
        yield TlsGateway(port, cfg_dir / "audit.jsonl")
    finally:
        procs.stop_all()


def client_ctx(pki: Pki, version: ssl.TLSVersion | None = None, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def handshake(port: int, ctx: ssl.SSLContext, sni: str | None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=sni)


def peer_dns_names(s: ssl.SSLSocket) -> list[str]:
    der = s.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def http_request(host: str, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json, text/event-stream\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def http_over(s: ssl.SSLSocket, host: str, path: str, body: bytes) -> tuple[str, bytes]:
    s.sendall(http_request(host, path, body))
    data = b""
    while True:
        try:
            more = s.recv(65536)
        except ssl.SSLEOFError:
            break
        if not more:
            break
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


@pytest.mark.parametrize("sni", NAMES)
def test_sni_selects_certificate(pki, tls_gateway, sni):
    with handshake(tls_gateway.port, client_ctx(pki), sni) as s:
        assert peer_dns_names(s) == [sni]


def test_no_sni_gets_default_certificate(pki, tls_gateway):
    ctx = client_ctx(pki)
    ctx.check_hostname = False  # no SNI: verify the chain, read the name ourselves
    with handshake(tls_gateway.port, ctx, None) as s:
        assert peer_dns_names(s) == ["localhost"]


def test_unknown_sni_gets_default_certificate(pki, tls_gateway):
    ctx = client_ctx(pki)
    ctx.check_hostname = False
    with handshake(tls_gateway.port, ctx, "unknown.test") as s:
        assert peer_dns_names(s) == ["localhost"]


@pytest.mark.parametrize(
    "version,name",
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
@pytest.mark.parametrize("sni", NAMES)
def test_tls_versions_and_alpn(pki, tls_gateway, version, name, sni):
    ctx = client_ctx(pki, version, alpn=["h2", "http/1.1"])
    with handshake(tls_gateway.port, ctx, sni) as s:
        assert s.version() == name
        assert s.selected_alpn_protocol() == "http/1.1"
        assert peer_dns_names(s) == [sni]

        # And HTTP works on it: initialize answered by the route for that host.
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
            }
        ).encode()
        head, rest = http_over(s, f"{sni}:{tls_gateway.port}", "/mcp", body)
        assert head.startswith("HTTP/1.1 200"), head
        ctype = [line for line in head.lower().split("\r\n") if line.startswith("content-type:")][0]
        # localhost → the SSE-mode server, mcp.test → the JSON-mode server
        assert ("text/event-stream" in ctype) == (sni == "localhost"), ctype
    # The audit record of the request says what the handshake settled and
    # how many bytes each way it carried.
    request_id = [v for k, v in (line.split(": ", 1) for line in head.split("\r\n")[1:]) if k.lower() == "x-request-id"][0]
    record = audit_record(tls_gateway.audit, request_id)
    assert record["tls"] is True
    assert record["tls_version"] == name
    assert record["sni"] == sni
    assert record["bytes_in"] == len(http_request(f"{sni}:{tls_gateway.port}", "/mcp", body))
    assert record["bytes_out"] == len(head) + 4 + len(rest)


def audit_record(path, request_id: str, wait: float = 5.0) -> dict:
    """The audit record of `request_id` (records are flushed every 100 ms)."""
    deadline = time.monotonic() + wait
    while True:
        if path.exists():
            for line in path.read_text().splitlines():
                r = json.loads(line)
                if r["request_id"] == request_id:
                    return r
        assert time.monotonic() < deadline, f"no audit record for {request_id}"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "version",
    [
        pytest.param(ssl.TLSVersion.TLSv1_2, id="TLSv1.2"),
        pytest.param(ssl.TLSVersion.TLSv1_3, id="TLSv1.3"),
    ],
)
def test_alpn_h2_only_refused_with_alert(pki, tls_gateway, version):
    """A client offering only h2: portcullis speaks HTTP/1.1 only, so the
    handshake must fail with the no_application_protocol alert, never
    select h2."""
    ctx = client_ctx(pki, version, alpn=["h2"])
    with pytest.raises(ssl.SSLError) as ei:
        with handshake(tls_gateway.port, ctx, "localhost") as s:
            pytest.fail(f"handshake succeeded with ALPN {s.selected_alpn_protocol()!r}")
    assert "no application protocol" in str(ei.value).lower() or "no_application_protocol" in str(ei.value).lower(), ei.value


def test_host_must_match_sni_route(pki, tls_gateway):
    """TLS to mcp.test with a Host the routes don't know → 404."""
    with handshake(tls_gateway.port, client_ctx(pki), "mcp.test") as s:
        head, _ = http_over(s, f"nope.test:{tls_gateway.port}", "/mcp", b"{}")
        assert head.startswith("HTTP/1.1 404"), head


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_mcp2_client_over_https(pki, tls_gateway, mode):
    """The real mcp 2.x Client over https through portcullis (trusting the
    test CA through its httpx2 client)."""
    out, rec = anyio.run(lambda: exercise(f"https://localhost:{tls_gateway.port}/mcp", mode, verify=client_ctx(pki)))
    assert out["server_name"] == "e2e-mcp2"
    assert out["add"] == ["42"] and out["echo"] == ["héllo through portcullis"]
    assert out["countdown"] == ["counted 3"] and len(out["progress"]) == 3
    assert all(e.status in (200, 202) for e in rec.exchanges)


def test_mcp2_client_over_https_sees_forwarded_proto(pki, tls_gateway, mcp2_sse):
    async def go():
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async with httpx2.AsyncClient(verify=client_ctx(pki)) as hc:
            url = f"https://localhost:{tls_gateway.port}/mcp"
            async with Client(streamable_http_client(url, http_client=hc), mode="legacy") as client:
                r = await client.call_tool("request_headers", {})
                return json.loads(r.content[0].text)

    h = anyio.run(go)
    assert h["x-forwarded-proto"] == "https"
    assert h["x-forwarded-host"] == f"localhost:{tls_gateway.port}"
    assert h["host"] == f"127.0.0.1:{mcp2_sse.port}"


def test_mcp1_client_over_https(pki, tls_gateway):
    """The mcp<2 ClientSession over https, trusting the CA via SSL_CERT_FILE."""
    out = run_mcp1_client(
        f"https://localhost:{tls_gateway.port}/mcp", "streamable-http", env={"SSL_CERT_FILE": str(pki.ca_file)}
    )
    assert out["server_name"] == "e2e-mcp2"
    assert out["add"] == ["42"] and out["ping"] is True and len(out["progress"]) == 3


def test_https_upstream_verified_with_ca_file(pki, tls_gateway, https_upstream):
    """portcullis → upstream over TLS, the upstream's cert (for 127.0.0.1)
    verified against upstream.ca_file; a real client on top."""
    out, _ = anyio.run(
        lambda: exercise(f"https://localhost:{tls_gateway.port}/tls-up/mcp", "legacy", verify=client_ctx(pki))
    )
    assert out["server_name"] == "e2e-mcp2" and out["add"] == ["42"]
    assert out["progress"] == [[1.0, 3.0, "step 1"], [2.0, 3.0, "step 2"], [3.0, 3.0, "step 3"]]


def test_https_upstream_untrusted_is_502(tmp_path, procs, https_upstream):
    """Without the CA, portcullis refuses the upstream's certificate: 502."""
    port = free_port()
    cfg = f"""
workers: 1
listen:
  - address: 127.0.0.1:{port}
routes:
  - name: r
    from: http://127.0.0.1:{port}/mcp
    to: https://127.0.0.1:{https_upstream.port}/mcp
    mcp: {{}}
"""
    Portcullis(procs, tmp_path / "cfg").start(cfg, [port])
    import httpx

    r = httpx.post(f"http://127.0.0.1:{port}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=15)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == -32000
