"""MCPDiscovery: which file is used, how entries are read, what is excluded, and hot reload."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from tools.downstream.discovery import DiscoveryChange, MCPDiscovery
from tools.downstream.entries import StdioEntry
from tools.downstream.errors import MCPConfigError, MCPServerNotFoundError


def write_config(path: Path, servers: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mcpServers": servers}, indent=2), encoding="utf-8")
    return path


def rewrite(path: Path, text: str) -> None:
    """Replace the file's content and make sure its stat signature changes even on a coarse clock."""
    before = path.stat()
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))


def discovery_for(path: Path, environ: dict[str, str] | None = None) -> MCPDiscovery:
    return MCPDiscovery(path, environ=environ or {})


# --- which file ---------------------------------------------------------------------------------


def test_the_first_existing_search_path_is_used_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    second, third = home / ".lmstudio" / "mcp.json", home / ".mcp.json"
    write_config(second, {"from-second": {"command": "x"}})
    write_config(third, {"from-third": {"command": "x"}})

    with caplog.at_level(logging.INFO, logger="tools.downstream.discovery"):
        discovery = MCPDiscovery(cwd=project, home=home, environ={})
        servers = discovery.servers()

    assert list(servers) == ["from-second"]
    assert discovery.path == second
    assert any(str(second) in record.getMessage() for record in caplog.records)


def test_an_explicit_config_path_wins_over_the_search_paths(tmp_path: Path) -> None:
    write_config(tmp_path / "home" / ".mcp.json", {"searched": {"command": "x"}})
    explicit = write_config(tmp_path / "explicit.json", {"explicit": {"command": "x"}})

    discovery = MCPDiscovery(explicit, cwd=tmp_path, home=tmp_path / "home", environ={})

    assert list(discovery.servers()) == ["explicit"]


def test_no_config_file_means_no_servers_and_an_error_naming_the_searched_paths(tmp_path: Path) -> None:
    discovery = MCPDiscovery(cwd=tmp_path / "project", home=tmp_path / "home", environ={})
    paths = [tmp_path / "project" / ".mcp.json", tmp_path / "home" / ".lmstudio" / "mcp.json"]

    assert discovery.servers() == {}
    assert discovery.parse_error is not None
    assert str(paths[0]) in discovery.parse_error and str(paths[1]) in discovery.parse_error
    with pytest.raises(MCPServerNotFoundError) as caught:
        discovery.get("memory")
    assert str(paths[0]) in str(caught.value)


# --- entries ------------------------------------------------------------------------------------


def test_stdio_and_remote_entries_are_read_with_their_transport(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / ".mcp.json",
        {
            "fs": {"command": "npx", "args": ["-y", "fs"], "env": {"A": "1"}, "cwd": "/srv"},
            "explicit-stdio": {"type": "stdio", "command": "uvx", "args": ["mcp-server-time"]},
            "remote": {"type": "http", "url": "https://example.test/mcp", "headers": {"Authorization": "Bearer t"}},
            "streamable": {"type": "streamable-http", "url": "http://127.0.0.1:9/mcp"},
            "legacy-sse": {"type": "sse", "url": "http://127.0.0.1:9/sse"},
        },
    )

    servers = discovery_for(config).servers()

    assert servers["fs"] == StdioEntry(
        name="fs", transport="stdio", command="npx", args=["-y", "fs"], env={"A": "1"}, cwd="/srv"
    )
    assert servers["explicit-stdio"].transport == "stdio"
    assert servers["remote"].transport == "http"
    assert servers["remote"].headers == {"Authorization": "Bearer t"}
    assert servers["streamable"].transport == "http"
    assert servers["legacy-sse"].transport == "sse"


def test_variables_are_expanded_with_defaults_in_every_field(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / ".mcp.json",
        {
            "local": {
                "command": "${BIN_DIR}/server",
                "args": ["--root", "${ROOT:-/data}", "--mode=${MODE:-fast}"],
                "env": {"TOKEN": "${TOKEN}", "EMPTY_TAKES_DEFAULT": "${EMPTY:-fallback}"},
                "cwd": "${HOME_DIR}",
            },
            "remote": {"type": "http", "url": "https://${HOST}/mcp", "headers": {"X-Key": "${TOKEN}"}},
        },
    )
    environ = {
        "BIN_DIR": "/opt/bin", "MODE": "slow", "TOKEN": "s3cret", "EMPTY": "", "HOME_DIR": "/home/u", "HOST": "h"
    }

    servers = discovery_for(config, environ).servers()

    local = servers["local"]
    assert local.command == "/opt/bin/server"
    assert local.args == ["--root", "/data", "--mode=slow"]
    assert local.env == {"TOKEN": "s3cret", "EMPTY_TAKES_DEFAULT": "fallback"}
    assert local.cwd == "/home/u"
    assert servers["remote"].url == "https://h/mcp"
    assert servers["remote"].headers == {"X-Key": "s3cret"}


def test_an_unset_variable_makes_only_its_entry_unusable_and_names_server_and_variable(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / ".mcp.json",
        {"needs-key": {"command": "srv", "env": {"KEY": "${MISSING_KEY}"}}, "fine": {"command": "srv"}},
    )
    discovery = discovery_for(config)

    servers = discovery.servers()

    assert list(servers) == ["fine"]
    assert "needs-key" in discovery.entry_errors
    assert "MISSING_KEY" in discovery.entry_errors["needs-key"]
    with pytest.raises(MCPConfigError) as caught:
        discovery.get("needs-key")
    assert "'needs-key'" in str(caught.value) and "MISSING_KEY" in str(caught.value)
    assert caught.value.server == "needs-key"


def test_an_entry_with_neither_command_nor_url_is_an_error_naming_the_server(tmp_path: Path) -> None:
    config = write_config(tmp_path / ".mcp.json", {"empty": {"args": ["x"]}, "fine": {"command": "srv"}})
    discovery = discovery_for(config)

    assert list(discovery.servers()) == ["fine"]
    with pytest.raises(MCPConfigError, match=r"'empty' has neither \"command\".*nor \"url\""):
        discovery.get("empty")


def test_a_disabled_entry_is_listed_as_disabled(tmp_path: Path) -> None:
    config = write_config(tmp_path / ".mcp.json", {"off": {"command": "srv", "disabled": True}})

    entry = discovery_for(config).get("off")

    assert entry.disabled is True


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("lmstudio-bridge", []),
        ("/home/u/.local/bin/lmstudio-bridge", ["--log-level", "DEBUG"]),
        ("uvx", ["lmstudio-bridge-enhanced"]),
        ("pipx", ["run", "lmstudio-bridge-enhanced==1.2.0"]),
        ("uvx", ["--from", "lmstudio-bridge-enhanced", "lmstudio-bridge"]),
        ("python", ["-m", "main"]),
        ("python3", [str(Path(__file__).resolve().parent.parent / "main.py")]),
    ],
)
def test_an_entry_that_launches_this_bridge_is_excluded_with_the_reason_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, command: str, args: list[str]
) -> None:
    config = write_config(
        tmp_path / ".mcp.json", {"myself": {"command": command, "args": args}, "other": {"command": "srv"}}
    )
    discovery = discovery_for(config)

    with caplog.at_level(logging.INFO, logger="tools.downstream.discovery"):
        servers = discovery.servers()

    assert list(servers) == ["other"]
    assert "myself" in discovery.excluded
    assert any("myself" in r.getMessage() and "Excluding" in r.getMessage() for r in caplog.records)
    with pytest.raises(MCPConfigError, match="this bridge"):
        discovery.get("myself")


def test_similar_but_different_commands_are_not_excluded(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / ".mcp.json",
        {
            "other-main": {"command": "python", "args": [str(tmp_path / "elsewhere" / "main.py")]},
            "other-module": {"command": "python", "args": ["-m", "mainframe"]},
            "other-bridge": {"command": "lmstudio-bridge-helper"},
        },
    )

    assert sorted(discovery_for(config).servers()) == ["other-bridge", "other-main", "other-module"]


def test_unknown_server_error_lists_known_names_and_the_file_to_add_it_to(tmp_path: Path) -> None:
    config = write_config(tmp_path / ".mcp.json", {"memory": {"command": "srv"}, "time": {"command": "srv"}})

    with pytest.raises(MCPServerNotFoundError) as caught:
        discovery_for(config).get("fetch")

    message = str(caught.value)
    assert "'fetch'" in message and "memory, time" in message and str(config) in message
    assert caught.value.known == ["memory", "time"]


# --- hot reload ---------------------------------------------------------------------------------


def test_refresh_reports_added_changed_and_removed_servers(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / ".mcp.json", {"keep": {"command": "a"}, "edit": {"command": "b"}, "drop": {"command": "c"}}
    )
    discovery = discovery_for(config)
    first = discovery.refresh()
    assert first == DiscoveryChange(added={"keep", "edit", "drop"})

    edited = {"keep": {"command": "a"}, "edit": {"command": "b2"}, "new": {"command": "d"}}
    rewrite(config, json.dumps({"mcpServers": edited}))
    change = discovery.refresh()

    assert change == DiscoveryChange(added={"new"}, changed={"edit"}, removed={"drop"})
    assert discovery.get("edit").command == "b2"


def test_refresh_of_an_unchanged_file_does_not_parse_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path / ".mcp.json", {"one": {"command": "a"}})
    discovery = discovery_for(config)
    parsed: list[Path] = []
    parse = discovery._parse
    monkeypatch.setattr(discovery, "_parse", lambda path: parsed.append(path) or parse(path))

    changes = [discovery.refresh() for _ in range(50)]

    assert parsed == [config]
    assert changes[0] and not any(changes[1:])


def test_a_file_turned_malformed_keeps_the_last_good_servers_and_reports_the_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / ".mcp.json", {"one": {"command": "a"}})
    discovery = discovery_for(config)
    discovery.refresh()

    rewrite(config, '{\n  "mcpServers": {\n    "one": {"command": "a",}\n  }\n}\n')
    change = discovery.refresh()

    assert not change
    assert list(discovery.servers()) == ["one"]
    assert discovery.parse_error is not None
    assert str(config) in discovery.parse_error and "line 3" in discovery.parse_error
    assert "column" in discovery.parse_error
    error = discovery.config_error
    assert error is not None and (error.path, error.line) == (config, 3)

    rewrite(config, json.dumps({"mcpServers": {"one": {"command": "a"}, "two": {"command": "b"}}}))
    assert discovery.refresh() == DiscoveryChange(added={"two"})
    assert discovery.parse_error is None


def test_a_file_without_an_mcpservers_object_is_a_parse_error(tmp_path: Path) -> None:
    config = tmp_path / ".mcp.json"
    config.write_text('{"servers": {}}', encoding="utf-8")
    discovery = discovery_for(config)

    assert discovery.servers() == {}
    assert discovery.parse_error is not None and '"mcpServers"' in discovery.parse_error


def test_a_config_file_that_disappears_removes_its_servers(tmp_path: Path) -> None:
    config = write_config(tmp_path / ".mcp.json", {"one": {"command": "a"}})
    discovery = discovery_for(config)
    discovery.refresh()

    config.unlink()
    change = discovery.refresh()

    assert change == DiscoveryChange(removed={"one"})
    assert discovery.servers() == {}
    assert discovery.parse_error is not None and str(config) in discovery.parse_error
