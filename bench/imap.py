"""Everlock's IMAP server against a private Dovecot (Debian dovecot-imapd, maildir), same run.

    .venv/bin/python bench/imap.py [--secs 20] [--rounds 3] [--messages 10000]
                                   [--idle-clients 1000] [--idle-messages 100]

Sets up a throw-away Everlock installation (its own data dir, SQLite) with users
testuser1..20 and `bulk`, runs `manage.py runimap` on 127.0.0.1, and a private Dovecot
(../shared/tools/peers/dovecot.conf.in) with the same users and password, then measures:

1. imaptest's load mode (../shared/tools/imaptest/run-bench.sh, 20 users, 20 clients) with its
   default login/logout mix and with logout=0: commands/s, the two servers' rounds taking
   turns (after an untimed login of every user); the best round of each counts. Each round
   shows the CPU seconds the server used, and imaptest's error count and log.
2. SELECT + FETCH 1:* (FLAGS ENVELOPE) on bulk's INBOX of --messages messages of a few KB
   (delivered to Everlock over inbound SMTP, appended to Dovecot with MULTIAPPEND; then all
   seen, 1 in 10 flagged on both): seconds from sending SELECT to the FETCH's tagged OK,
   the best round of each server.
3. --idle-clients clients logged in (spread over testuser1..20), INBOX selected (imaptest's
   leftovers plus --idle-messages delivered to each), in IDLE: the resident memory of the
   Everlock IMAP process tree, measured in a freshly started process (its memory after the
   earlier steps is printed too). A message appended meanwhile must reach the idling sessions
   of its user.

Prints a table with each figure, its target, and whether it is met (a load figure only with no
imaptest errors). The servers' logs are kept next to imaptest's (IMAPTEST_HOME/logs); the
rest is removed at the end. Run as root, Dovecot's mail processes run as `nobody`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Import from the repository root; bench/ stays off the path (bench/dns.py would shadow dnspython).
sys.path[0] = str(ROOT)

from bench.smtp_load import one_message
from tests.ports import free_port

TOOLS = ROOT.parent / "shared" / "tools"
IMAPTEST_HOME = Path(os.environ.get("IMAPTEST_HOME", "/tmp/imaptest"))
LOGS = IMAPTEST_HOME / "logs"
USERS = 20
CLIENTS = 20
PASSWORD = "bench-pass"
BULK = "bulk"
RATIO_TARGET = 0.5
RSS_TARGET_MB = 100
FETCH_TARGET = 2.0


async def wait_for_port(port: int, greeting: bytes, alive, what: str, timeout: float = 60) -> None:
    """Wait until 127.0.0.1:port greets with `greeting`; `alive()` false means the server died."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            line = await reader.readline()
            writer.close()
            if line.startswith(greeting):
                return
        if not alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        await asyncio.sleep(0.2)


# --- a minimal IMAP client: pipelining, literals, IDLE ------------------------------------------

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.tags = 0

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        client = cls(reader, writer)
        greeting = await client.response()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"greeting: {greeting!r}")
        return client

    async def response(self) -> bytes:
        """One response line, its literals included."""
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        while match := _LITERAL.search(line):
            line += await self.reader.readexactly(int(match[1]))
            line += await self.reader.readline()
        return line

    def send(self, command: bytes) -> bytes:
        self.tags += 1
        tag = b"c%d" % self.tags
        self.writer.write(tag + b" " + command + b"\r\n")
        return tag

    async def tagged(self, tag: bytes) -> list[bytes]:
        """The untagged responses up to `tag`'s completion, which must be OK."""
        untagged = []
        while True:
            line = await self.response()
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"{line!r}")
                return untagged
            untagged.append(line)

    async def ok(self, command: bytes) -> list[bytes]:
        return await self.tagged(self.send(command))

    async def login(self, user: str) -> None:
        await self.ok(f"LOGIN {user} {PASSWORD}".encode())

    async def idle(self) -> bytes:
        tag = self.send(b"IDLE")
        line = await self.response()
        if not line.startswith(b"+"):
            raise RuntimeError(f"IDLE: {line!r}")
        return tag

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


# --- the servers ------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (the first is the state)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> set[int]:
    """Process `pid` and all its descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        tree.add(current)
        todo.extend(child for child, parent in parents.items() if parent == current and child not in tree)
    return tree


def tree_cpu(pid: int) -> float:
    """CPU seconds used by the process tree of `pid`, its reaped children included."""
    ticks = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            ticks += sum(int(value) for value in _stat(member)[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_rss(pid: int) -> int:
    """Resident bytes of process `pid` and all its descendants."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


SETUP = """
from accounts.services import grant_add, user_add
from mail.models import MailDomain
MailDomain.objects.create(name="example.com")
for name in {users!r}:
    user_add(name=name, password={password!r})
    grant_add(name=name, resource=f"smtp/mail/example.com:{{name}}", role="writer")
"""


class Everlock:
    """A throw-away installation in a temp dir with `manage.py runimap` on 127.0.0.1."""

    def __init__(self, idle_clients: int) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="everlock-bench-imap-"))
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")
        }
        self.env.update(
            EVERLOCK_DATA_DIR=str(self.data_dir),
            EVERLOCK_LOG="warning",
            PYTHONUNBUFFERED="1",
            # The IDLE step logs in every user idle_clients / USERS times at once.
            EVERLOCK_IMAP_MAX_SESSIONS_PER_USER=str(max(50, idle_clients // USERS + 1)),
        )
        self.manage = [sys.executable, str(ROOT / "manage.py")]
        self.port = free_port()
        self.log_path = LOGS / f"everlock-imap-{time.strftime('%Y%m%d-%H%M%S')}.log"
        self.process: subprocess.Popen | None = None

    def prepare(self, users: list[str]) -> None:
        """Migrate the database; add example.com and `users`, each with a mailbox."""
        subprocess.run([*self.manage, "migrate", "-v0"], env=self.env, check=True, cwd=ROOT)
        setup = SETUP.format(users=users, password=PASSWORD)
        subprocess.run([*self.manage, "shell", "-v0", "-c", setup], env=self.env, check=True, cwd=ROOT)

    async def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                [*self.manage, "runimap", "--listen", f"127.0.0.1:{self.port}"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        await wait_for_port(self.port, b"* OK", lambda: self.process.poll() is None, "everlock runimap")

    async def fill(self, users: list[str], count: int) -> None:
        """Deliver `count` messages to the INBOX of each of `users` over inbound SMTP
        (`manage.py runsmtp`, its group commit), the quick way in: Everlock stores each APPEND
        in a transaction of its own."""
        port = free_port()
        with open(self.log_path, "a") as log:
            smtp = subprocess.Popen(
                [*self.manage, "runsmtp", "--listen", f"127.0.0.1:{port}"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            await wait_for_port(port, b"220", lambda: smtp.poll() is None, "everlock runsmtp")
            messages = iter([(user, n) for n in range(count) for user in users])

            async def client() -> None:
                for user, n in messages:
                    await one_message(
                        port,
                        sender="sender@example.net",
                        rcpt=f"{user}@example.com",
                        data=bulk_message(n),
                        auth=None,
                    )

            await asyncio.gather(*(client() for _ in range(CLIENTS)))
        finally:
            smtp.terminate()
            smtp.wait(timeout=30)

    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int:
        return tree_rss(self.pid())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def problems(self) -> list[str]:
        """The log's tracebacks and errors (first line of each)."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if line.startswith(("Traceback", "[ERROR", "[CRITICAL"))]

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Dovecot:
    """A private Dovecot from the peers kit: maildir, passwd-file users, 127.0.0.1 only."""

    def __init__(self, users: list[str]) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="everlock-bench-dovecot-"))
        self.base.chmod(0o755)
        self.port = free_port()
        for sub in ("log", "mail", "run", "state"):
            (self.base / sub).mkdir()
        if os.getuid() == 0:  # mail processes must not run as root
            owner = pwd.getpwnam("nobody")
            uid, gid = owner.pw_uid, owner.pw_gid
            os.chown(self.base / "mail", uid, gid)
        else:
            uid, gid = os.getuid(), os.getgid()
        template = (TOOLS / "peers" / "dovecot.conf.in").read_text()
        self.conf = self.base / "dovecot.conf"
        self.conf.write_text(template.replace("@BASE@", str(self.base)).replace("@PORT@", str(self.port)))
        (self.base / "users").write_text(
            "".join(f"{u}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{self.base}/mail/{u}::\n" for u in users)
        )
        self.log_path = LOGS / f"dovecot-{time.strftime('%Y%m%d-%H%M%S')}.log"

    async def start(self) -> None:
        subprocess.run(["dovecot", "-c", str(self.conf)], check=True)
        await wait_for_port(self.port, b"* OK", lambda: True, "dovecot")

    async def fill(self, users: list[str], count: int) -> None:
        for user in users:
            await append(self.port, user, [bulk_message(n) for n in range(count)])

    def pid(self) -> int:
        return int((self.base / "run" / "master.pid").read_text())

    def stop(self) -> None:
        subprocess.run(["doveadm", "-c", str(self.conf), "stop"], check=False, stderr=subprocess.DEVNULL)
        log = self.base / "log" / "dovecot.log"
        if log.exists():
            shutil.copy(log, self.log_path)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


async def warm_up(port: int, users: list[str]) -> None:
    """Log every user in once, untimed: a running server has checked their passwords before
    (Everlock remembers a verified password instead of paying its slow hasher again)."""

    async def one(user: str) -> None:
        client = await Client.connect(port)
        await client.login(user)
        await client.ok(b"LOGOUT")
        await client.close()

    await asyncio.gather(*(one(user) for user in users))


# --- 1. imaptest load mode --------------------------------------------------------------------


@dataclass
class LoadRound:
    rate: float  # commands/s, all commands
    cpu: float  # CPU seconds the server used during the round
    commands: dict[str, float]
    errors: int
    error_lines: list[str]
    log: str


def imaptest(server, secs: int, extra: list[str]) -> LoadRound:
    env = dict(
        os.environ, USERS=str(USERS), CLIENTS=str(CLIENTS), SECS=str(secs), IMAPTEST_HOME=str(IMAPTEST_HOME)
    )
    script = TOOLS / "imaptest" / "run-bench.sh"
    cpu = tree_cpu(server.pid())
    out = subprocess.run(
        [str(script), "127.0.0.1", str(server.port), "testuser%d", PASSWORD, *extra],
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    cpu = tree_cpu(server.pid()) - cpu
    lines = out.splitlines()
    log = next((line.split()[1] for line in lines if line.startswith("log: ")), "?")
    commands = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            commands[parts[0]] = float(parts[2])
    if "ALL" not in commands:
        raise RuntimeError(f"imaptest gave no totals (log {log}):\n{out}")
    errors = next(int(line.rsplit(":", 1)[1]) for line in lines if line.startswith("errors reported"))
    error_lines = [line.strip() for line in lines if line.startswith("  ")]
    return LoadRound(commands.pop("ALL"), cpu, commands, errors, error_lines, log)


def load_rounds(servers: dict, *, secs: int, rounds: int, extra: list[str]) -> dict[str, list[LoadRound]]:
    results: dict[str, list[LoadRound]] = {name: [] for name in servers}
    for number in range(1, rounds + 1):
        for name, server in servers.items():
            result = imaptest(server, secs, extra)
            results[name].append(result)
            print(
                f"  round {number} {name:8} {result.rate:8.1f} commands/s, server CPU {result.cpu:5.1f} s"
                f"  ({result.errors} errors, {result.log})",
                flush=True,
            )
    return results


# --- 2. SELECT + FETCH on a big folder --------------------------------------------------------

PEOPLE = [
    ("Alice Johnson", "alice@example.com"),
    ("Bob Smith", "bob@example.org"),
    ("Carol Díaz", "carol@example.net"),
    ("Dave Müller", "dave@example.net"),
    ("Eve Nakamura", "eve@example.org"),
    ("Frank O'Brien", "frank@example.com"),
]
WORDS = [
    "server",
    "mailbox",
    "message",
    "folder",
    "index",
    "cache",
    "quota",
    "backup",
    "deploy",
    "release",
    "ticket",
    "report",
]


def bulk_message(n: int) -> bytes:
    """Message n of the big folder: a few KB, varied headers (encoded words, Cc, threads)."""
    msg = EmailMessage()
    sender = PEOPLE[n % len(PEOPLE)]
    to = [PEOPLE[(n + k) % len(PEOPLE)] for k in (1, 2)[: 1 + n % 2]]
    msg["From"] = f'"{sender[0]}" <{sender[1]}>'
    msg["To"] = ", ".join(f'"{name}" <{addr}>' for name, addr in to)
    if n % 3 == 0:
        msg["Cc"] = f'"{PEOPLE[(n + 3) % len(PEOPLE)][0]}" <{PEOPLE[(n + 3) % len(PEOPLE)][1]}>'
    msg["Subject"] = f"{'Re: ' if n % 4 == 1 else ''}{WORDS[n % len(WORDS)]} {n}: Überprüfung"
    msg["Date"] = format_datetime(datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=7 * n))
    msg["Message-ID"] = f"<{n}.bulk@example.com>"
    if n % 4 == 1:
        msg["In-Reply-To"] = f"<{n - 1}.bulk@example.com>"
        msg["References"] = f"<{n - 1}.bulk@example.com>"
    line = " ".join(WORDS[(n + k) % len(WORDS)] for k in range(10))
    msg.set_content("\n".join(f"{line} {k}." for k in range(20 + n % 60)))
    return msg.as_bytes().replace(b"\n", b"\r\n")


async def append(port: int, user: str, messages: list[bytes], batch: int = 100) -> None:
    """APPEND `messages` to user's INBOX: MULTIAPPEND with LITERAL+, `batch` per command."""
    client = await Client.connect(port)
    await client.login(user)
    for start in range(0, len(messages), batch):
        parts = [b"APPEND INBOX"]
        for data in messages[start : start + batch]:
            parts.append(b" {%d+}\r\n" % len(data) + data)
        await client.ok(b"".join(parts))
    await client.ok(b"LOGOUT")
    await client.close()


async def set_flags(port: int, user: str, count: int) -> None:
    """Most of a big folder is read, some of it flagged: every message \\Seen, 1 in 10 \\Flagged."""
    client = await Client.connect(port)
    await client.login(user)
    await client.ok(b"SELECT INBOX")
    await client.ok(b"STORE 1:* +FLAGS.SILENT (\\Seen)")
    tens = ",".join(str(n) for n in range(1, count + 1, 10))
    await client.ok(f"STORE {tens} +FLAGS.SILENT (\\Flagged)".encode())
    await client.ok(b"LOGOUT")
    await client.close()


async def select_fetch(port: int, count: int) -> float:
    """Seconds from SELECT INBOX to the tagged OK of FETCH 1:* (FLAGS ENVELOPE)."""
    client = await Client.connect(port)
    await client.login(BULK)
    started = time.perf_counter()
    await client.ok(b"SELECT INBOX")
    responses = await client.ok(b"FETCH 1:* (FLAGS ENVELOPE)")
    elapsed = time.perf_counter() - started
    fetched = sum(1 for line in responses if b" FETCH (" in line[:24] and b"ENVELOPE (" in line)
    if fetched != count:
        raise RuntimeError(f"FETCH 1:* gave {fetched} envelopes, not {count}")
    await client.ok(b"LOGOUT")
    await client.close()
    return elapsed


async def fetch_rounds(servers: dict, *, count: int, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in servers}
    for number in range(1, rounds + 1):
        for name, server in servers.items():
            results[name].append(await select_fetch(server.port, count))
            print(f"  round {number} {name:8} {results[name][-1]:8.3f} s", flush=True)
    return results


# --- 3. many clients in IDLE ------------------------------------------------------------------


@dataclass
class IdleResult:
    rss_before: int
    rss_idle: int
    idling: int
    failures: list[str] = field(default_factory=list)
    inbox_sizes: dict[int, int] = field(default_factory=dict)  # user number -> messages
    pushed: int = 0
    push_targets: int = 0
    push_seconds: float = 0.0
    done_ok: int = 0


async def idle_clients(server: Everlock, count: int) -> IdleResult:
    """`count` clients of testuser1..20 in IDLE on their INBOX; the server's RSS meanwhile."""
    gate = asyncio.Semaphore(50)  # logins in flight at once

    sizes: dict[int, int] = {}

    async def one(n: int) -> tuple[int, Client, bytes]:
        user = n % USERS + 1
        async with gate:
            client = await Client.connect(server.port)
            await client.login(f"testuser{user}")
            for line in await client.ok(b"SELECT INBOX"):
                if line.endswith(b" EXISTS\r\n"):
                    sizes[user] = int(line.split()[1])
            return user, client, await client.idle()

    rss_before = server.rss()
    outcomes = await asyncio.gather(*(one(n) for n in range(count)), return_exceptions=True)
    sessions = [o for o in outcomes if not isinstance(o, BaseException)]
    failures = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    await asyncio.sleep(3)  # let the server settle (buffers, collections) before measuring
    result = IdleResult(rss_before, max(server.rss() for _ in range(3)), len(sessions), failures, sizes)

    # Liveness: a message appended to testuser1's INBOX reaches its idling sessions.
    watchers = [(client, tag) for user, client, tag in sessions if user == 1]
    result.push_targets = len(watchers)
    started = time.perf_counter()
    await append(server.port, "testuser1", [bulk_message(0)])

    async def told(client: Client) -> None:
        while b" EXISTS" not in await client.response():
            pass

    waits = [asyncio.create_task(told(client)) for client, _ in watchers]
    done, pending = await asyncio.wait(waits, timeout=10)
    result.push_seconds = time.perf_counter() - started
    result.pushed = sum(1 for task in done if task.exception() is None)
    for task in pending:
        task.cancel()

    async def finish(client: Client, tag: bytes) -> bool:
        try:
            client.writer.write(b"DONE\r\n")
            await asyncio.wait_for(client.tagged(tag), 30)
            return True
        except Exception:
            return False
        finally:
            await client.close()

    finished = await asyncio.gather(*(finish(client, tag) for _, client, tag in sessions))
    result.done_ok = sum(finished)
    return result


# --- the run ----------------------------------------------------------------------------------


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        if wanted < needed:
            print(f"warning: RLIMIT_NOFILE hard limit {hard} is below the {needed} descriptors needed")


def mb(value: int) -> str:
    return f"{value / 1e6:.1f}"


def rounds_text(values: list[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


def best_load(rounds: list[LoadRound]) -> LoadRound:
    return max(rounds, key=lambda r: r.rate)


async def run(args) -> None:
    raise_nofile(2 * args.idle_clients + 1024)  # the clients here, the servers inherit it
    LOGS.mkdir(parents=True, exist_ok=True)
    if not (IMAPTEST_HOME / "bin" / "imaptest").exists():
        subprocess.run([str(TOOLS / "imaptest" / "build.sh")], check=True, stdout=subprocess.DEVNULL)
    users = [f"testuser{n}" for n in range(1, USERS + 1)] + [BULK]
    print("setting up Everlock and Dovecot ...", flush=True)
    everlock = Everlock(args.idle_clients)
    dovecot = Dovecot(users)
    servers = {"everlock": everlock, "dovecot": dovecot}
    table = []
    try:
        everlock.prepare(users)
        await everlock.start()
        await dovecot.start()
        print(f"everlock runimap on 127.0.0.1:{everlock.port}, data dir {everlock.data_dir}")
        print(f"dovecot on 127.0.0.1:{dovecot.port}, base {dovecot.base}")
        await asyncio.gather(*(warm_up(s.port, users) for s in servers.values()))
        started = time.perf_counter()
        await asyncio.gather(*(s.fill([BULK], args.messages) for s in servers.values()))
        await asyncio.gather(*(set_flags(s.port, BULK, args.messages) for s in servers.values()))
        print(
            f"logged every user in once (warm-up); filled {BULK}'s INBOX with {args.messages} "
            f"messages on both in {time.perf_counter() - started:.0f} s"
        )

        print(f"SELECT + FETCH 1:* (FLAGS ENVELOPE), {args.messages} messages:", flush=True)
        fetches = await fetch_rounds(servers, count=args.messages, rounds=args.rounds)
        rss_after_fetch = everlock.rss()

        loads = {}
        for label, extra in (("login/logout mix", []), ("logout=0", ["logout=0"])):
            print(
                f"imaptest load mode, {label}, {USERS} users, {CLIENTS} clients, {args.secs} s a round:",
                flush=True,
            )
            loads[label] = load_rounds(servers, secs=args.secs, rounds=args.rounds, extra=extra)
        rss_after_load = everlock.rss()

        print(
            f"{args.idle_clients} clients in IDLE (Everlock, freshly started runimap, "
            f"{args.idle_messages} more messages in each user's INBOX):",
            flush=True,
        )
        await everlock.fill(users[:USERS], args.idle_messages)
        everlock.stop()
        await everlock.start()
        idle = await idle_clients(everlock, args.idle_clients)
    finally:
        everlock.cleanup()
        dovecot.cleanup()

    print()
    for label, results in loads.items():
        ours, theirs = best_load(results["everlock"]), best_load(results["dovecot"])
        ratio = ours.rate / theirs.rate
        clean = all(r.errors == 0 for r in results["everlock"])
        table.append(
            (
                f"imaptest {label} (commands/s)",
                f"{ours.rate:.0f}",
                f"{theirs.rate:.0f}",
                f"{ratio:.2f}x",
                f">= {RATIO_TARGET}x, no errors",
                ratio >= RATIO_TARGET and clean,
            )
        )
    ours_fetch, theirs_fetch = min(fetches["everlock"]), min(fetches["dovecot"])
    table.append(
        (
            f"SELECT+FETCH {args.messages} (FLAGS ENVELOPE) (s)",
            f"{ours_fetch:.2f}",
            f"{theirs_fetch:.2f}",
            f"{ours_fetch / theirs_fetch:.2f}x",
            f"<= {FETCH_TARGET}x",
            ours_fetch <= FETCH_TARGET * theirs_fetch,
        )
    )
    all_idle = idle.idling == args.idle_clients and idle.done_ok == idle.idling
    table.append(
        (
            f"{args.idle_clients} clients in IDLE: RSS (MB)",
            mb(idle.rss_idle),
            "-",
            "-",
            f"<= {RSS_TARGET_MB} MB",
            idle.rss_idle <= RSS_TARGET_MB * 1e6 and all_idle,
        )
    )
    print(f"{'figure':44} {'everlock':>9} {'dovecot':>9} {'ratio':>7}  {'target':22} met")
    for name, ours_text, theirs_text, ratio_text, target, met in table:
        print(
            f"{name:44} {ours_text:>9} {theirs_text:>9} {ratio_text:>7}  {target:22} {'yes' if met else 'NO'}"
        )

    print()
    for label, results in loads.items():
        print(f"imaptest {label}, all rounds (commands/s):")
        for name in servers:
            rates = [r.rate for r in results[name]]
            errors = [r.errors for r in results[name]]
            print(f"  {name:8} {rounds_text(rates, '.1f')}  (imaptest errors per round: {errors})")
        ours, theirs = best_load(results["everlock"]), best_load(results["dovecot"])
        print(
            "  per command in the best rounds (everlock / dovecot, per s): "
            + ", ".join(
                f"{cmd} {ours.commands.get(cmd, 0):.0f}/{theirs.commands.get(cmd, 0):.0f}"
                for cmd in theirs.commands
                if theirs.commands.get(cmd) or ours.commands.get(cmd)
            )
        )
        for name in servers:
            for r in results[name]:
                if r.errors:
                    print(f"  first errors of {name} (log {r.log}):")
                    for line in r.error_lines[:5]:
                        print(f"    {line}")
                    break
    for name in servers:
        print(f"SELECT+FETCH rounds, {name}: {rounds_text(fetches[name], '.3f')} s")
    print(
        f"IDLE: {idle.idling}/{args.idle_clients} clients idling; RSS {mb(idle.rss_before)} MB before they "
        f"connected, {mb(idle.rss_idle)} MB with them "
        f"({(idle.rss_idle - idle.rss_before) / max(idle.idling, 1) / 1e3:.0f} KB a client); "
        f"{mb(rss_after_fetch)} MB after the FETCH rounds and {mb(rss_after_load)} MB after the load rounds "
        "(before the restart)"
    )
    print(
        f"IDLE push: an APPEND reached {idle.pushed}/{idle.push_targets} idling sessions of its user "
        f"within {idle.push_seconds:.2f} s; DONE answered OK by {idle.done_ok}/{idle.idling}"
    )
    if idle.inbox_sizes:
        sizes = idle.inbox_sizes.values()
        print(
            f"IDLE: the INBOXes selected (imaptest's leftovers plus {args.idle_messages} each) held "
            f"{min(sizes)} to {max(sizes)} messages, {sum(sizes)} in all"
        )
    for failure in idle.failures[:3]:
        print(f"  IDLE client failure: {failure}")
    problems = everlock.problems()
    print(f"Everlock IMAP log: {everlock.log_path} ({len(problems)} tracebacks/errors)")
    for line in problems[:5]:
        print(f"  {line}")
    print(f"Dovecot log: {dovecot.log_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secs", type=int, default=20, help="seconds of each imaptest round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server and figure")
    parser.add_argument("--idle-clients", type=int, default=1000)
    parser.add_argument(
        "--idle-messages", type=int, default=100, help="messages added to each INBOX before the IDLE step"
    )
    parser.add_argument("--messages", type=int, default=10_000, help="messages of the big folder")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
