"""MCPSessionPool against real MCP servers: npm reference servers, mcp-server-time, and tiny
in-test servers (stdio script, streamable HTTP under uvicorn) where a behaviour must be forced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

from tools.downstream.discovery import DiscoveryChange
from tools.downstream.entries import HttpEntry, ServerEntry, StdioEntry
from tools.downstream.errors import (
    MCPServerCrashedError,
    MCPServerStartError,
    MCPToolTimeoutError,
)
from tools.downstream.pool import MCPSessionPool

pytestmark = pytest.mark.slow

WAIT_S = 15.0  # bound on every wait for a real process

TINY_SERVER = '''
import os, socket, subprocess, sys
import anyio
from mcp.server.mcpserver import Context, MCPServer

if os.environ.get("PID_LOG"):
    with open(os.environ["PID_LOG"], "a") as log:
        log.write(f"{os.getpid()}\\n")
helper = None
if os.environ.get("SPAWN_HELPER"):
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
server = MCPServer("tiny")


@server.tool()
def ping() -> str:
    return "pong"


@server.tool()
def helper_pid() -> int:
    return helper.pid if helper else -1


@server.tool()
async def hang(notify_port: int = 0) -> str:
    if notify_port:
        with socket.create_connection(("127.0.0.1", notify_port)) as conn:
            conn.sendall(b"started")
    await anyio.sleep(3600)
    return "never"


@server.tool()
async def add_tool(name: str, ctx: Context) -> str:
    def added() -> str:
        return "added tool answers"

    server.add_tool(added, name=name, description="added at run time")
    await ctx.session.send_tool_list_changed()
    return "added"


server.run()
'''


@pytest.fixture
def tiny_entry(tmp_path: Path) -> Callable[..., ServerEntry]:
    script = tmp_path / "tiny_server.py"
    script.write_text(TINY_SERVER, encoding="utf-8")

    def make(name: str = "tiny", **env: str) -> ServerEntry:
        return StdioEntry(name=name, transport="stdio", command=sys.executable, args=[str(script)], env=env)

    return make


@pytest.fixture
async def pool() -> AsyncIterator[MCPSessionPool]:
    async with MCPSessionPool(start_timeout_s=WAIT_S, call_timeout_s=WAIT_S, idle_timeout_s=0) as the_pool:
        yield the_pool


def alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie waiting for its parent to reap it is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def ended(pid: int, timeout_s: float = WAIT_S) -> bool:
    """Wait (bounded) until `pid` has terminated, woken by its pidfd rather than polling.

    A SIGKILL takes effect asynchronously: the process may run for a moment after kill() returns.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    terminated = loop.create_future()
    loop.add_reader(pidfd, lambda: terminated.done() or terminated.set_result(None))
    try:
        await asyncio.wait_for(terminated, timeout_s)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def text_of(result: object) -> str:
    return "".join(getattr(block, "text", "") for block in getattr(result, "content", []))


# --- the reference servers ----------------------------------------------------------------------


async def test_filesystem_server_lists_its_tools_and_reads_a_real_file(
    pool: MCPSessionPool, filesystem_entry: Callable[..., ServerEntry], tmp_path: Path
) -> None:
    (tmp_path / "note.txt").write_text("hello from the pool\n", encoding="utf-8")
    entry = filesystem_entry(tmp_path)

    tools = await pool.list_tools(entry)
    result = await pool.call_tool(entry, "read_text_file", {"path": str((tmp_path / "note.txt").resolve())})

    assert "read_text_file" in {tool.name for tool in tools}
    assert result.is_error is not True
    assert "hello from the pool" in text_of(result)
    assert pool.status(entry.name).tool_count == len(tools)


async def test_memory_server_keeps_an_entity_between_calls_in_its_own_file(
    pool: MCPSessionPool, memory_entry: Callable[..., ServerEntry], tmp_path: Path
) -> None:
    memory_file = tmp_path / "memory.jsonl"
    entry = memory_entry(memory_file)

    created = await pool.call_tool(
        entry,
        "create_entities",
        {"entities": [{"name": "Ada", "entityType": "person", "observations": ["wrote the first program"]}]},
    )
    graph = await pool.call_tool(entry, "read_graph", {})

    assert created.is_error is not True
    assert "Ada" in text_of(graph) and "wrote the first program" in text_of(graph)
    assert "Ada" in memory_file.read_text(encoding="utf-8")


async def test_time_server_tells_the_current_time_in_utc(pool: MCPSessionPool, time_entry: ServerEntry) -> None:
    result = await pool.call_tool(time_entry, "get_current_time", {"timezone": "UTC"})

    assert result.is_error is not True
    assert json.loads(text_of(result))["timezone"] == "UTC"


async def test_a_second_call_reuses_the_running_process(pool: MCPSessionPool, time_entry: ServerEntry) -> None:
    await pool.call_tool(time_entry, "get_current_time", {"timezone": "UTC"})
    first_pid = pool.status("time").pid

    await pool.call_tool(time_entry, "get_current_time", {"timezone": "Europe/Paris"})

    assert first_pid is not None and alive(first_pid)
    assert pool.status("time").pid == first_pid


async def test_a_long_tool_call_past_its_timeout_raises_tool_timeout(
    pool: MCPSessionPool, everything_entry: ServerEntry
) -> None:
    with pytest.raises(MCPToolTimeoutError) as caught:
        await pool.call_tool(
            everything_entry, "trigger-long-running-operation", {"duration": 30, "steps": 2}, timeout_s=0.5
        )

    assert (caught.value.server, caught.value.tool) == ("everything", "trigger-long-running-operation")
    # The session survives a timed-out call.
    echoed = await pool.call_tool(everything_entry, "echo", {"message": "still here"})
    assert "still here" in text_of(echoed)


# --- sharing, crashes, start failures ------------------------------------------------------------


async def test_ten_concurrent_first_uses_start_one_process(
    pool: MCPSessionPool, tiny_entry: Callable[..., ServerEntry], tmp_path: Path
) -> None:
    pid_log = tmp_path / "pids.log"
    entry = tiny_entry(PID_LOG=str(pid_log))

    results = await asyncio.wait_for(
        asyncio.gather(*(pool.call_tool(entry, "ping", {}) for _ in range(10))), WAIT_S
    )

    assert [text_of(r) for r in results] == ["pong"] * 10
    assert len(pid_log.read_text().split()) == 1


async def test_a_killed_server_fails_the_call_in_flight_and_restarts_on_next_use(
    pool: MCPSessionPool, tiny_entry: Callable[..., ServerEntry]
) -> None:
    entry = tiny_entry()
    await pool.list_tools(entry)
    first_pid = pool.status(entry.name).pid
    assert first_pid is not None
    in_tool = asyncio.Event()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        in_tool.set()
        writer.close()

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        call = asyncio.create_task(pool.call_tool(entry, "hang", {"notify_port": port}))
        await asyncio.wait_for(in_tool.wait(), WAIT_S)
        os.kill(first_pid, signal.SIGKILL)

        with pytest.raises(MCPServerCrashedError) as caught:
            await asyncio.wait_for(call, WAIT_S)

    assert caught.value.name == entry.name
    answer = await pool.call_tool(entry, "ping", {})
    assert text_of(answer) == "pong"
    assert pool.status(entry.name).pid not in (None, first_pid)


async def test_a_server_that_exits_at_start_reports_its_stderr_tail_and_exit_code(pool: MCPSessionPool) -> None:
    entry = StdioEntry(
        name="boom",
        transport="stdio",
        command=sys.executable,
        args=["-c", 'import sys; sys.stderr.write("boom-marker\\n"); sys.exit(3)'],
    )

    with pytest.raises(MCPServerStartError) as caught:
        await pool.list_tools(entry)

    assert "boom-marker" in str(caught.value) and "boom-marker" in caught.value.stderr_tail
    assert caught.value.exit_code == 3
    assert pool.status("boom").started is False
    assert "boom-marker" in (pool.status("boom").last_error or "")


async def test_a_command_that_does_not_exist_fails_to_start_naming_it(pool: MCPSessionPool, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-server")
    entry = StdioEntry(name="ghost", transport="stdio", command=missing)

    with pytest.raises(MCPServerStartError, match="command not found") as caught:
        await pool.call_tool(entry, "anything", {})

    assert caught.value.name == "ghost" and missing in str(caught.value)


async def test_a_server_that_never_initializes_fails_after_the_start_timeout_and_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    entry = StdioEntry(
        name="mute",
        transport="stdio",
        command=sys.executable,
        args=["-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"],
    )
    async with MCPSessionPool(start_timeout_s=1.0, call_timeout_s=5, idle_timeout_s=0) as short_pool:
        with pytest.raises(MCPServerStartError, match="did not finish starting within 1 s"):
            await short_pool.list_tools(entry)

    assert not alive(int(pid_file.read_text()))


async def test_a_disabled_entry_is_never_started(pool: MCPSessionPool, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    entry = StdioEntry(
        name="off", transport="stdio", command=sys.executable, args=["-c", f"open({str(marker)!r}, 'w')"], disabled=True
    )

    with pytest.raises(MCPServerStartError, match="disabled"):
        await pool.list_tools(entry)

    assert not marker.exists()


async def test_closing_the_pool_leaves_no_child_processes(
    tiny_entry: Callable[..., ServerEntry],
    time_entry: ServerEntry,
    filesystem_entry: Callable[..., ServerEntry],
    tmp_path: Path,
) -> None:
    pool = MCPSessionPool(start_timeout_s=WAIT_S, call_timeout_s=WAIT_S, idle_timeout_s=0)
    tiny = tiny_entry(SPAWN_HELPER="1")
    entries = [tiny, time_entry, filesystem_entry(tmp_path)]
    await asyncio.gather(*(pool.list_tools(e) for e in entries))
    pids = [pool.status(e.name).pid for e in entries]
    helper = int(text_of(await pool.call_tool(tiny, "helper_pid", {})))
    assert all(pid is not None and alive(pid) for pid in pids) and alive(helper)

    await pool.aclose()

    assert [pid for pid in pids if pid is not None and alive(pid)] == []
    assert await ended(helper), "the server's own child outlived the pool"


# --- tool list, remote servers, lifecycle -------------------------------------------------------


async def test_the_tool_list_is_fetched_again_after_the_server_announces_a_change(
    pool: MCPSessionPool, tiny_entry: Callable[..., ServerEntry]
) -> None:
    entry = tiny_entry()
    before = {tool.name for tool in await pool.list_tools(entry)}

    await pool.call_tool(entry, "add_tool", {"name": "late_tool"})
    await pool.call_tool(entry, "ping", {})  # one more round trip: the notification has been handled
    after = {tool.name for tool in await pool.list_tools(entry)}

    assert "late_tool" not in before
    assert after == before | {"late_tool"}
    assert text_of(await pool.call_tool(entry, "late_tool", {})) == "added tool answers"


@pytest.fixture
async def http_server_url() -> AsyncIterator[str]:
    remote = MCPServer("remote")

    @remote.tool()
    def whoami(ctx: Context) -> str:
        return (ctx.headers or {}).get("x-test-token", "no header")

    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(remote.streamable_http_app(), log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, WAIT_S)
        listening.close()


async def test_a_streamable_http_server_is_used_through_its_url_with_the_entry_headers(
    pool: MCPSessionPool, http_server_url: str
) -> None:
    entry = HttpEntry(name="remote", transport="http", url=http_server_url, headers={"X-Test-Token": "t0k3n"})

    tools = await pool.list_tools(entry)
    answer = await pool.call_tool(entry, "whoami", {})

    assert [tool.name for tool in tools] == ["whoami"]
    assert text_of(answer) == "t0k3n"
    assert pool.status("remote").started and pool.status("remote").pid is None


async def test_an_idle_session_is_closed_and_started_again_on_next_use(tiny_entry: Callable[..., ServerEntry]) -> None:
    closed: list[tuple[str, str]] = []
    idle_closed = asyncio.Event()

    def on_close(name: str, reason: str) -> None:
        closed.append((name, reason))
        if reason == "idle":
            idle_closed.set()

    entry = tiny_entry()
    async with MCPSessionPool(
        start_timeout_s=WAIT_S, call_timeout_s=WAIT_S, idle_timeout_s=0.3, on_close=on_close
    ) as idle_pool:
        await idle_pool.call_tool(entry, "ping", {})
        first_pid = idle_pool.status(entry.name).pid

        await asyncio.wait_for(idle_closed.wait(), WAIT_S)
        assert idle_pool.status(entry.name).started is False
        assert first_pid is not None and not alive(first_pid)

        assert text_of(await idle_pool.call_tool(entry, "ping", {})) == "pong"
        assert idle_pool.status(entry.name).pid not in (None, first_pid)

    assert closed[0] == (entry.name, "idle")


async def test_apply_closes_a_changed_entrys_session_and_the_next_use_runs_the_new_entry(
    tiny_entry: Callable[..., ServerEntry], tmp_path: Path
) -> None:
    reasons: list[str] = []
    async with MCPSessionPool(
        start_timeout_s=WAIT_S, call_timeout_s=WAIT_S, idle_timeout_s=0, on_close=lambda _n, r: reasons.append(r)
    ) as the_pool:
        old = tiny_entry(PID_LOG=str(tmp_path / "old.log"))
        await the_pool.call_tool(old, "ping", {})
        old_pid = the_pool.status("tiny").pid

        await the_pool.apply(DiscoveryChange(changed={"tiny"}))

        assert reasons == ["config changed"]
        assert the_pool.status("tiny").started is False
        assert old_pid is not None and not alive(old_pid)
        new = tiny_entry(PID_LOG=str(tmp_path / "new.log"))
        await the_pool.call_tool(new, "ping", {})
        assert (tmp_path / "new.log").read_text().split() == [str(the_pool.status("tiny").pid)]


async def test_last_error_is_cleared_once_the_server_starts_again(
    pool: MCPSessionPool, tiny_entry: Callable[..., ServerEntry], tmp_path: Path
) -> None:
    flag = tmp_path / "may-start"
    real = tiny_entry()
    gate = tmp_path / "gate.py"
    gate.write_text(
        f"import os, runpy, sys\nif not os.path.exists({str(flag)!r}):\n    sys.exit('not yet')\n"
        f"runpy.run_path({real.args[0]!r}, run_name='__main__')\n"
    )
    entry = StdioEntry(name="gated", command=sys.executable, args=[str(gate)])
    with pytest.raises(MCPServerStartError):
        await pool.list_tools(entry)
    assert "not yet" in (pool.status("gated").last_error or "")

    flag.touch()
    assert await pool.list_tools(entry)
    assert pool.status("gated").last_error is None


async def test_a_leased_session_survives_a_config_change_and_closes_when_released(
    tiny_entry: Callable[..., ServerEntry], tmp_path: Path
) -> None:
    async with MCPSessionPool(start_timeout_s=WAIT_S, call_timeout_s=WAIT_S, idle_timeout_s=0) as the_pool:
        old = tiny_entry(PID_LOG=str(tmp_path / "old.log"))
        lease = the_pool.lease(old)
        assert text_of(await lease.call_tool("ping", {})) == "pong"
        old_pid = the_pool.status("tiny").pid
        assert old_pid is not None

        await the_pool.apply(DiscoveryChange(changed={"tiny"}))
        # The run that holds the lease keeps its session; a new run gets the new entry.
        assert text_of(await lease.call_tool("ping", {})) == "pong"
        assert alive(old_pid)
        new = tiny_entry(PID_LOG=str(tmp_path / "new.log"))
        assert text_of(await the_pool.call_tool(new, "ping", {})) == "pong"
        assert the_pool.status("tiny").pid not in (None, old_pid)

        lease.release()
        assert await ended(old_pid)


async def test_a_leased_session_is_never_reaped_as_idle(tiny_entry: Callable[..., ServerEntry]) -> None:
    async with MCPSessionPool(start_timeout_s=WAIT_S, call_timeout_s=WAIT_S, idle_timeout_s=0.05) as the_pool:
        entry = tiny_entry()
        lease = the_pool.lease(entry)
        await lease.list_tools()
        pid = the_pool.status(entry.name).pid
        assert pid is not None
        await asyncio.sleep(0.3)  # six idle periods: a run waiting on its model holds the lease meanwhile
        assert the_pool.status(entry.name).pid == pid and alive(pid)
        lease.release()
        assert await ended(pid)
