"""The `orderbook` command's options: every one described in --help with its
default, `serve`'s defaults taken from `Settings` (one place), environment
variables as defaults that a flag overrides and --help never prints, and
the documented flags accepted."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from orderbook.cli import build_parser, serve_settings
from orderbook.server.settings import OPTION, Settings

ROOT = Path(__file__).resolve().parents[1]
ENV = (
    "ORDERBOOK_HOST",
    "PORT",
    "ORDERBOOK_TOKEN",
    "ORDERBOOK_FEED_TOKEN",
    "ORDERBOOK_HTTP_TOKEN",
    "ORDERBOOK_REDIS",
    "ORDERBOOK_TLS_CERT",
    "ORDERBOOK_TLS_KEY",
    "ORDERBOOK_LOG_FORMAT",
)


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def shown_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text --help prints for `action`."""
    return parser._get_formatter()._expand_help(action)


def squeezed(text: str) -> str:
    # Without whitespace: --help wraps lines at spaces and after hyphens.
    return "".join(text.split())


def test_every_subcommand_is_walked():
    assert set(subcommands(build_parser())) == {"serve", "watch", "replay", "verify", "record"}


@pytest.mark.parametrize("command", ["serve", "watch", "replay", "verify", "record"])
def test_every_option_has_help_that_shows_its_default(command):
    parser = subcommands(build_parser())[command]
    page = squeezed(parser.format_help())
    checked = 0
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"{command} {name}: no help"
        text = shown_help(parser, action)
        assert squeezed(text) in page, f"{command} {name}: its help is not on the --help page"
        checked += 1
        if not action.option_strings or action.required or action.nargs == 0:
            continue  # positional, required, or a flag (off unless given)
        assert "default" in text, f"{command} {name}: the help does not say the default: {text!r}"
        if action.default is not None:
            assert str(action.default) in text, f"{command} {name}: default {action.default!r} not in {text!r}"
    assert checked >= 5


def serve_options() -> dict[str, argparse.Action]:
    serve = subcommands(build_parser())["serve"]
    return {a.dest: a for a in serve._actions}


def test_serve_with_no_options_gives_the_default_settings():
    s = serve_settings(build_parser().parse_args(["serve"]))
    d = Settings()
    for f in dataclasses.fields(Settings):
        assert getattr(s, f.name) == getattr(d, f.name), f.name
    assert s == d


def test_each_serve_default_is_the_settings_field_default():
    actions = serve_options()
    fields = [f for f in dataclasses.fields(Settings) if OPTION in f.metadata]
    assert len(fields) >= 35
    for f in fields:
        opt = f.metadata[OPTION]
        action = actions[f.name]
        assert opt.flag in action.option_strings, f.name
        if isinstance(f.default, bool):
            # The flag turns the default around; not given, it is the default.
            assert action.default is f.default and action.nargs == 0, f.name
        elif isinstance(f.default, tuple):
            assert action.default is None and f.default == (), f.name  # repeatable, none given
        else:
            shown = action.default
            assert (shown * opt.scale if shown is not None else None) == f.default, f.name
    history = Settings().history
    assert (actions["history_entries"].default, actions["history_bytes"].default) == (
        history.max_entries,
        history.max_bytes,
    )


def test_serve_flags_set_their_fields():
    s = serve_settings(
        build_parser().parse_args(
            [
                "serve",
                *("--port", "9001", "--ping-interval", "1.5", "--lease-ttl", "0.25", "--degrade-interval", "40"),
                *("--client-buffer", "1024", "--origin", "https://a.example", "--origin", "*", "--seed", "7"),
                *("--no-simulator", "--allow-takeover", "--history-entries", "3", "--history-bytes", "4096"),
            ]
        )
    )
    assert (s.port, s.ping_interval, s.lease_ttl_ms, s.degrade_interval_ms) == (9001, 1.5, 250, 40)
    assert (s.client_buffer_limit, s.allowed_origins, s.simulator_seed) == (1024, ("https://a.example", "*"), 7)
    assert (s.simulator, s.allow_takeover, s.history.max_entries, s.history.max_bytes) == (False, True, 3, 4096)
    # A cluster's feed is its log: no simulator, though not turned off.
    assert not serve_settings(build_parser().parse_args(["serve", "--redis", "redis://h:1/0"])).simulator


def test_environment_variables_are_defaults_that_flags_override_and_help_never_shows(monkeypatch):
    env = {
        "ORDERBOOK_HOST": "0.0.0.0",
        "PORT": "9009",
        "ORDERBOOK_TOKEN": "env-sub-secret",
        "ORDERBOOK_FEED_TOKEN": "env-feed-secret",
        "ORDERBOOK_HTTP_TOKEN": "env-http-secret",
        "ORDERBOOK_REDIS": "redis://:env-redis-secret@h:1/0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = build_parser()
    s = serve_settings(parser.parse_args(["serve"]))
    assert (s.host, s.port, s.subscriber_token, s.feed_token, s.http_token, s.redis_url) == (
        "0.0.0.0",
        9009,
        "env-sub-secret",
        "env-feed-secret",
        "env-http-secret",
        "redis://:env-redis-secret@h:1/0",
    )
    s = serve_settings(parser.parse_args(["serve", "--port", "9010", "--token", "flag", "--host", "::1"]))
    assert (s.port, s.subscriber_token, s.host) == (9010, "flag", "::1")
    assert parser.parse_args(["watch", "A"]).token == "env-sub-secret"
    assert parser.parse_args(["record", "A", "--out", "x"]).token == "env-sub-secret"
    assert parser.parse_args(["replay", "f"]).feed_token == "env-feed-secret"
    pages = [p.format_help() for p in (parser, *subcommands(parser).values())]
    for page in pages:
        assert "secret" not in page
    assert "$ORDERBOOK_TOKEN" in subcommands(parser)["serve"].format_help()


def documented_serve_flags() -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text.split("### `orderbook serve` options", 1)[1].split("\n\n", 2)[1]
    flags = set()
    for row in table.splitlines()[2:]:
        first_cell = row.split("|")[1]
        flags.update(re.findall(r"--[a-z][a-z-]*", first_cell))
    return flags


def test_the_documented_serve_flags_exist_and_every_serve_flag_is_documented():
    serve = subcommands(build_parser())["serve"]
    flags = {s for a in serve._actions if a.help != argparse.SUPPRESS for s in a.option_strings} - {"-h", "--help"}
    documented = documented_serve_flags()
    assert len(documented) >= 30
    assert documented <= flags, documented - flags
    docs = " ".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    assert not {f for f in flags if f"`{f}" not in docs}
