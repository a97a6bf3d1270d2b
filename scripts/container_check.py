"""Host side of scripts/container-check: the wheelhouse and the checks against the image.

    python scripts/container_check.py wheelhouse DEST
    python scripts/container_check.py run --image IMAGE --addon-image IMAGE --assets DIR

`wheelhouse` downloads every wheel of requirements/runtime.txt that the image's Python
(Debian bookworm: CPython 3.11 on this machine's architecture) installs, checked against
the lock's hashes. The lock's markers are evaluated for that target, not for the Python
running this script, which may be another version.

`run` starts containers from the built images and checks, as a user would see it:
1. `kwsd wyoming` answers a Wyoming client on the host with a detection of espeak-ng
   speech, runs as a non-root user, holds no compiler and reports healthy;
2. `kwsd run` with the compose config publishes the detection and Home Assistant
   discovery to a mosquitto this script starts on a free loopback port, reports
   healthy, and exits 0 on `podman stop`;
3. the Home Assistant add-on, against a stand-in Supervisor (its MQTT service and
   discovery endpoints): bad options give a clear log line and an unhealthy container
   that stays up; good options announce the Wyoming server and detect; bad options
   after good ones start with the last good options.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The Wyoming client, the stand-in Supervisor and free_port are shared with the tests.
sys.path.insert(0, str(ROOT / "tests"))
from mqtt_broker import free_port  # noqa: E402  (after the path it comes from)

SPEECH_TEXT = "hey computer, turn on the lights"
EXPECTED_KEYWORD = "HEY COMPUTER"
EXPECTED_WAKE_ID = "hey_computer"  # what Wyoming advertises and answers for that keyword
RUN_FLAGS = [
    "--runtime", "runc", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
    # No systemd timer for the HEALTHCHECK (there is no systemd here); the check runs it.
    "--health-interval", "disable",
]  # fmt: skip
# Debian bookworm's Python, the interpreter inside the image.
TARGET_PYTHON = "3.11.2"
SUPERVISOR_TOKEN = "container-check-token"


def say(message: str) -> None:
    print(f"container-check: {message}", flush=True)


class CheckFailedError(Exception):
    pass


# --------------------------------------------------------------------------------------
# Base image mirror and wheelhouse
# --------------------------------------------------------------------------------------


def debian_mirror(apt: Path = Path("/etc/apt")) -> str:
    """The main Debian archive this machine's apt uses (one-line or deb822 sources)."""
    found: list[tuple[str, str]] = []  # (uri, suite)
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["deb"]:
                words = [w for w in words[1:] if not w.startswith("[") and not w.endswith("]")]
                if len(words) >= 2:
                    found.append((words[0], words[1]))
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for paragraph in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            for line in paragraph.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith((" ", "#")):
                    fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
                continue
            for uri in fields.get("uris", "").split():
                found.extend((uri, suite) for suite in fields.get("suites", "").split())
    # The main archive: a plain codename suite (not -updates, -security, /updates).
    main = [(uri, suite) for uri, suite in found if "-" not in suite and "/" not in suite]
    for uri, _suite in sorted(main, key=lambda item: item[1] != "bookworm"):
        if uri.startswith(("http://", "https://", "file:/")):
            return uri
    raise CheckFailedError(f"no Debian archive in {apt}/sources.list*; found {found}")


def locked_requirements(lock: Path, machine: str) -> list[str]:
    """The lock's requirement lines (with hashes) that apply to the image's Python."""
    from packaging.requirements import Requirement

    environment = {
        "python_version": TARGET_PYTHON.rsplit(".", 1)[0],
        "python_full_version": TARGET_PYTHON,
        "implementation_name": "cpython",
        "implementation_version": TARGET_PYTHON,
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": machine,
    }
    logical: list[str] = []
    current = ""
    for line in lock.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    selected = []
    for entry in logical:
        spec, *hashes = entry.split(" --hash=")
        requirement = Requirement(spec)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            name_version = f"{requirement.name}{requirement.specifier}"
            selected.append(" ".join([name_version, *(f"--hash={h}" for h in hashes)]))
    return selected


def build_wheelhouse(dest: Path) -> None:
    machine = platform.machine()
    requirements = locked_requirements(ROOT / "requirements" / "runtime.txt", machine)
    work = Path(tempfile.mkdtemp(prefix=".wheelhouse-", dir=dest.parent))
    try:
        (work / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
        platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(36, 4, -1)]
        platforms += [f"manylinux2014_{machine}", f"manylinux2010_{machine}",
                      f"manylinux1_{machine}", f"linux_{machine}"]  # fmt: skip
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--no-deps", "--only-binary=:all:", "--require-hashes",
            "--python-version", TARGET_PYTHON.rsplit(".", 1)[0], "--implementation", "cp",
            "--abi", "cp311", "--abi", "abi3", "--abi", "none",
            *(f"--platform={p}" for p in platforms),
            "-d", str(work / "wheels"), "-r", str(work / "requirements.txt"),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            noise = "is ignored: it is neither a file nor a directory"
            errors = [line for line in result.stderr.splitlines() if noise not in line]
            raise CheckFailedError("pip download failed:\n" + "\n".join(errors[-30:]))
        wheels = sorted((work / "wheels").glob("*.whl"))
        if len(wheels) != len(requirements):
            raise CheckFailedError(
                f"wheelhouse: {len(wheels)} wheels for {len(requirements)} locked packages"
            )
        if dest.exists():
            shutil.rmtree(dest)
        (work / "wheels").rename(dest)
        say(f"wheelhouse: {len(wheels)} wheels for {machine} CPython {TARGET_PYTHON} in {dest}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Helpers: ports, podman, speech, mosquitto, the stand-in Supervisor
# --------------------------------------------------------------------------------------


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise CheckFailedError(f"podman {' '.join(args[:3])} ... failed: {result.stderr.strip()}")
    return result


@dataclass
class Container:
    name: str

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.stdout.strip() == "true"

    def exit_code(self) -> int:
        state = podman("inspect", "--format", "{{.State.ExitCode}}", self.name)
        return int(state.stdout.strip())

    def healthcheck(self) -> tuple[int, str]:
        """Run the image's HEALTHCHECK now; (exit code, the probe's own line)."""
        result = podman("healthcheck", "run", self.name, check=False, timeout=60)
        state = podman("inspect", "--format", "{{json .State.Health}}", self.name, check=False)
        try:
            output = str(json.loads(state.stdout)["Log"][-1]["Output"]).strip()
        except (ValueError, KeyError, IndexError, TypeError):
            output = (result.stdout + result.stderr).strip()
        return result.returncode, output

    def exec(self, *command: str) -> str:
        return podman("exec", self.name, *command).stdout.strip()

    def stop(self) -> int:
        podman("stop", "--time", "10", self.name, timeout=60)
        return self.exit_code()

    def wait_for_log(self, text: str, timeout: float) -> str:
        from deploy_support import wait_for_text

        try:
            return wait_for_text(text, self.logs, self.running, timeout)
        except AssertionError as exc:
            raise CheckFailedError(f"{self.name}: {exc}") from None


class Containers:
    """Starts containers with the flags this machine needs; removes them all at the end."""

    def __init__(self) -> None:
        self.started: list[Container] = []
        self.prefix = f"kwsd-check-{os.getpid()}"

    def run(self, image: str, role: str, *args: str, command: tuple[str, ...] = ()) -> Container:
        name = f"{self.prefix}-{role}"
        podman("rm", "--force", name, check=False)
        podman("run", "--detach", "--name", name, *RUN_FLAGS, *args, image, *command)
        container = Container(name)
        self.started.append(container)
        return container

    def remove_all(self) -> None:
        for container in self.started:
            podman("rm", "--force", "--time", "2", container.name, check=False)


def make_speech(directory: Path) -> Path:
    """espeak-ng speech with half a second of silence either side, as a WAV file."""
    raw = directory / "espeak.wav"
    subprocess.run(["espeak-ng", "-v", "en-us+m3", "-w", str(raw), SPEECH_TEXT], check=True)
    with wave.open(str(raw), "rb") as source:
        params = source.getparams()
        frames = source.readframes(source.getnframes())
    silence = b"\0" * (params.sampwidth * params.nchannels * (params.framerate // 2))
    padded = directory / "speech.wav"
    with wave.open(str(padded), "wb") as target:
        target.setparams(params)
        target.writeframes(silence + frames + silence * 2)
    padded.chmod(0o644)
    return padded


@contextlib.contextmanager
def mosquitto(directory: Path) -> Iterator[int]:
    """A private broker on a free loopback port (never the system's mosquitto service)."""
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "log_dest stderr\nlog_type error\nlog_type warning\n",
        encoding="utf-8",
    )
    conf.chmod(0o644)
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise CheckFailedError(
                        f"mosquitto did not start: {process.communicate()[1]}"
                    ) from None
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class Subscriber:
    """Collects every message on the broker (paho, from the dev venv)."""

    port: int
    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="container-check")
        self.client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, msg.payload))
        self.client.on_connect = lambda client, *_: client.subscribe("#", qos=1)
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()

    def wait_for(self, prefix: str, timeout: float, container: Container) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for topic, payload in list(self.messages):
                if topic.startswith(prefix):
                    return {"topic": topic, "payload": json.loads(payload or b"null")}
            if not container.running():
                raise CheckFailedError(f"{container.name} exited:\n{container.logs()}")
            time.sleep(0.2)
        topics = sorted({t for t, _ in self.messages})
        raise CheckFailedError(
            f"no message on {prefix}* within {timeout:.0f} s (seen: {topics}):\n{container.logs()}"
        )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --------------------------------------------------------------------------------------
# Wyoming client
# --------------------------------------------------------------------------------------


def wyoming_detection(port: int, speech: Path, container: Container, timeout: float) -> str:
    from deploy_support import wyoming_detection as detect
    from deploy_support import wyoming_models

    models = wyoming_models(port, container.running, container.logs, timeout)
    say(f"  Wyoming server answers describe: wake models {models}")
    name = detect(port, speech)
    if name != EXPECTED_WAKE_ID:
        raise CheckFailedError(f"Wyoming: expected a detection of {EXPECTED_WAKE_ID}, got {name!r}")
    return name


# --------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------


def check_wyoming(containers: Containers, image: str, assets: Path, speech: Path) -> None:
    say("1/3 kwsd wyoming: a Wyoming client on the host gets a detection of generated speech")
    port = free_port()
    container = containers.run(
        image, "wyoming",
        "--publish", f"127.0.0.1:{port}:10400",
        "--volume", f"{assets}:/assets:ro", "--env", "KWSD_ASSETS=/assets",
        command=("wyoming", "--keywords", "HEY COMPUTER", "--keywords", "TURN ON THE LIGHTS"),
    )  # fmt: skip
    name = wyoming_detection(port, speech, container, timeout=90)
    say(f"  detection: {name} (espeak-ng: {SPEECH_TEXT!r})")
    uid = container.exec("id", "-u")
    if uid == "0":
        raise CheckFailedError("the container runs as root")
    compilers = container.exec("sh", "-c", "command -v gcc cc c++ make pip pip3 || true")
    if compilers:
        raise CheckFailedError(f"the image holds build tools: {compilers}")
    models = container.exec("kwsd", "models", "list")
    if "models directory: /data/kwsd/models" not in models:
        raise CheckFailedError(f"models do not go to the /data volume:\n{models}")
    code, output = container.healthcheck()
    if code != 0:
        raise CheckFailedError(f"HEALTHCHECK failed: {output}\n{container.logs()}")
    say(f"  uid {uid}, no compilers or pip, models in /data/kwsd/models, HEALTHCHECK: {output}")


def check_run_mqtt(
    containers: Containers, image: str, assets: Path, speech: Path, work: Path
) -> None:
    say("2/3 kwsd run (compose config): detection and HA discovery reach a host mosquitto")
    with mosquitto(work) as port:
        subscriber = Subscriber(port)
        try:
            container = containers.run(
                image, "run", "--network", "host",
                "--volume", f"{ROOT / 'deploy/compose/kwsd'}:/config:ro",
                "--volume", f"{assets}:/assets:ro", "--env", "KWSD_ASSETS=/assets",
                "--volume", f"{speech}:/audio/speech.wav:ro",
                "--env", "KWSD_MQTT__HOST=127.0.0.1", "--env", f"KWSD_MQTT__PORT={port}",
                "--env", "KWSD_SITE_ID=check",
                "--env", f"KWSD_WYOMING__URI=tcp://127.0.0.1:{free_port()}",
                "--env", f"KWSD_HEALTH__PORT={free_port()}",
                command=("run", "--file", "/audio/speech.wav", "--loop"),
            )  # fmt: skip
            found = subscriber.wait_for("kwsd/check/detection", 90, container)
            keyword = found["payload"].get("keyword")
            if keyword != EXPECTED_KEYWORD:
                raise CheckFailedError(f"MQTT: expected {EXPECTED_KEYWORD}, got {found}")
            say(f"  {found['topic']}: {keyword} score {found['payload'].get('score')}")
            discovery = subscriber.wait_for("homeassistant/", 10, container)
            say(f"  Home Assistant discovery: {discovery['topic']}")
            code, output = container.healthcheck()
            if code != 0:
                raise CheckFailedError(f"HEALTHCHECK failed: {output}\n{container.logs()}")
            say(f"  HEALTHCHECK (/healthz): {output}")
            exit_code = container.stop()
            if exit_code != 0:
                raise CheckFailedError(f"podman stop: exit code {exit_code}:\n{container.logs()}")
            say("  podman stop: clean exit 0")
        finally:
            subscriber.close()


def _addon_options(**changes: Any) -> str:
    options: dict[str, Any] = {
        "keywords": [{"phrase": "hey computer"},
                     {"phrase": "turn on the lights", "threshold": 0.3}],
        "wyoming": True, "microphone": False, "mqtt": True, "ha_discovery": True,
        "log_level": "info",
    }  # fmt: skip
    options.update(changes)
    return json.dumps(options)


def check_addon(
    containers: Containers, addon_image: str, assets: Path, speech: Path, work: Path
) -> None:
    say("3/3 Home Assistant add-on: options → kwsd config, Supervisor discovery, bad options")
    from supervisor_standin import SUPERVISOR_TOKEN, StandInSupervisor

    data = work / "addon-data"
    data.mkdir()
    with mosquitto(work) as mqtt_port:
        broker = {"host": "127.0.0.1", "port": mqtt_port, "ssl": False, "protocol": "3.1.1",
                  "username": "addons", "password": "stand-in"}  # fmt: skip
        supervisor = StandInSupervisor(broker)
        try:
            port = free_port()
            flags = (
                "--network", "host", "--init", "--volume", f"{data}:/data",
                "--volume", f"{assets}:/assets:ro", "--env", "KWSD_ASSETS=/assets",
                "--env", f"SUPERVISOR_URL={supervisor.url}",
                "--env", f"SUPERVISOR_TOKEN={SUPERVISOR_TOKEN}",
                # HA maps container port 10400; on the host network the check picks a free one.
                "--env", f"KWSD_WYOMING__URI=tcp://127.0.0.1:{port}",
                "--env", f"KWSD_HEALTH__PORT={free_port()}",
            )  # fmt: skip
            # First install with a bad option: one clear line, no crash loop, unhealthy.
            (data / "options.json").write_text(
                _addon_options(keywords=[{"phrase": "hey computer", "threshold": 1.5}])
            )
            container = containers.run(addon_image, "addon-bad", *flags)
            logs = container.wait_for_log("option `keywords[0].threshold` = 1.5 is invalid", 60)
            line = next(x for x in logs.splitlines() if "keywords[0].threshold" in x)
            say(f"  bad options logged: {line.strip()}")
            time.sleep(2)
            if not container.running():
                raise CheckFailedError("the add-on exited on bad options (a crash loop under HA)")
            code, output = container.healthcheck()
            if code == 0:
                raise CheckFailedError(f"HEALTHCHECK passed in the error state: {output}")
            say(f"  still running, HEALTHCHECK unhealthy: {output[:100]}")
            if container.stop() != 0:
                raise CheckFailedError(
                    f"the add-on in its error state did not stop cleanly:\n{container.logs()}"
                )

            # Good options: Wyoming discovery reaches the Supervisor, detection works.
            (data / "options.json").write_text(_addon_options())
            container = containers.run(addon_image, "addon-good", *flags)
            wyoming_detection(port, speech, container, timeout=120)
            deadline = time.monotonic() + 30
            while not supervisor.discovery and time.monotonic() < deadline:
                time.sleep(0.3)
            if not supervisor.discovery:
                raise CheckFailedError(
                    f"no Wyoming discovery reached the Supervisor:\n{container.logs()}"
                )
            announced = supervisor.discovery[-1]
            if announced.get("service") != "wyoming" or not str(
                announced.get("config", {}).get("uri", "")
            ).endswith(f":{port}"):
                raise CheckFailedError(f"unexpected discovery message {announced}")
            say(f"  discovery sent: {announced}; Wyoming detection: {EXPECTED_KEYWORD}")
            container.stop()

            # Bad options after good ones: the last good options are used, and said so.
            (data / "options.json").write_text(_addon_options(wyoming=False, microphone=False))
            container = containers.run(addon_image, "addon-fallback", *flags)
            logs = container.wait_for_log("starting with the last good options", 120)
            wyoming_detection(port, speech, container, timeout=120)
            reason = next(x for x in logs.splitlines() if "options are invalid" in x)
            say(f"  fallback: {reason.strip()[:110]}...; detection still works")
            container.stop()
        finally:
            supervisor.close()


def run_checks(image: str, addon_image: str, assets: Path) -> None:
    containers = Containers()
    work = Path(tempfile.mkdtemp(prefix="kwsd-container-check-"))
    work.chmod(0o755)
    try:
        speech = make_speech(work)
        started = time.monotonic()
        check_wyoming(containers, image, assets, speech)
        check_run_mqtt(containers, image, assets, speech, work)
        check_addon(containers, addon_image, assets, speech, work)
        say(f"all container checks passed in {time.monotonic() - started:.0f} s")
    finally:
        containers.remove_all()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("mirror", help="print the Debian mirror apt uses here")
    wheels = sub.add_parser("wheelhouse", help="download the image's locked wheels")
    wheels.add_argument("dest", type=Path)
    run = sub.add_parser("run", help="run the checks against built images")
    run.add_argument("--image", required=True)
    run.add_argument("--addon-image", required=True)
    run.add_argument("--assets", type=Path, required=True)
    args = parser.parse_args()
    try:
        if args.action == "mirror":
            print(debian_mirror())
        elif args.action == "wheelhouse":
            build_wheelhouse(args.dest.resolve())
        else:
            run_checks(args.image, args.addon_image, args.assets.resolve())
    except CheckFailedError as exc:
        print(f"container-check: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
