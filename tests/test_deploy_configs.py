"""The deployment files in docker/, checked by the real tools.

HAProxy's `haproxy -c` and nginx's `nginx -t` validate the configurations; a
live HAProxy in front of two stub nodes shows that the /readyz check, the
stickiness and the retry of refused upgrades behave as docker/README.md says.
The compose file and the Dockerfile get structural checks (no Docker engine
is needed). Missing tools skip the tests here and fail them in CI.
"""

from __future__ import annotations

import csv
import http.server
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
HAPROXY_CFG = DOCKER / "haproxy.cfg"
NGINX_CONF = DOCKER / "nginx.conf"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"

# Debian puts both daemons in /usr/sbin, which a non-root PATH may lack.
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI (.ci/run installs it)")
    pytest.skip(f"{what} not installed (apt-get install haproxy nginx python3-yaml)")


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
    if path is None:
        _missing(f"`{name}`")
    return path


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ HAProxy


def haproxy_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERBOOK_")}
    env.update(ORDERBOOK_NODE1="127.0.0.1:18001", ORDERBOOK_NODE2="127.0.0.1:18002")
    env.update(extra)
    return env


def haproxy_check(cfg: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run([tool("haproxy"), "-c", "-f", str(cfg)], env=env)


# Warnings that depend on the machine, not on the file.
_HOST_WARNINGS = re.compile(r"nameserver|resolv\.conf|FD limit|ulimit", re.I)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"ORDERBOOK_BIND": "127.0.0.1:18000", "ORDERBOOK_STATS_BIND": "127.0.0.1:18404"},
        {"ORDERBOOK_NODE1": "localhost:18001", "ORDERBOOK_NODE2": "localhost:18002"},
        {"ORDERBOOK_NODE1": "localhost:18001", "ORDERBOOK_NODE2": "127.0.0.1:18002", "ORDERBOOK_DNS": "1"},
    ],
    ids=["defaults", "bind-and-stats", "hostnames", "dns"],
)
def test_haproxy_config_is_valid(extra):
    res = haproxy_check(HAPROXY_CFG, haproxy_env(**extra))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Configuration file is valid" in out
    warnings = [ln for ln in out.splitlines() if "[WARNING]" in ln and not _HOST_WARNINGS.search(ln)]
    assert not warnings, out


def test_haproxy_requires_the_node_addresses():
    env = haproxy_env()
    del env["ORDERBOOK_NODE1"], env["ORDERBOOK_NODE2"]
    res = haproxy_check(HAPROXY_CFG, env)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "no nodes: set ORDERBOOK_NODE1" in res.stdout + res.stderr


def node_env(n: int) -> dict[str, str]:
    return {f"ORDERBOOK_NODE{i}": f"127.0.0.1:{18000 + i}" for i in range(1, n + 1)}


@pytest.mark.parametrize(
    "nodes",
    [
        node_env(1),
        node_env(3),
        node_env(9),
        {"ORDERBOOK_NODES_DNS": "node:8000"},
        {"ORDERBOOK_NODES_DNS": "node:8000", "ORDERBOOK_NODE_SLOTS": "200", "ORDERBOOK_DNS": "1"},
        {"ORDERBOOK_NODES_DNS": "node:8000", **node_env(2)},
    ],
    ids=["one", "three", "nine", "dns", "dns-200-slots", "dns-and-addresses"],
)
def test_haproxy_takes_any_number_of_nodes(nodes):
    env = haproxy_env()
    del env["ORDERBOOK_NODE1"], env["ORDERBOOK_NODE2"]
    res = haproxy_check(HAPROXY_CFG, dict(env, **nodes))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    warnings = [ln for ln in out.splitlines() if "[WARNING]" in ln and not _HOST_WARNINGS.search(ln)]
    assert not warnings, out


def test_haproxy_unresolvable_node_is_fatal_only_without_dns():
    env = haproxy_env(ORDERBOOK_NODE1="no-such-node.invalid:8000")
    res = haproxy_check(HAPROXY_CFG, env)
    assert res.returncode != 0, res.stdout + res.stderr
    # With ORDERBOOK_DNS (compose) that node starts out of rotation instead.
    res = haproxy_check(HAPROXY_CFG, dict(env, ORDERBOOK_DNS="1"))
    assert res.returncode == 0, res.stdout + res.stderr


def test_haproxy_rejects_a_broken_copy(tmp_path):
    text = HAPROXY_CFG.read_text()
    assert "hash-type consistent" in text
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(text.replace("hash-type consistent", "hash-type consistant"))
    res = haproxy_check(broken, haproxy_env())
    assert res.returncode != 0, res.stdout + res.stderr


# What both HAProxy configs (plain and TLS) need for WebSockets and failover.
HAPROXY_WS_DIRECTIVES = (
    "mode http",
    "timeout tunnel 1h",
    "timeout client-fin",
    "timeout http-request 10s",
    "balance source",
    "hash-type consistent",
    "uri /readyz",
    "on-marked-down shutdown-sessions",
    'server node1 "${ORDERBOOK_NODE1}" check',
    'server node2 "${ORDERBOOK_NODE2}" check',
)


def test_haproxy_settings_for_websockets_and_failover():
    text = HAPROXY_CFG.read_text()
    for directive in HAPROXY_WS_DIRECTIVES:
        assert directive in text, directive
    # Either of these would end the connection after each request and break
    # keep-alive, which the WebSocket upgrade does not need anyway.
    assert "option httpclose" not in text and "option http-server-close" not in text


class StubNode:
    """A stand-in node: /readyz and /who answer what the test sets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.readyz = (200, {"status": "ready", "connections": 0})
        self.who_status = 200
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/readyz":
                    status, body = stub.readyz
                    payload = json.dumps(body).encode()
                elif self.path == "/who":
                    status, payload = stub.who_status, stub.name.encode()
                else:
                    status, payload = 404, b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_get(url: str) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, repr(e)


@contextmanager
def running_haproxy(tmp_path: Path, *nodes: str, **extra: str):
    """HAProxy in the foreground on free ports, as the README describes, in
    front of `nodes` (ORDERBOOK_NODE1, 2, ...) and `extra` variables."""
    bind, stats = free_port(), free_port()
    env = haproxy_env(ORDERBOOK_BIND=f"127.0.0.1:{bind}", ORDERBOOK_STATS_BIND=f"127.0.0.1:{stats}")
    del env["ORDERBOOK_NODE1"], env["ORDERBOOK_NODE2"]
    env.update({f"ORDERBOOK_NODE{i}": node for i, node in enumerate(nodes, 1)}, **extra)
    log = tmp_path / "haproxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [tool("haproxy"), "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 10
        while http_get(f"http://127.0.0.1:{stats}/stats;csv")[0] != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)  # polling a condition, bounded by the deadline
        yield f"http://127.0.0.1:{bind}", f"http://127.0.0.1:{stats}/stats;csv", log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def server_states(stats_url: str, prefix: str = "node") -> dict[str, str]:
    status, text = http_get(stats_url)
    assert status == 200, text
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {r["svname"]: r["status"] for r in rows if r["pxname"] == "nodes" and r["svname"].startswith(prefix)}


def test_haproxy_serves_as_many_nodes_as_are_named(tmp_path):
    stubs = [StubNode(f"node{i}") for i in range(1, 4)]
    try:
        with running_haproxy(tmp_path, *(s.address for s in stubs)) as (lb, stats, log):
            wait_states(stats, {"node1": "UP", "node2": "UP", "node3": "UP"}, log)
            # The third node takes traffic: with the others not ready, it answers.
            stubs[0].readyz = stubs[1].readyz = (503, {"status": "starting"})
            wait_states(stats, {"node1": "DOWN", "node2": "DOWN", "node3": "UP"}, log)
            assert http_get(lb + "/who") == (200, "node3")
    finally:
        for s in stubs:
            s.close()


def test_haproxy_makes_a_slot_per_node_for_a_dns_name(tmp_path):
    # A name the DNS servers do not know: its slots exist and wait, out of rotation.
    stub = StubNode("node1")
    try:
        extra = {"ORDERBOOK_NODES_DNS": "orderbook-node.invalid:8000", "ORDERBOOK_NODE_SLOTS": "5"}
        with running_haproxy(tmp_path, stub.address, **extra) as (lb, stats, log):
            wait_states(stats, {"node1": "UP"}, log)
            slots = server_states(stats, prefix="dns")
            assert sorted(slots) == [f"dns{i}" for i in range(1, 6)], slots
            assert all(state.startswith("MAINT") for state in slots.values()), slots
            assert http_get(lb + "/who") == (200, "node1")
    finally:
        stub.close()


def wait_states(stats_url: str, want: dict[str, str], log: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (got := server_states(stats_url)) != want:
        assert time.monotonic() < deadline, f"{got} != {want}\n{log.read_text()[-3000:]}"
        time.sleep(0.1)  # polling a condition, bounded by the deadline


def test_haproxy_readiness_stickiness_and_retry(tmp_path):
    a, b = StubNode("node1"), StubNode("node2")
    try:
        with running_haproxy(tmp_path, a.address, b.address) as (lb, stats, log):
            wait_states(stats, {"node1": "UP", "node2": "UP"}, log)

            status, home = http_get(lb + "/who")
            assert status == 200 and home in ("node1", "node2")
            other = "node2" if home == "node1" else "node1"
            home_stub = a if home == "node1" else b
            for _ in range(5):  # sticky: same client address, same node
                assert http_get(lb + "/who") == (200, home)

            # Full: stays in (its subscribers keep their sessions); a request
            # it refuses with 503 is retried on the other node.
            home_stub.readyz = (503, {"status": "full", "connections": 1})
            home_stub.who_status = 503
            time.sleep(1.5)  # three check intervals
            assert server_states(stats) == {"node1": "UP", "node2": "UP"}
            assert http_get(lb + "/who") == (200, other)
            home_stub.who_status = 200

            # Not ready for any other reason: taken out, traffic moves.
            home_stub.readyz = (503, {"status": "starting"})
            wait_states(stats, {home: "DOWN", other: "UP"}, log)
            assert http_get(lb + "/who") == (200, other)

            # Back: its clients land on it again (consistent hashing).
            home_stub.readyz = (200, {"status": "ready"})
            wait_states(stats, {"node1": "UP", "node2": "UP"}, log)
            assert http_get(lb + "/who") == (200, home)
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ nginx

NGINX_VARS = ("ORDERBOOK_BIND", "ORDERBOOK_NODE1", "ORDERBOOK_NODE2")


def render_nginx(prefix: Path, text: str | None = None) -> Path:
    """What `envsubst '${ORDERBOOK_BIND} ${ORDERBOOK_NODE1} ${ORDERBOOK_NODE2}'` does."""
    text = NGINX_CONF.read_text() if text is None else text
    values = {
        "ORDERBOOK_BIND": "127.0.0.1:18000",
        "ORDERBOOK_NODE1": "127.0.0.1:18001",
        "ORDERBOOK_NODE2": "127.0.0.1:18002",
    }
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    assert "${ORDERBOOK_" not in text
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


def nginx_test(prefix: Path, conf: Path) -> subprocess.CompletedProcess:
    return run([tool("nginx"), "-t", "-p", f"{prefix}/", "-e", "stderr", "-c", str(conf)])


def test_nginx_config_is_valid(tmp_path):
    text = NGINX_CONF.read_text()
    for name in NGINX_VARS:
        assert "${" + name + "}" in text, name
    res = nginx_test(tmp_path, render_nginx(tmp_path))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "test is successful" in out
    assert not (tmp_path / "nginx.pid").exists() or (tmp_path / "nginx.pid").read_text() == ""


def test_nginx_rejects_a_broken_copy(tmp_path):
    text = NGINX_CONF.read_text()
    assert "proxy_buffering off;" in text
    conf = render_nginx(tmp_path, text.replace("proxy_buffering off;", "proxy_buffering offf;", 1))
    res = nginx_test(tmp_path, conf)
    assert res.returncode != 0, res.stdout + res.stderr


def test_nginx_websocket_locations():
    text = NGINX_CONF.read_text()
    assert re.search(r"map \$http_upgrade \$connection_upgrade", text)
    assert "hash $remote_addr consistent;" in text
    for path in ("/ws", "/feed"):
        m = re.search(r"location = " + re.escape(path) + r" \{(.*?)\n        \}", text, re.S)
        assert m, path
        block = m.group(1)
        for directive in (
            "proxy_set_header Upgrade $http_upgrade;",
            "proxy_set_header Connection $connection_upgrade;",
            "proxy_read_timeout 3600s;",
            "proxy_send_timeout 3600s;",
            "proxy_buffering off;",
        ):
            assert directive in block, (path, directive)
    assert "proxy_http_version 1.1;" in text


# ------------------------------------------------------------------ TLS-terminating variants

HAPROXY_TLS_CFG = DOCKER / "haproxy-tls.cfg"
NGINX_TLS_CONF = DOCKER / "nginx-tls.conf"


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """A throwaway CA's certificate for 127.0.0.1: the chain, its key, and
    both in one file (HAProxy's form)."""
    import trustme

    cert = trustme.CA().issue_cert("127.0.0.1", "localhost")
    files = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem", "pem": tmp_path / "site.pem"}
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    cert.private_key_and_cert_chain_pem.write_to_path(str(files["pem"]))
    return files


def haproxy_tls_env(pem: Path | None, **extra: str) -> dict[str, str]:
    env = haproxy_env(**extra)
    env.pop("ORDERBOOK_TLS_PEM", None)
    if pem is not None:
        env["ORDERBOOK_TLS_PEM"] = str(pem)
    return env


@pytest.mark.parametrize(
    "extra",
    [{}, {"ORDERBOOK_BIND": "127.0.0.1:18443", "ORDERBOOK_STATS_BIND": "127.0.0.1:18404"}, {"ORDERBOOK_DNS": "1"}],
    ids=["defaults", "bind-and-stats", "dns"],
)
def test_haproxy_tls_config_is_valid(tls_files, extra):
    res = haproxy_check(HAPROXY_TLS_CFG, haproxy_tls_env(tls_files["pem"], **extra))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Configuration file is valid" in out
    warnings = [ln for ln in out.splitlines() if "[WARNING]" in ln and not _HOST_WARNINGS.search(ln)]
    assert not warnings, out


def test_haproxy_tls_needs_a_certificate_with_its_key(tls_files):
    res = haproxy_check(HAPROXY_TLS_CFG, haproxy_tls_env(None))
    assert res.returncode != 0, res.stdout + res.stderr
    # The chain alone: HAProxy looks for the key beside it and finds none.
    res = haproxy_check(HAPROXY_TLS_CFG, haproxy_tls_env(tls_files["cert"]))
    assert res.returncode != 0, res.stdout + res.stderr
    assert "key" in (res.stdout + res.stderr).lower()


def test_haproxy_tls_keeps_the_plain_configs_websocket_and_failover_settings():
    text = HAPROXY_TLS_CFG.read_text()
    assert 'ssl crt "${ORDERBOOK_TLS_PEM}"' in text
    assert "http-request set-header X-Forwarded-Proto https" in text
    assert "ssl-min-ver TLSv1.2" in text
    for directive in (*HAPROXY_WS_DIRECTIVES, "retry-on conn-failure empty-response 503"):
        assert directive in text, directive
    # A draining node stays in (503s are retried elsewhere) so that its
    # sessions are not all cut at once by shutdown-sessions.
    expect = next(ln for ln in text.splitlines() if "http-check expect" in ln)
    for status in ("ready", "full", "draining"):
        assert status in expect, expect
    assert "option httpclose" not in text and "option http-server-close" not in text


NGINX_TLS_VARS = (*NGINX_VARS, "ORDERBOOK_TLS_CERT", "ORDERBOOK_TLS_KEY")


def render_nginx_tls(prefix: Path, cert: Path, key: Path) -> Path:
    """The TLS template rendered as `envsubst` with its five names would."""
    text = NGINX_TLS_CONF.read_text()
    text = text.replace("${ORDERBOOK_TLS_CERT}", str(cert)).replace("${ORDERBOOK_TLS_KEY}", str(key))
    return render_nginx(prefix, text)


def test_nginx_tls_config_is_valid(tmp_path, tls_files):
    text = NGINX_TLS_CONF.read_text()
    for name in NGINX_TLS_VARS:
        assert "${" + name + "}" in text, name
    res = nginx_test(tmp_path, render_nginx_tls(tmp_path, tls_files["cert"], tls_files["key"]))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "test is successful" in out


def test_nginx_tls_refuses_a_missing_key(tmp_path, tls_files):
    res = nginx_test(tmp_path, render_nginx_tls(tmp_path, tls_files["cert"], tmp_path / "absent.pem"))
    assert res.returncode != 0, res.stdout + res.stderr


def test_nginx_tls_listens_with_tls_and_keeps_the_websocket_locations():
    text = NGINX_TLS_CONF.read_text()
    assert re.search(r"listen \$\{ORDERBOOK_BIND\} ssl;", text)
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert "hash $remote_addr consistent;" in text and "proxy_http_version 1.1;" in text
    for path in ("/ws", "/feed"):
        m = re.search(r"location = " + re.escape(path) + r" \{(.*?)\n        \}", text, re.S)
        assert m, path
        for directive in (
            "proxy_set_header Upgrade $http_upgrade;",
            "proxy_set_header Connection $connection_upgrade;",
            "proxy_read_timeout 3600s;",
            "proxy_buffering off;",
        ):
            assert directive in m.group(1), (path, directive)


# ------------------------------------------------------------------ compose


def load_yaml(path: Path):
    """PyYAML in this interpreter, else in a system python3 (not a project dependency)."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        return yaml.safe_load(path.read_text())
    code = "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"
    candidates = [shutil.which("python3"), "/usr/bin/python3"]
    for py in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        res = run([py, "-c", code, str(path)])
        if res.returncode == 0:
            return json.loads(res.stdout)
    _missing("PyYAML (in this interpreter or the system python3)")


def test_compose_structure():
    doc = load_yaml(COMPOSE)
    services = doc["services"]
    assert set(services) >= {"redis", "node1", "node2", "haproxy"}

    redis = services["redis"]
    assert redis["image"] == "redis:7"
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    named = {v.split(":")[0] for v in redis["volumes"]}
    assert named <= set(doc.get("volumes") or {}), "named volumes must be declared"
    assert redis["healthcheck"]["test"]

    for name in ("node1", "node2"):
        node = services[name]
        # The alias HAProxy resolves to find every node (ORDERBOOK_NODES_DNS below).
        assert "node" in node["networks"]["default"]["aliases"]
        build = node["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        argv = shlex.split(node["command"])
        assert argv[:2] == ["orderbook", "serve"]
        # Not strict: the token's `${VAR:?message}` splits into two words, the last unpaired.
        flags = dict(zip(argv[2::2], argv[3::2], strict=False))
        assert flags["--host"] == "0.0.0.0" and flags["--port"] == "8000"
        assert flags["--redis"] == "redis://redis:6379/0"
        assert flags["--feed-token"].startswith("${ORDERBOOK_FEED_TOKEN")
        assert node["ulimits"]["nofile"] == {"soft": 1048576, "hard": 1048576}
        assert node["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "/healthz" in " ".join(node["healthcheck"]["test"])

    lb = services["haproxy"]
    assert lb["image"].startswith("haproxy:2.")
    mounts = [v.split(":") for v in lb["volumes"]]
    assert any((COMPOSE.parent / m[0]).resolve() == HAPROXY_CFG for m in mounts)
    assert any(m[1] == "/usr/local/etc/haproxy/haproxy.cfg" for m in mounts)
    assert any(str(p).split(":")[-2:] == ["8000", "8000"] for p in lb["ports"])
    env = lb["environment"]
    assert env["ORDERBOOK_NODES_DNS"] == "node:8000"
    assert "ORDERBOOK_DNS" in env
    # haproxy.cfg starts with what compose gives it, and nothing else.
    only_compose = haproxy_env(**{k: str(v) for k, v in env.items()})
    del only_compose["ORDERBOOK_NODE1"], only_compose["ORDERBOOK_NODE2"]
    res = haproxy_check(HAPROXY_CFG, only_compose)
    assert res.returncode == 0, res.stdout + res.stderr
    assert lb["ulimits"]["nofile"]["soft"] >= 65536

    # service_healthy only makes sense for a service that has a health check.
    for svc in services.values():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], dep


def test_compose_config_with_docker_compose_if_present():
    docker = shutil.which("docker")
    if docker is None or run([docker, "compose", "version"]).returncode != 0:
        pytest.skip("the docker compose plugin is not installed (optional check)")
    env = dict(os.environ, ORDERBOOK_FEED_TOKEN="test-token")
    res = run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], env=env)
    assert res.returncode == 0, res.stdout + res.stderr


# ------------------------------------------------------------------ Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    logical, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    out = []
    for line in logical:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_static():
    ins = dockerfile_instructions()
    froms = [i for i, (k, _) in enumerate(ins) if k == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    assert all(ins[i][1].split()[0] == "python:3.11-slim" for i in froms)
    final = ins[froms[-1] :]
    kinds = [k for k, _ in final]

    users = [v for k, v in final if k == "USER"]
    assert users, "the final stage must set a USER"
    assert users[-1].split(":")[0] not in ("root", "0")

    assert ("EXPOSE", "8000") in final
    health = [v for k, v in final if k == "HEALTHCHECK"]
    assert health and "/healthz" in health[0] and "urllib" in health[0]
    assert "curl" not in health[0] and "wget" not in health[0]

    # The port is $PORT (8000 unless the container is given another), for the
    # node (`serve` reads it) and its health check alike.
    assert ("ENV", "PORT=8000") in final
    assert "os.environ.get('PORT'" in health[0] and ":8000/" not in health[0]
    cmd = [v for k, v in final if k == "CMD"]
    assert cmd and json.loads(cmd[-1]) == ["orderbook", "serve", "--host", "0.0.0.0"]
    assert kinds.index("USER") < kinds.index("CMD")

    # No secrets baked in: no ENV/ARG that sets a token, password or key.
    for k, v in ins:
        if k in ("ENV", "ARG"):
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|_KEY)\w*\s*=", v, re.I), v

    # What the build copies exists and is not excluded from the context.
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git"} <= ignored
    for k, v in ins:
        if k == "COPY" and "--from" not in v:
            *sources, _dest = v.split()
            for src in sources:
                assert (ROOT / src).exists(), src
                assert src not in ignored, src


def test_dockerfile_healthcheck_command_runs(tmp_path):
    """The HEALTHCHECK command itself: exit 0 on a 200 from /healthz, else not."""
    health = next(v for k, v in dockerfile_instructions() if k == "HEALTHCHECK")
    argv = json.loads(health[health.index("CMD") + 3 :].strip())
    assert argv[0] == "python"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/healthz"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        command = [sys.executable, *argv[1:]]
        assert run(command, env=dict(os.environ, PORT=str(port))).returncode == 0
        assert run(command, env=dict(os.environ, PORT=str(free_port()))).returncode != 0
    finally:
        srv.shutdown()
        srv.server_close()
