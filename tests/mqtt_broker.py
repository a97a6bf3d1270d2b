"""Real mosquitto brokers for the MQTT tests.

Each fixture starts `/usr/sbin/mosquitto` on free loopback ports with a config written
into a temporary directory: anonymous (`mosquitto`), username/password
(`mosquitto_auth`), TLS with a CA generated at test time (`mosquitto_tls`), and a
function-scoped anonymous broker that tests may stop and start again on the same port
(`mosquitto_restartable`). Import the fixtures in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import getpass
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from async_support import wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kwsd.mqtt import MqttLink, MqttOptions, TlsOptions

MOSQUITTO = os.environ.get("KWSD_MOSQUITTO", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
HOST = "127.0.0.1"
USERNAME = "kwsd"
PASSWORD = "correct horse battery staple"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # signs the server and client certificates
    server_cert: Path  # issued for DNS name "localhost" only (not for 127.0.0.1)
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # an unrelated CA: verifying the server with it must fail


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.UTC)
    usage = (
        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        if server
        else (x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("kwsd test CA")
    server_cert, server_key = _leaf("localhost", ca, server=True)
    client_cert, client_key = _leaf("kwsd-client", ca, server=False)
    other_ca, _ = _ca("some other CA")
    return TlsFiles(
        ca=_write_cert(ca[0], directory / "ca.pem"),
        server_cert=_write_cert(server_cert, directory / "server.pem"),
        server_key=_write_key(server_key, directory / "server.key"),
        client_cert=_write_cert(client_cert, directory / "client.pem"),
        client_key=_write_key(client_key, directory / "client.key"),
        other_ca=_write_cert(other_ca, directory / "other-ca.pem"),
    )


# ------------------------------------------------------------------------ broker


@dataclass
class Mosquitto:
    """One mosquitto process with its config; `stop()`/`start()` keep the same ports."""

    workdir: Path
    port: int
    host: str = HOST
    username: str | None = None
    password: str | None = None
    tls: TlsFiles | None = None
    mtls_port: int | None = None  # TLS listener that requires a client certificate
    persistent: bool = False  # keep sessions (and retained messages) across stop()/start()
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> None:
        lines = [
            f"user {getpass.getuser()}",  # as root, do not drop to `mosquitto` (tmp is 0700)
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if self.persistent:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 3600",
            ]
        else:
            lines += ["persistence false"]
        if self.password is not None:
            passwd = self.workdir / "passwd"
            subprocess.run(
                [MOSQUITTO_PASSWD, "-c", "-b", str(passwd), self.username or "", self.password],
                check=True,
                capture_output=True,
            )
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines += ["allow_anonymous true"]
        lines += [f"listener {self.port} {HOST}"]
        if self.tls is not None:
            tls_lines = [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
            ]
            lines += tls_lines
            if self.mtls_port is not None:
                lines += [f"listener {self.mtls_port} {HOST}", *tls_lines]
                lines += ["require_certificate true"]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        ports = [self.port] + ([self.mtls_port] if self.mtls_port else [])
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start:\n{self.log_text()}")
            if all(_accepts(HOST, port) for port in ports):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen on {ports}:\n{self.log_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    @property
    def db_path(self) -> Path:
        return self.workdir / "mosquitto.db"

    def save(self, timeout: float = 10.0) -> None:
        """Make a persistent broker write its database now (SIGUSR1) and wait for it."""
        assert self.persistent and self._process is not None
        before = self.db_path.stat().st_mtime_ns if self.db_path.exists() else None
        self._process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while (self.db_path.stat().st_mtime_ns if self.db_path.exists() else None) == before:
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not write its database")
            time.sleep(0.02)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing is read or acknowledged."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL: the broker dies without saving or closing anything cleanly."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.send_signal(signal.SIGCONT)
            process.wait(timeout=5)

    def wipe(self) -> None:
        """Forget the saved sessions and retained messages (use while stopped)."""
        self.db_path.unlink(missing_ok=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ----------------------------------------------------------- client side

    def tls_context(self, ca: Path | None = None) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(ca or self.tls.ca))

    @property
    def client_host(self) -> str:
        """The name to dial: the TLS certificate is issued for `localhost`."""
        return "localhost" if self.tls is not None else self.host

    def client(self, **overrides: Any) -> aiomqtt.Client:
        """An aiomqtt client (MQTT 5) for this broker, authenticated when it needs it."""
        kwargs: dict[str, Any] = {
            "username": self.username,
            "password": self.password,
            "protocol": aiomqtt.ProtocolVersion.V5,
            "tls_context": self.tls_context(),
            "identifier": f"test-{uuid.uuid4().hex[:8]}",
        }
        kwargs.update(overrides)
        return aiomqtt.Client(self.client_host, self.port, **kwargs)

    @asynccontextmanager
    async def subscriber(
        self, topic_filter: str, *, session: str | None = None, **overrides: Any
    ) -> AsyncIterator[Subscriber]:
        """Collect messages on `topic_filter` (QoS 1) while the block runs.

        With `session`, the subscriber is a persistent MQTT 3.1.1 session of that client
        id: the broker queues QoS 1 messages for it while it is away, so a test can
        reconnect after a broker restart and still see what was published meanwhile.
        """
        if session is not None:
            overrides = {
                "identifier": session,
                "clean_session": False,
                "protocol": aiomqtt.ProtocolVersion.V311,
                **overrides,
            }
        async with self.client(**overrides) as client:
            subscriber = Subscriber(client, topic_filter)
            await client.subscribe(topic_filter, qos=1)
            pump = asyncio.create_task(subscriber.pump())
            try:
                yield subscriber
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)

    async def publish(
        self,
        topic: str,
        payload: bytes | str | None,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Any = None,
    ) -> None:
        async with self.client() as client:
            await client.publish(topic, payload, qos=qos, retain=retain, properties=properties)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Subscriber:
    """Messages seen on one subscription; `next()`/`wait_for()` fail after a timeout."""

    def __init__(self, client: aiomqtt.Client, topic_filter: str) -> None:
        self.client = client
        self.topic_filter = topic_filter
        self.messages: list[aiomqtt.Message] = []
        self._queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()

    async def pump(self) -> None:
        async for message in self.client.messages:
            self.messages.append(message)
            self._queue.put_nowait(message)

    async def next(self, within: float = 10.0) -> aiomqtt.Message:
        try:
            async with asyncio.timeout(within):
                return await self._queue.get()
        except TimeoutError:
            raise AssertionError(
                f"no message on {self.topic_filter!r} within {within}s; "
                f"seen so far: {[(m.topic.value, m.payload) for m in self.messages]}"
            ) from None

    async def wait_for(
        self, predicate: Callable[[aiomqtt.Message], bool], within: float = 10.0
    ) -> aiomqtt.Message:
        """The next message satisfying `predicate` (earlier ones are skipped)."""
        try:
            async with asyncio.timeout(within):
                while True:
                    message = await self._queue.get()
                    if predicate(message):
                        return message
        except TimeoutError:
            raise AssertionError(
                f"no matching message on {self.topic_filter!r} within {within}s; "
                f"seen: {[(m.topic.value, m.payload[:200]) for m in self.messages]}"
            ) from None

    async def take(self, count: int, within: float = 10.0) -> list[aiomqtt.Message]:
        return [await self.next(within) for _ in range(count)]


def _broker(workdir: Path, **kwargs: Any) -> Iterator[Mosquitto]:
    if not Path(MOSQUITTO).exists():
        pytest.fail(f"{MOSQUITTO} is missing: apt-get install mosquitto")
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(workdir=workdir, port=free_port(), **kwargs)
    broker.write_config()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# ------------------------------------------------------------------ link helpers


def link_options(broker: Mosquitto, base_topic: str, **overrides: Any) -> MqttOptions:
    """MqttOptions for `broker`, with short retry and shutdown delays for tests."""
    values: dict[str, Any] = {
        "host": broker.client_host,
        "port": broker.port,
        "base_topic": base_topic,
        "username": broker.username,
        "password": broker.password,
        "tls": TlsOptions(enabled=True, ca_certs=broker.tls.ca) if broker.tls else TlsOptions(),
        "reconnect_min_seconds": 0.05,
        "reconnect_max_seconds": 0.4,
        "timeout_seconds": 5.0,
        "shutdown_timeout_seconds": 2.0,
    }
    values.update(overrides)
    return MqttOptions(**values)


@asynccontextmanager
async def running(link: MqttLink, *, connect: bool = True) -> AsyncIterator[asyncio.Task[None]]:
    """Run `link` for the block (connected first, unless `connect=False`), then cancel it."""
    task = asyncio.create_task(link.run())
    try:
        if connect:
            await wait_until(lambda: link.connected or task.done(), what="the link to connect")
            if task.done():
                task.result()
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """Anonymous plain-TCP broker shared by a test module."""
    yield from _broker(tmp_path_factory.mktemp("mosquitto"))


@pytest.fixture(scope="module")
def mosquitto_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """Broker that refuses anonymous clients; the account is USERNAME / PASSWORD."""
    yield from _broker(
        tmp_path_factory.mktemp("mosquitto-auth"), username=USERNAME, password=PASSWORD
    )


@pytest.fixture(scope="module")
def mosquitto_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """TLS broker: `port` checks the server only, `mtls_port` also wants a client cert."""
    workdir = tmp_path_factory.mktemp("mosquitto-tls")
    tls = make_tls_files(workdir / "pki")
    yield from _broker(workdir, tls=tls, mtls_port=free_port())


@pytest.fixture
def mosquitto_restartable(tmp_path: Path) -> Iterator[Mosquitto]:
    """Anonymous persistent broker of one test's own, to stop()/start()/kill()/freeze()."""
    yield from _broker(tmp_path / "mosquitto", persistent=True)


@pytest.fixture
def mqtt_base_topic() -> str:
    """A base topic no other test uses, so retained messages never leak between tests."""
    return f"kwsd-test/{uuid.uuid4().hex[:12]}"
