"""The benchmark's peer: Platformatic DB, a Node.js server that serves a database as a REST API.

It runs over the same database as Sluice, with governance as close to the bench role's as it
offers: a JWT on every request, a role whose rule reads customers without `email` and only rows
with `balance >= 0` (a check bound to a claim of the token), and orders only with `amount >= 0`.
The pinned version and its whole dependency tree are in peers/platformatic/package-lock.json.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import proc

SOURCE = Path(__file__).resolve().parent / "peers" / "platformatic"
ENTRY = Path("node_modules") / "@platformatic" / "db" / "db.mjs"
VERSION = json.loads((SOURCE / "package.json").read_text())["dependencies"]["@platformatic/db"]
NAME = f"Platformatic DB {VERSION}"

ROLE = "bench"
ROLE_CLAIM = "X-PLATFORMATIC-ROLE"
MIN_BALANCE_CLAIM = "X-PLATFORMATIC-MIN-BALANCE"
MIN_AMOUNT_CLAIM = "X-PLATFORMATIC-MIN-AMOUNT"
# Platformatic refuses a read that asks for a field its rule does not allow rather than leaving it
# out, so every request names the fields: those of the bench role, without `email`.
CUSTOMER_FIELDS = "id,name,country,createdAt,balance"


class PeerError(Exception):
    """A failure that stops the peer's cases, with a message that says what to do."""


def install(work: Path) -> tuple[Path, bool]:
    """Installs the pinned tree under `work` with `npm ci`, unless that exact lock is installed;
    returns the folder and whether it installed now."""
    target = work / "peers" / "platformatic"
    lock = (SOURCE / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock).hexdigest()
    stamp = target / ".installed-lock-sha256"
    if (target / ENTRY).exists() and stamp.exists() and stamp.read_text() == digest:
        return target, False
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        raise PeerError(f"node and npm are needed for the {NAME} cases: install Node.js 20 (apt-get install nodejs "
                        "npm), or leave the platformatic_* cases out with --cases")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(SOURCE / "package.json", target / "package.json")
    (target / "package-lock.json").write_bytes(lock)
    # --ignore-scripts: the only install script that matters would build SQLite's native module,
    # which a PostgreSQL benchmark does not load.
    result = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=target,
                            capture_output=True, text=True)
    if result.returncode != 0 or not (target / ENTRY).exists():
        raise PeerError(f"npm ci of {NAME} in {target} failed: {result.stderr.strip()[-600:]}")
    stamp.write_text(digest)
    return target, True


def token(secret: str, claims: dict) -> str:
    """An HS256 JSON Web Token of `claims` signed with `secret`."""
    def encode(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signed = f"{header}.{encode(json.dumps(claims).encode())}"
    signature = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{encode(signature)}"


def config(database_url: str, port: int, pool_size: int, secret: str) -> dict:
    return {
        "server": {"hostname": "127.0.0.1", "port": port, "logger": {"level": "warn"}},
        "db": {"connectionString": database_url, "poolSize": pool_size, "graphql": False, "openapi": True,
               "schemalock": False},
        "authorization": {
            "jwt": {"secret": secret},
            "roleKey": ROLE_CLAIM,
            "rules": [
                {"role": ROLE, "entity": "customer", "save": False, "delete": False,
                 "find": {"checks": {"balance": {"gte": MIN_BALANCE_CLAIM}}, "fields": CUSTOMER_FIELDS.split(",")}},
                {"role": ROLE, "entity": "order", "save": False, "delete": False,
                 "find": {"checks": {"amount": {"gte": MIN_AMOUNT_CLAIM}}}},
            ],
        },
    }


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


class Platformatic(proc.Server):
    """One `plt-db start` process on 127.0.0.1, with the bench role's token in `authorization`."""

    def __init__(self, install_dir: Path, database_url: str, port: int, pool_size: int, log_path: Path):
        self.port = port
        self._secret = secrets.token_hex(32)
        self.authorization = "Bearer " + token(self._secret, {ROLE_CLAIM: ROLE, MIN_BALANCE_CLAIM: 0,
                                                              MIN_AMOUNT_CLAIM: 0})
        # It holds the token's signing secret and the database password: readable by this user only.
        config_path = log_path.with_suffix(".json")
        config_path.unlink(missing_ok=True)
        descriptor = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(config(database_url, port, pool_size, self._secret), file, indent=2)
        self._log_path = log_path
        self._log = log_path.open("ab")
        self.started = time.monotonic()
        self.process = subprocess.Popen(["node", str(ENTRY), "start", "-c", str(config_path)], cwd=install_dir,
                                        stdout=self._log, stderr=self._log)

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.authorization}

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PeerError(f"{NAME} exited with status {self.process.returncode}; see {self._log_path}")
            try:
                if get(self.port, f"/customers/1?fields={CUSTOMER_FIELDS}", self.headers())[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise PeerError(f"{NAME} did not answer within {timeout:.0f} s; see {self._log_path}")

    def governance_problem(self) -> str | None:
        """Checks that the peer refuses what the bench role refuses; returns what it let through, or None."""
        status, body = get(self.port, f"/customers/1?fields={CUSTOMER_FIELDS}", {})
        if status not in (401, 403):
            return f"a read without a token answered HTTP {status}: {body[:200]}"
        status, body = get(self.port, "/customers/1", self.headers())
        if status not in (401, 403):
            return f"a read of every field, email included, answered HTTP {status}: {body[:200]}"
        poorer = "Bearer " + token(self._secret, {ROLE_CLAIM: ROLE, MIN_BALANCE_CLAIM: 10**9, MIN_AMOUNT_CLAIM: 0})
        status, body = get(self.port, f"/customers?fields={CUSTOMER_FIELDS}&limit=1", {"Authorization": poorer})
        if status != 200 or json.loads(body):
            return f"a token whose row check excludes every customer read HTTP {status}: {body[:200]}"
        return None

