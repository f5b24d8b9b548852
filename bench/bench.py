#!/usr/bin/env python3
"""Sluice runtime benchmark: REST and MCP load against the release runtime, pgbench with the same SQL,
and the same reads through a peer (bench/peers.py).

Run through `bench/run`, which starts the private PostgreSQL (scripts/services.sh), checks the tools
and builds the release runtime first. Everything listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import peers
import proc

BENCH_DIR = Path(__file__).resolve().parent
LUA_DIR = BENCH_DIR / "wrk"
SQL_DIR = BENCH_DIR / "sql"
DATASET = BENCH_DIR / "dataset.sql"
SCHEMA100 = SQL_DIR / "schema100.sql"

BENCH_DATABASE = "sluice_bench"
SCHEMA100_DATABASE = "sluice_bench_schema100"
DATASET_ORDERS = 500_000
BASE_PATH = "/api/v1"
MCP_PATH = "/mcp"
KEY_HEADER = "X-API-Key"
MCP_PROTOCOL = "2025-11-25"
MCP_STATELESS_PROTOCOL = "2026-07-28"
ROLE = "bench"
KEY_NAME = "load"
# Starts timed per run on the 100-table schema; the run reports their median.
START_SAMPLES = 3


class BenchError(Exception):
    """A failure that stops the benchmark, with a message that says what to do."""


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- PostgreSQL -------------------------------------------------------------------------------


@dataclass
class Postgres:
    """The private PostgreSQL from scripts/services.sh, reached through psql and pgbench."""

    host: str
    port: int
    user: str
    password: str
    pgbench: str

    @classmethod
    def from_url(cls, url: str, pgbench: str) -> "Postgres":
        parts = urllib.parse.urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise BenchError(f"SLUICE_TEST_POSTGRES_URL points at {parts.hostname}; the benchmark runs on loopback only")
        return cls(parts.hostname, parts.port or 5432, parts.username or "", parts.password or "", pgbench)

    def url(self, database: str) -> str:
        user = urllib.parse.quote(self.user, safe="")
        password = urllib.parse.quote(self.password, safe="")
        return f"postgres://{user}:{password}@{self.host}:{self.port}/{database}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
                "PGPASSWORD": self.password}

    def psql(self, database: str, sql: str | None = None, file: Path | None = None) -> str:
        command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA", "-d", database]
        command += ["-f", str(file)] if file else ["-c", sql or ""]
        result = subprocess.run(command, env=self.env(), capture_output=True, text=True)
        if result.returncode != 0:
            what = file.name if file else sql
            raise BenchError(f"psql on {database} failed ({what}): {result.stderr.strip()}")
        return result.stdout.strip()

    def database_comment(self, database: str) -> str | None:
        """The comment on `database` (where the loaded data set's digest is kept), or None if it is absent."""
        exists = self.psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{database}'")
        if exists != "1":
            return None
        return self.psql("postgres", f"SELECT coalesce(shobj_description(oid, 'pg_database'), '') "
                                     f"FROM pg_database WHERE datname = '{database}'")

    def ensure_loaded(self, database: str, script: Path, force: bool) -> None:
        """Creates `database` from `script` unless it already holds exactly that script's data."""
        digest = "sluice-bench " + hashlib.sha256(script.read_bytes()).hexdigest()
        comment = self.database_comment(database)
        if comment == digest and not force:
            return
        say(f"loading {script.name} into database {database} (once per change of the script)")
        if comment is None:
            self.psql("postgres", f"CREATE DATABASE {database}")
        started = time.monotonic()
        self.psql(database, file=script)
        self.psql("postgres", f"COMMENT ON DATABASE {database} IS '{digest}'")
        say(f"loaded {database} in {time.monotonic() - started:.0f} s")

    def reset_orders(self) -> None:
        """Removes the orders the insert case added, so every run reads the same data set."""
        self.psql(BENCH_DATABASE, f"DELETE FROM orders WHERE id > {DATASET_ORDERS}")


# --- Runtime process --------------------------------------------------------------------------


def manifests(directory: Path, database_name: str, pool_size: int, row_filter: bool) -> None:
    """Writes the DataApi and the benchmark's ApiRole: a denied field, and a row filter unless disabled."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "dataapi.yaml").write_text(f"""\
apiVersion: sluice.dev/v1alpha1
kind: DataApi
metadata: {{ name: {database_name}, namespace: bench }}
spec:
  database:
    engine: postgres
    connectionSecretRef: {{ name: bench-db, key: url }}
    schemas: [public]
    pool: {{ maxConnections: {pool_size} }}
  rest: {{ enabled: true, basePath: {BASE_PATH}, defaultPageSize: 100, maxPageSize: 1000 }}
  mcp: {{ enabled: true, path: {MCP_PATH} }}
  auth: {{ apiKeyHeader: {KEY_HEADER} }}
""")
    # The row filters hold for every row of the data set (balances and amounts are never negative),
    # so responses match pgbench's, while the runtime still adds and binds the predicate.
    customers_filter = "\n      rowFilter: [{ column: balance, op: gte, value: 0 }]" if row_filter else ""
    orders_filter = "\n      rowFilter: [{ column: amount, op: gte, value: 0 }]" if row_filter else ""
    (directory / "roles.yaml").write_text(f"""\
apiVersion: sluice.dev/v1alpha1
kind: ApiRole
metadata: {{ name: {ROLE}, namespace: bench }}
spec:
  dataApis: [{database_name}]
  description: The benchmark's caller, governed as an application would be.
  rules:
    - tables: [customers]
      verbs: [read]
      fields: {{ deny: [email] }}{customers_filter}
    - tables: [orders]
      verbs: [read, create]{orders_filter}
    - tables: ["t*"]
      verbs: [read]
  mcp: {{ enabled: true }}
  apiKeys:
    - name: {KEY_NAME}
""")


class Runtime(proc.Server):
    """One `sluice-runtime serve --manifests` process on 127.0.0.1."""

    def __init__(self, binary: Path, manifests_dir: Path, database_url: str, port: int, log_path: Path,
                 log_level: str):
        self.port = port
        self.key: str | None = None
        self._key_seen = threading.Event()
        env = {**os.environ, "SLUICE_DATABASE_URL": database_url, "RUST_LOG": log_level}
        self._log = log_path.open("ab")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [str(binary), "serve", "--manifests", str(manifests_dir), "--listen", f"127.0.0.1:{port}"],
            env=env, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._log_path = log_path
        # The banner prints the generated key once; keep draining stdout so the process never blocks on it.
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        pattern = re.compile(rf"^\s+{ROLE}/{KEY_NAME}: (\S+)\s*$")
        for line in self.process.stdout:
            match = pattern.match(line)
            if match:
                self.key = match.group(1)
                self._key_seen.set()
                break
        # Then the audit lines, one per request: drained in large reads and dropped, since
        # splitting them into lines here took a share of the CPU the runtime is measured on.
        descriptor = self.process.stdout.fileno()
        while os.read(descriptor, 1 << 16):
            pass

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Polls /readyz until it answers 200; returns seconds since the process was started."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"sluice-runtime exited with status {self.process.returncode}; see {self._log_path}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            finally:
                connection.close()
            time.sleep(0.002)
        raise BenchError(f"sluice-runtime was not ready within {timeout:.0f} s; see {self._log_path}")

    def wait_key(self, timeout: float = 30.0) -> str:
        if not self._key_seen.wait(timeout):
            raise BenchError(f"sluice-runtime did not print the key of {ROLE}/{KEY_NAME}; see {self._log_path}")
        return self.key or ""


# --- HTTP helpers -----------------------------------------------------------------------------


def http_call(port: int, method: str, path: str, headers: dict[str, str], body: str | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode("utf-8", "replace")
    finally:
        connection.close()


BATCH_COUNTERS = ("sluice_runtime_db_batched_statements_total", "sluice_runtime_db_batched_reads_total")


def batch_counters(port: int) -> tuple[float, float] | None:
    """The runtime's shared-statement counters (statements, reads), or None without them."""
    status, _, body = http_call(port, "GET", "/metrics", {})
    samples = dict(line.split(" ", 1) for line in body.splitlines() if line.split(" ", 1)[0] in BATCH_COUNTERS)
    if status != 200 or len(samples) != len(BATCH_COUNTERS):
        return None
    return float(samples[BATCH_COUNTERS[0]]), float(samples[BATCH_COUNTERS[1]])


def json_rpc_payload(content_type: str, text: str) -> dict:
    """The JSON-RPC message of a Streamable HTTP response: plain JSON, or the first `data:` event of an SSE stream."""
    if "text/event-stream" in content_type:
        for line in text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                return json.loads(line[5:])
        raise BenchError(f"MCP answered an event stream without a JSON-RPC message: {text[:200]}")
    return json.loads(text)


# --- Cases ------------------------------------------------------------------------------------


@dataclass
class Case:
    """One workload: a wrk script over HTTP and the pgbench script that runs the same SQL."""

    name: str
    lua: str
    sql: str
    description: str
    # For a peer's case, Sluice's case with the same request: its pgbench figure and its rate are
    # what the peer's are compared with.
    twin: str | None = None


CASES = [
    Case("get_by_pk", "get_by_pk.lua", "get_by_pk.sql", "GET /customers/{random id}"),
    Case("list_country", "list_country.lua", "list_country.sql", "GET /customers?country=eq.X&order=id&limit=20"),
    # Right after the REST list it is compared with, so the two meet the machine in as close to
    # the same state as one run allows (the writes of insert_order come later).
    Case("mcp_query_rows", "mcp_query_rows.lua", "list_country.sql",
         f"MCP {MCP_PROTOCOL} session: tools/call query_rows, list_country"),
    Case("mcp_stateless", "mcp_query_rows.lua", "list_country.sql",
         f"MCP {MCP_STATELESS_PROTOCOL}, no session: tools/call query_rows, list_country"),
    Case("embed_orders", "embed_orders.lua", "embed_orders.sql", "list_country + orders(id,amount,status)"),
    Case("insert_order", "insert_order.lua", "insert_order.sql", "POST /orders (one row)"),
    # The ceiling, not a workload: its ratio says what fraction of pgbench's get_by_pk rate plain
    # HTTP reaches on this machine when it also does no database work at all.
    Case("http_floor", "http_floor.lua", "get_by_pk.sql", "GET /healthz (HTTP alone: no auth, no database)"),
    # The peer, after Sluice has stopped: the same reads through Platformatic DB (bench/peers.py).
    Case("platformatic_get_by_pk", "platformatic_get_by_pk.lua", "get_by_pk.sql",
         f"{peers.NAME}: GET /customers/{{random id}}", twin="get_by_pk"),
    Case("platformatic_list_country", "platformatic_list_country.lua", "list_country.sql",
         f"{peers.NAME}: GET /customers?where.country.eq=X&orderBy.id=asc&limit=20", twin="list_country"),
]
# The MCP cases, each measured against the REST list; the stateless one speaks 2026-07-28.
MCP_CASES = ("mcp_query_rows", "mcp_stateless")
# Throughput targets: a case's rate over its reference's (a side of the same case) in the same run.
RATE_TARGETS = {"get_by_pk": ("pgbench", 0.70), "list_country": ("pgbench", 0.50),
                "mcp_query_rows": ("rest", 0.50), "mcp_stateless": ("rest", 0.50)}
RATE_LABELS = {"pgbench": "HTTP/pgbench", "rest": "MCP/REST list"}


@dataclass
class Figures:
    """Throughput and latency of one load run."""

    rate: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    # CPU time the server (the runtime, or the peer) spent per request over the run, in µs.
    cpu_us: float | None = None
    # CPU time per request, in µs, of the load generator (wrk, or pgbench's own client), and of
    # the whole machine busy over the run (every process: the load generator, the server,
    # PostgreSQL and anything else running).
    load_cpu_us: float | None = None
    machine_cpu_us: float | None = None
    # Of the requests, those whose read shared a statement, and the statements they shared (the
    # runtime's batch counters over the run); None when the runtime exports no such counters.
    shared_reads: float | None = None
    shared_statements: float | None = None


@dataclass
class RunResult:
    cases: dict[str, dict[str, Figures]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    peer_memory: dict[str, float] = field(default_factory=dict)
    start_to_ready_ms: float | None = None


def preflight(case: Case, port: int, key: str) -> str | None:
    """Checks one request of the case by hand; returns why it fails, or None."""
    headers = {KEY_HEADER: key}
    if case.name == "get_by_pk":
        status, _, body = http_call(port, "GET", f"{BASE_PATH}/customers/1", headers)
        row = json.loads(body) if status == 200 else {}
        ok = row.get("id") == 1 and "email" not in row
    elif case.name == "list_country":
        status, _, body = http_call(port, "GET", f"{BASE_PATH}/customers?country=eq.FR&order=id&limit=20", headers)
        rows = json.loads(body) if status == 200 else []
        ok = len(rows) == 20 and all("email" not in row for row in rows)
    elif case.name == "embed_orders":
        status, _, body = http_call(
            port, "GET",
            f"{BASE_PATH}/customers?select=id,name,country,balance,orders(id,amount,status)&country=eq.FR&order=id&limit=20",
            headers)
        rows = json.loads(body) if status == 200 else []
        ok = len(rows) == 20 and all(len(row.get("orders", [])) == 5 for row in rows)
    elif case.name == "insert_order":
        status, _, body = http_call(port, "POST", f"{BASE_PATH}/orders", {**headers, "Content-Type": "application/json"},
                                    '{"customer_id":1,"amount":12.50,"status":"new"}')
        ok = status == 201
    elif case.name == "http_floor":
        status, _, body = http_call(port, "GET", "/healthz", {})
        ok = status == 200
    else:
        raise AssertionError(case.name)
    return None if ok else f"{case.description}: HTTP {status}: {body[:300]}"


@dataclass
class McpSession:
    """How wrk calls the tool: the revision's headers (a session id for 2025-11-25) and the body."""
    headers: dict[str, str]
    body_template: str


def open_mcp_session(port: int, key: str, arguments_file: Path,
                     stateless: bool) -> tuple[McpSession | None, str | None]:
    """One checked tools/call, after initialize and notifications/initialized for a 2025-11-25 session;
    returns how to call, or why the case is skipped."""
    headers = {KEY_HEADER: key, "Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    params: dict = {"name": "query_rows", "arguments": json.loads(arguments_file.read_text())}
    if stateless:
        # 2026-07-28: no handshake; each request names its revision, and its headers repeat the method and tool.
        params["_meta"] = {"io.modelcontextprotocol/protocolVersion": MCP_STATELESS_PROTOCOL,
                           "io.modelcontextprotocol/clientInfo": {"name": "sluice-bench", "version": "0.1.0"},
                           "io.modelcontextprotocol/clientCapabilities": {}}
        call_headers = {"MCP-Protocol-Version": MCP_STATELESS_PROTOCOL, "Mcp-Method": "tools/call",
                        "Mcp-Name": "query_rows"}
    else:
        initialize = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                      "params": {"protocolVersion": MCP_PROTOCOL, "capabilities": {},
                                 "clientInfo": {"name": "sluice-bench", "version": "0.1.0"}}}
        status, response_headers, body = http_call(port, "POST", MCP_PATH, headers, json.dumps(initialize))
        if status == 404:
            return None, f"MCP endpoint not available (POST {MCP_PATH} answered 404)"
        if status != 200:
            return None, f"MCP initialize answered HTTP {status}: {body[:300]}"
        lowered = {name.lower(): value for name, value in response_headers.items()}
        session_id = lowered.get("mcp-session-id")
        if not session_id:
            return None, "MCP initialize answered without an Mcp-Session-Id header"
        call_headers = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": MCP_PROTOCOL}
        http_call(port, "POST", MCP_PATH, {**headers, **call_headers},
                  json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    headers.update(call_headers)

    template = json.dumps({"jsonrpc": "2.0", "id": "__ID__", "method": "tools/call",
                           "params": params}).replace('"__ID__"', "__ID__")
    status, response_headers, body = http_call(
        port, "POST", MCP_PATH, headers, template.replace("__ID__", "1").replace("__COUNTRY__", "FR"))
    if status == 404:
        return None, f"MCP endpoint not available (POST {MCP_PATH} answered 404)"
    content_type = {n.lower(): v for n, v in response_headers.items()}.get("content-type", "")
    problem = None
    if status != 200:
        problem = f"HTTP {status}: {body[:300]}"
    else:
        message = json_rpc_payload(content_type, body)
        result = message.get("result") or {}
        if "error" in message or result.get("isError"):
            problem = json.dumps(message.get("error") or result.get("content"))[:400]
    if problem:
        tools_status, tools_headers, tools_body = http_call(
            port, "POST", MCP_PATH, headers, json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        schema = "unknown"
        if tools_status == 200:
            listed = json_rpc_payload({n.lower(): v for n, v in tools_headers.items()}.get("content-type", ""),
                                      tools_body)
            for tool in (listed.get("result") or {}).get("tools", []):
                if tool.get("name") == "query_rows":
                    schema = json.dumps(tool.get("inputSchema"))
        return None, (f"MCP query_rows refused the arguments in {arguments_file.name} ({problem}); "
                      f"edit that file to match the tool's input schema: {schema[:600]}")
    return McpSession(call_headers, template), None


@dataclass
class Endpoint:
    """Where wrk sends a case's requests, the credential each carries, and the server's CPU clock."""

    port: int
    base_path: str
    key_header: str
    key: str
    cpu_seconds: Callable[[], float]


def run_wrk(case: Case, endpoint: Endpoint, duration: int, connections: int, threads: int,
            mcp: McpSession | None) -> Figures:
    env = {**os.environ, "SLUICE_BENCH_LUA_DIR": str(LUA_DIR), "SLUICE_BENCH_BASE_PATH": endpoint.base_path,
           "SLUICE_BENCH_KEY_HEADER": endpoint.key_header, "SLUICE_BENCH_KEY": endpoint.key}
    if mcp:
        env.update({"SLUICE_BENCH_MCP_HEADERS": "\n".join(f"{n}: {v}" for n, v in mcp.headers.items()),
                    "SLUICE_BENCH_MCP_BODY": mcp.body_template, "SLUICE_BENCH_MCP_PATH": MCP_PATH})
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s", "--timeout", "5s",
               "-s", str(LUA_DIR / case.lua), f"http://127.0.0.1:{endpoint.port}"]
    cpu_before = endpoint.cpu_seconds()
    clocks = proc.CpuClocks()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    machine, load = clocks.spent()
    cpu = endpoint.cpu_seconds() - cpu_before
    summary = next((line for line in result.stdout.splitlines() if line.startswith("SLUICE_BENCH ")), None)
    if result.returncode != 0 or summary is None:
        raise BenchError(f"wrk failed for {case.name}: {result.stderr.strip() or result.stdout.strip()}")
    figures = json.loads(summary.removeprefix("SLUICE_BENCH "))
    errors = sum(figures[name] for name in
                 ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    requests = figures["requests"]
    cpu_us, load_cpu_us, machine_cpu_us = per_request(requests, cpu, load, machine)
    return Figures(requests / (figures["duration_us"] / 1e6), figures["p50_us"] / 1000,
                   figures["p99_us"] / 1000, errors, cpu_us=cpu_us, load_cpu_us=load_cpu_us,
                   machine_cpu_us=machine_cpu_us)


def per_request(requests: int, *seconds: float) -> list[float | None]:
    """CPU seconds spent over a run, as µs per request."""
    return [value * 1e6 / requests if requests else None for value in seconds]


def run_pgbench(postgres: Postgres, case: Case, duration: int, connections: int, threads: int) -> Figures:
    with tempfile.TemporaryDirectory(prefix="sluice-pgbench-") as logs:
        command = [postgres.pgbench, "-n", "-M", "prepared", "-c", str(connections), "-j", str(threads),
                   "-T", str(duration), "-f", str(SQL_DIR / case.sql),
                   "-l", f"--log-prefix={logs}/tx", BENCH_DATABASE]
        clocks = proc.CpuClocks()
        result = subprocess.run(command, env=postgres.env(), capture_output=True, text=True)
        machine, load = clocks.spent()
        tps = re.search(r"^tps = ([\d.]+)", result.stdout, re.MULTILINE)
        failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
        processed = re.search(r"number of transactions actually processed: (\d+)", result.stdout)
        if result.returncode != 0 or not tps or not processed:
            raise BenchError(f"pgbench failed for {case.sql}: {result.stderr.strip()}")
        # The per-transaction log's third field is the latency in microseconds.
        latencies = sorted(int(line.split()[2]) for path in glob.glob(f"{logs}/tx*")
                           for line in Path(path).read_text().splitlines())
    load_cpu_us, machine_cpu_us = per_request(int(processed.group(1)), load, machine)
    return Figures(float(tps.group(1)), percentile(latencies, 50) / 1000, percentile(latencies, 99) / 1000,
                   int(failed.group(1)) if failed else 0, load_cpu_us=load_cpu_us, machine_cpu_us=machine_cpu_us)


def percentile(sorted_values: list[int], rank: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(rank / 100 * len(sorted_values)) - 1))
    return float(sorted_values[index])


# --- Orchestration ----------------------------------------------------------------------------


def start_runtime(options, work: Path, row_filter: bool, database: str, port: int, log_name: str) -> Runtime:
    folder = work / f"manifests-{database}"
    manifests(folder, database.replace("_", "-"), options.connections, row_filter)
    runtime = Runtime(options.runtime, folder, options.postgres.url(database), port, work / log_name,
                      options.runtime_log)
    try:
        runtime.wait_ready()
    except BenchError:
        runtime.stop()
        raise
    return runtime


def choose_row_filter(options, work: Path) -> tuple[bool, str]:
    """Resolves --row-filter auto: on when this runtime build grants rules that carry a row filter."""
    if options.row_filter != "auto":
        return options.row_filter == "on", f"row filter {options.row_filter} (--row-filter)"
    runtime = start_runtime(options, work, True, BENCH_DATABASE, options.port, "runtime-probe.log")
    try:
        problem = preflight(CASES[0], options.port, runtime.wait_key())
    finally:
        runtime.stop()
    if problem is None:
        return True, "row filter on"
    say(f"a rule with a row filter grants nothing in this runtime build ({problem[:120]}); "
        "running with the denied field only")
    return False, "row filter OFF: this runtime build does not grant rules with a row filter yet"


def run_once(options, work: Path, row_filter: bool, number: int) -> RunResult:
    result = RunResult()
    run_sluice(options, work, row_filter, number, result)
    result.start_to_ready_ms = statistics.median(
        start_to_ready(options, work, number) for _ in range(START_SAMPLES)) * 1000
    if any(case.twin for case in options.cases):
        try:
            run_peer(options, work, number, result)
        except peers.PeerError as error:
            for case in options.cases:
                if case.twin and case.name not in result.cases:
                    result.skipped[case.name] = str(error)
            say(f"run {number}: the peer's cases stopped: {error}")
    return result


def measure(case: Case, endpoint: Endpoint, options, mcp: McpSession | None = None) -> Figures:
    """A case's unmeasured warm-up, then its measured wrk run."""
    if options.warmup > 0:
        run_wrk(case, endpoint, options.warmup, options.connections, options.threads, mcp)
    return run_wrk(case, endpoint, options.duration, options.connections, options.threads, mcp)


def pgbench_for(case: Case, options, number: int) -> Figures:
    say(f"run {number}: {case.name}: pgbench {options.duration:g} s")
    return run_pgbench(options.postgres, case, options.duration, options.connections, options.threads)


def run_sluice(options, work: Path, row_filter: bool, number: int, result: RunResult) -> None:
    runtime = start_runtime(options, work, row_filter, BENCH_DATABASE, options.port, f"runtime-run{number}.log")
    try:
        key = runtime.wait_key()
        endpoint = Endpoint(options.port, BASE_PATH, KEY_HEADER, key, runtime.cpu_seconds)
        result.memory["idle"] = runtime.memory_mib()["VmRSS"]
        for case in (case for case in options.cases if not case.twin):
            mcp = None
            if case.name in MCP_CASES:
                mcp, problem = open_mcp_session(options.port, key, options.mcp_arguments,
                                                case.name == "mcp_stateless")
            else:
                problem = preflight(case, options.port, key)
            if problem:
                result.skipped[case.name] = problem
                say(f"run {number}: {case.name} skipped: {problem}")
                continue
            say(f"run {number}: {case.name}: wrk {options.duration:g} s")
            counted = batch_counters(options.port)
            http = measure(case, endpoint, options, mcp)
            if counted and (now := batch_counters(options.port)):
                http.shared_statements, http.shared_reads = now[0] - counted[0], now[1] - counted[1]
            figures = {"http": http}
            if case.name == "insert_order":
                options.postgres.reset_orders()
            if case.name in MCP_CASES and "list_country" in result.cases:
                figures["pgbench"] = result.cases["list_country"]["pgbench"]
                figures["rest"] = result.cases["list_country"]["http"]
            elif case.name == "http_floor" and "get_by_pk" in result.cases:
                figures["pgbench"] = result.cases["get_by_pk"]["pgbench"]
            else:
                figures["pgbench"] = pgbench_for(case, options, number)
            if case.name == "insert_order":
                options.postgres.reset_orders()
            result.cases[case.name] = figures
        result.memory.update(runtime.after_load())
    finally:
        runtime.stop()


def run_peer(options, work: Path, number: int, result: RunResult) -> None:
    """The peer's cases on the same database, Sluice stopped; each takes pgbench's figure from its
    twin when that ran in this run, so both servers are measured against the same one."""
    peer = peers.Platformatic(options.peer_dir, options.postgres.url(BENCH_DATABASE), options.port + 2,
                              options.connections, work / f"platformatic-run{number}.log")
    try:
        peer.wait_ready()
        endpoint = Endpoint(peer.port, "", "Authorization", peer.authorization, peer.cpu_seconds)
        result.peer_memory["idle"] = peer.memory_mib()["VmRSS"]
        governance = peer.governance_problem()
        for case in (case for case in options.cases if case.twin):
            problem = governance or peer_preflight(case, peer)
            if problem:
                result.skipped[case.name] = problem
                say(f"run {number}: {case.name} skipped: {problem}")
                continue
            say(f"run {number}: {case.name}: wrk {options.duration:g} s")
            figures = {"http": measure(case, endpoint, options)}
            if case.twin in result.cases:
                figures["pgbench"] = result.cases[case.twin]["pgbench"]
                figures["sluice"] = result.cases[case.twin]["http"]
            else:
                figures["pgbench"] = pgbench_for(case, options, number)
            result.cases[case.name] = figures
        result.peer_memory.update(peer.after_load())
    finally:
        peer.stop()


def peer_preflight(case: Case, peer: peers.Platformatic) -> str | None:
    """One request of the peer's case by hand, checked as Sluice's twin case is; returns why it fails, or None."""
    fields = f"fields={peers.CUSTOMER_FIELDS}"
    if case.twin == "get_by_pk":
        status, body = peers.get(peer.port, f"/customers/1?{fields}", peer.headers())
        row = json.loads(body) if status == 200 else {}
        ok = str(row.get("id")) == "1" and "email" not in row
    elif case.twin == "list_country":
        status, body = peers.get(peer.port, f"/customers?{fields}&where.country.eq=FR&orderBy.id=asc&limit=20",
                                 peer.headers())
        rows = json.loads(body) if status == 200 else []
        ok = len(rows) == 20 and all(row.get("country") == "FR" and "email" not in row for row in rows)
    else:
        raise AssertionError(case.name)
    return None if ok else f"{case.description}: HTTP {status}: {body[:300]}"


def start_to_ready(options, work: Path, number: int) -> float:
    """Seconds from spawning a runtime over the 100-table database to its first ready answer."""
    runtime = Runtime(options.runtime, work / f"manifests-{SCHEMA100_DATABASE}",
                      options.postgres.url(SCHEMA100_DATABASE), options.port + 1, work / f"runtime-start{number}.log",
                      options.runtime_log)
    try:
        return runtime.wait_ready()
    finally:
        runtime.stop()


# --- Report -----------------------------------------------------------------------------------


def spread(values: list[float], digits: int) -> str:
    """One figure per run: the value itself, or `median (min–max)` over several runs."""
    values = [value for value in values if value is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [headers] + rows) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


@dataclass
class Target:
    label: str
    values: list[float]
    threshold: float
    at_most: bool
    digits: int

    def mark(self) -> str:
        values = [value for value in self.values if value is not None]
        if not values:
            return "SKIP"
        median = statistics.median(values)
        return "PASS" if (median <= self.threshold if self.at_most else median >= self.threshold) else "FAIL"


def per_run(results: list[RunResult], case: str, side: str, metric: str) -> list[float]:
    """One figure of one side (`http`, `pgbench`, …) of a case, from each run that measured it."""
    return [getattr(r.cases[case][side], metric) for r in results if case in r.cases and side in r.cases[case]]


def report(results: list[RunResult], options, row_filter_note: str) -> str:
    def ratios(case: str, reference: str = "pgbench") -> list[float]:
        return [r.cases[case]["http"].rate / r.cases[case][reference].rate
                for r in results if case in r.cases and reference in r.cases[case]]

    def sharing(case: str) -> str:
        """Median reads per shared statement, and median share of requests whose read shared one."""
        runs = [r.cases[case]["http"] for r in results if case in r.cases]
        runs = [f for f in runs if f.shared_statements is not None]
        if not runs:
            return "-"
        per_statement = statistics.median(f.shared_reads / f.shared_statements if f.shared_statements else 0
                                          for f in runs)
        share = statistics.median(f.shared_reads / (f.rate * options.duration) for f in runs)
        return f"{per_statement:.1f} ({min(share, 1.0):.0%})"

    rows = []
    for case in options.cases:
        if not any(case.name in r.cases for r in results):
            rows.append([case.name, "skipped (see note)"] + [""] * 9)
            continue
        errors = sum(r.cases[case.name]["http"].errors for r in results if case.name in r.cases)
        figures = [spread(per_run(results, case.name, side, metric), digits)
                   for side, metric, digits in (("http", "rate", 0), ("http", "p50_ms", 2), ("http", "p99_ms", 2),
                                                ("http", "cpu_us", 0), ("pgbench", "rate", 0),
                                                ("pgbench", "p50_ms", 2), ("pgbench", "p99_ms", 2))]
        rows.append([case.name, *figures, spread(ratios(case.name), 2), str(errors), sharing(case.name)])
    cases_table = render_table(["case", "HTTP req/s", "p50 ms", "p99 ms", "server CPU µs/req", "pgbench tps",
                                "pg p50 ms", "pg p99 ms", "HTTP/pgbench", "HTTP errors",
                                "reads/shared statement (share)"], rows)

    rate_targets = {case: Target(f"{case}: {RATE_LABELS[reference]} >= {least:.2f}", ratios(case, reference),
                                 least, False, 2)
                    for case, (reference, least) in RATE_TARGETS.items()}
    targets = [
        rate_targets["get_by_pk"],
        Target("get_by_pk: HTTP p99 < 10 ms", per_run(results, "get_by_pk", "http", "p99_ms"), 10, True, 2),
        rate_targets["list_country"],
        rate_targets["mcp_query_rows"],
        rate_targets["mcp_stateless"],
        Target("RSS idle <= 25 MiB", [r.memory.get("idle") for r in results], 25, True, 1),
        Target("RSS after load <= 64 MiB", [r.memory.get("after_load") for r in results], 64, True, 1),
        Target("start to /readyz, 100 tables < 300 ms", [r.start_to_ready_ms for r in results], 300, True, 0),
    ]
    target_rows = [[t.label, spread(t.values, t.digits), t.mark()] for t in targets]
    target_rows.append(["peak RSS (VmHWM), for information", spread([r.memory.get("peak") for r in results], 1), ""])
    if any("http_floor" in r.cases for r in results):
        target_rows.append(["HTTP alone (/healthz)/pgbench get_by_pk, the ceiling", spread(ratios("http_floor"), 2), ""])
    targets_table = render_table(["target", "measured", "mark"], target_rows)
    tables = [cases_table, targets_table, cpu_table(results, options)]
    if any(r.peer_memory for r in results):
        tables.append(peer_table(results, options))
    header = (f"{len(results)} run(s) x {options.duration:g} s per case, {options.connections} connections, "
              f"{options.threads} threads (wrk and pgbench -M prepared alike), {row_filter_note}; "
              "cells are the median (min–max) when there are several runs; marks use the median")
    return "\n\n".join([header] + tables)


def cpu_table(results: list[RunResult], options) -> str:
    """Where each case's CPU goes on the whole machine, per request, beside pgbench's; and, for a
    throughput target, the most a request may cost the machine to meet it with every core busy."""
    cores = os.cpu_count() or 1

    def budgets(case: str) -> tuple[list[float], list[float]]:
        """Per run: the machine's CPU per request at the target's rate, and what of it is left to
        the server when everything else costs what it did."""
        reference, least = RATE_TARGETS[case]
        machine, server = [], []
        for r in results:
            figures = r.cases.get(case, {})
            http, other = figures.get("http"), figures.get(reference)
            if not http or not other or not other.rate:
                continue
            machine.append(cores * 1e6 / (least * other.rate))
            if http.machine_cpu_us is not None and http.cpu_us is not None:
                server.append(machine[-1] - (http.machine_cpu_us - http.cpu_us))
        return machine, server

    def rest(side: str, case: str, *parts: str) -> list[float]:
        """The machine's CPU per request less the named parts, per run."""
        values = []
        for figures in (r.cases[case][side] for r in results if case in r.cases and side in r.cases[case]):
            machine, *named = (getattr(figures, name) for name in ("machine_cpu_us", *parts))
            if machine is not None and None not in named:
                values.append(machine - sum(named))
        return values

    rows = []
    for case in options.cases:
        if not any(case.name in r.cases for r in results):
            continue
        machine_budget, server_budget = budgets(case.name) if case.name in RATE_TARGETS else ([], [])
        rows.append([case.name, *(spread(per_run(results, case.name, "http", metric), 0)
                                  for metric in ("machine_cpu_us", "load_cpu_us", "cpu_us")),
                     spread(rest("http", case.name, "load_cpu_us", "cpu_us"), 0),
                     *(spread(per_run(results, case.name, "pgbench", metric), 0)
                       for metric in ("machine_cpu_us", "load_cpu_us")),
                     spread(rest("pgbench", case.name, "load_cpu_us"), 0),
                     spread(machine_budget, 0), spread(server_budget, 0)])
    return (f"CPU per request, µs, all {cores} cores of the machine: through the server, and through pgbench with "
            "the same SQL (the MCP cases' pgbench is the list's)\n" +
            render_table(["case", "machine", "load generator", "server", "database and the rest",
                          "pgbench: machine", "pgbench client", "database and the rest",
                          "machine at the target's rate", "left for the server at it"], rows))


def peer_table(results: list[RunResult], options) -> str:
    """Sluice beside the peer, per run and then median (min–max): rates, CPU per request, memory."""
    def quotients(case: str, metric: str, numerator: str) -> list[float]:
        pairs = [(getattr(r.cases[case]["sluice"], metric), getattr(r.cases[case]["http"], metric))
                 for r in results if case in r.cases and "sluice" in r.cases[case]]
        return [(s / p if numerator == "sluice" else p / s) for s, p in pairs if s and p]

    def lead(values: list[float], words: str) -> str:
        return f"{spread(values, 1)} × {words}" if values else "-"

    rows = []
    for case in (case for case in options.cases if case.twin):
        rows.append([f"{case.twin}: req/s", spread(per_run(results, case.name, "sluice", "rate"), 0),
                     spread(per_run(results, case.name, "http", "rate"), 0),
                     lead(quotients(case.name, "rate", "sluice"), "the peer's rate")])
        rows.append([f"{case.twin}: p99 ms", spread(per_run(results, case.name, "sluice", "p99_ms"), 2),
                     spread(per_run(results, case.name, "http", "p99_ms"), 2), ""])
        rows.append([f"{case.twin}: server CPU µs/req", spread(per_run(results, case.name, "sluice", "cpu_us"), 0),
                     spread(per_run(results, case.name, "http", "cpu_us"), 0),
                     lead(quotients(case.name, "cpu_us", "peer"), "less CPU per request")])
    for label, name in (("RSS idle, MiB", "idle"), ("RSS after load, MiB", "after_load"), ("peak RSS, MiB", "peak")):
        sluice = [r.memory.get(name) for r in results]
        peer = [r.peer_memory.get(name) for r in results]
        smaller = [p / s for s, p in zip(sluice, peer) if s and p]
        rows.append([label, spread(sluice, 1), spread(peer, 1), lead(smaller, "smaller")])
    return render_table(["Sluice against its peer, same database and load", "Sluice", peers.NAME, "Sluice's lead"],
                        rows)


def parse_options(argv: list[str]):
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="repeat everything N times; the table shows min/median/max")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per case and per side (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured HTTP load before each case")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections, wrk and pgbench (16)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads and pgbench -j (2)")
    parser.add_argument("--port", type=int, default=18080,
                        help="runtime port on 127.0.0.1; the start test uses PORT+1, the peer PORT+2")
    parser.add_argument("--cases", default=",".join(case.name for case in CASES),
                        help="comma-separated subset of: " + ", ".join(case.name for case in CASES))
    parser.add_argument("--row-filter", choices=["auto", "on", "off"], default="auto",
                        help="the role's row filter: auto uses it when this runtime build grants rules with one")
    parser.add_argument("--mcp-arguments", type=Path, default=BENCH_DIR / "mcp_query_rows.json",
                        help="query_rows arguments; __COUNTRY__ is replaced by a random country")
    parser.add_argument("--runtime-log", default="warn", help="RUST_LOG for the runtime (default warn: no per-request lines)")
    parser.add_argument("--reload-data", action="store_true", help="drop and load the data sets again")
    parser.add_argument("--runtime", type=Path, required=True, help=argparse.SUPPRESS)
    parser.add_argument("--pgbench", required=True, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, required=True, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    options.peer_dir = None
    by_name = {case.name: case for case in CASES}
    unknown = [name for name in options.cases.split(",") if name not in by_name]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    options.cases = [by_name[name] for name in options.cases.split(",")]
    if options.runs < 1 or options.warmup < 0 or options.duration <= 0 or options.connections < 1 or options.threads < 1:
        parser.error("--runs, --duration, --connections and --threads must be positive, --warmup not negative")
    if options.threads > options.connections:
        parser.error("--threads must not exceed --connections (wrk needs a connection per thread)")
    return options


def main(argv: list[str]) -> int:
    options = parse_options(argv)
    url = os.environ.get("SLUICE_TEST_POSTGRES_URL")
    if not url:
        raise BenchError("SLUICE_TEST_POSTGRES_URL is not set; run through bench/run, which sources scripts/services.sh")
    options.postgres = Postgres.from_url(url, options.pgbench)
    work = options.work_dir
    work.mkdir(parents=True, exist_ok=True)
    options.postgres.ensure_loaded(BENCH_DATABASE, DATASET, options.reload_data)
    options.postgres.ensure_loaded(SCHEMA100_DATABASE, SCHEMA100, options.reload_data)
    options.postgres.reset_orders()
    manifests(work / f"manifests-{SCHEMA100_DATABASE}", SCHEMA100_DATABASE.replace("_", "-"), options.connections,
              False)
    row_filter, row_filter_note = choose_row_filter(options, work)
    peer_note = None
    if any(case.twin for case in options.cases):
        try:
            options.peer_dir, installed = peers.install(work)
            if installed:
                say(f"installed {peers.NAME} in {options.peer_dir} (npm ci; once per change of its lock file)")
        except peers.PeerError as error:
            peer_note = str(error)
            options.cases = [case for case in options.cases if not case.twin]
            say(f"the peer's cases are left out: {peer_note}")
    results = []
    for number in range(1, options.runs + 1):
        say(f"run {number} of {options.runs}")
        results.append(run_once(options, work, row_filter, number))
    table = report(results, options, row_filter_note)
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    (work / f"results-{stamp}.txt").write_text(table + "\n")
    print(table)
    for case in options.cases:
        reasons = {r.skipped[case.name] for r in results if case.name in r.skipped}
        for reason in reasons:
            print(f"note: {case.name} skipped: {reason}")
    if peer_note:
        print(f"note: the peer's cases were left out: {peer_note}")
    print(f"\n(saved to {work}/results-{stamp}.txt; runtime logs in {work})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as error:
        say(f"ERROR: {error}")
        sys.exit(1)
