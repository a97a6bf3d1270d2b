"""`kwsd container start|health|addon|addon-config|announce`: the image's entry points.

These are what the container image and the Home Assistant add-on run (see the
Containerfile and deploy/homeassistant/); they are commands rather than shell scripts
so that they are typed, tested and give kwsd's error messages. `addon-config` is the
one meant for people too: it shows the kwsd config an options.json turns into, or why
it is rejected, without starting anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kwsd.errors import ConfigError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "container",
        help="entry points of the container image and the Home Assistant add-on",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="container_command", metavar="ACTION")
    actions.required = True

    start = actions.add_parser(
        "start",
        help="prepare the container (config, /data, model, microphone) and exec a kwsd command",
        description="The image's ENTRYPOINT. COMMAND is a kwsd sub-command with its "
        "arguments (default: run); anything else (e.g. bash) is executed as given.",
    )
    start.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND ...")
    start.set_defaults(func=_start)

    health = actions.add_parser(
        "health",
        help="the HEALTHCHECK: is the service the entrypoint started answering?",
        description="Exit 0 when kwsd's /healthz or Wyoming server answers, 1 with the "
        "reason otherwise.",
    )
    health.set_defaults(func=_health)

    addon = actions.add_parser(
        "addon",
        help="the Home Assistant add-on: map /data/options.json to a kwsd config and start",
        description="Read the add-on options, check them (a bad option gives one clear "
        "log line, then the last good options or an error state, never a crash loop), "
        "write the kwsd config and start kwsd.",
    )
    addon.add_argument(
        "--data", type=Path, default=Path("/data"), metavar="DIR",
        help="the add-on's data volume holding options.json (default: /data)",
    )  # fmt: skip
    addon.set_defaults(func=_addon)

    mapping = actions.add_parser(
        "addon-config",
        help="print the kwsd config an add-on options.json maps to (or why it is invalid)",
        description="Map OPTIONS (an add-on options.json) to kwsd's config.toml without "
        "starting anything; MQTT comes from the options' mqtt_host only, since the "
        "Supervisor is not asked. Exit 0 and the TOML when valid, 3 with the reason if not.",
    )
    mapping.add_argument("options", type=Path, metavar="OPTIONS")
    mapping.add_argument("out", type=Path, nargs="?", metavar="OUT", help="write here, not stdout")
    mapping.set_defaults(func=_addon_config)

    announce = actions.add_parser(
        "announce",
        help="tell Home Assistant (Supervisor discovery) where the Wyoming server is",
    )
    announce.add_argument("--uri", required=True, help="the Wyoming server's tcp://HOST:PORT")
    announce.set_defaults(func=_announce)


def _start(args: argparse.Namespace) -> int:
    from kwsd.deploy.container import start

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return start(command)


def _health(args: argparse.Namespace) -> int:
    from kwsd.deploy.probe import main

    return main()


def _addon(args: argparse.Namespace) -> int:
    from kwsd.deploy.addon import AddonPaths, run_addon
    from kwsd.deploy.supervisor import Supervisor

    return run_addon(AddonPaths(args.data), Supervisor.from_env())


def _addon_config(args: argparse.Namespace) -> int:
    from kwsd.cli.config import to_toml
    from kwsd.deploy.addon import (
        AddonPaths,
        OptionsError,
        choose_broker,
        kwsd_config,
        parse_options,
    )

    try:
        options = parse_options(args.options.read_text(encoding="utf-8"), str(args.options))
        command = options.command
    except OSError as exc:
        raise ConfigError(f"cannot read {args.options}: {exc.strerror or exc}") from None
    except OptionsError as exc:
        raise ConfigError(str(exc)) from None
    broker = choose_broker(options, None) if command == "run" else None
    config = kwsd_config(options, AddonPaths(), broker)
    text = f"# The add-on runs: kwsd {command} --config THIS_FILE\n" + to_toml(config)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


def _announce(args: argparse.Namespace) -> int:
    from kwsd.deploy.addon import announce_wyoming
    from kwsd.deploy.supervisor import Supervisor

    return announce_wyoming(args.uri, Supervisor.from_env())
