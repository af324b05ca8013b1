"""How the bridge connects to one downstream server, and every workaround for what the SDK does not expose.

    open_transport(entry, stderr, on_process)   the async context manager `mcp.Client` takes
    connection_ended(client, error)             whether a CONNECTION_CLOSED error is the SDK's own
    StderrTail                                  a stdio child's stderr: read as it comes, last bytes kept
    stop_soon(process)                          at shutdown: the child's process group gone within 1.1 s

The SDK workarounds, all here and each guarded by tests/test_transports.py (which fails loudly
when an `mcp` upgrade breaks one):

1. The child's process. `stdio_client` does not expose the process it spawns, and the pool needs
   its pid and exit code (to notice a crash, to report `exit code 1`, to kill what it leaves
   behind). While the transport is open, the suspended generator frame of `stdio_client` holds it
   as the local `process`; `spawned_process` reads it from there.
2. The HTTP client for streamable-HTTP servers comes from `mcp.shared._httpx_utils`, a private
   module: it is what the SDK's own session group uses (timeouts, redirects), so servers see the
   same client whichever way they are reached.
3. A stdout line that is not valid UTF-8 must not wedge the session: the parameters ask the SDK to
   decode with `errors="replace"`, so the line fails JSON parsing and is reported like any other
   bad line instead of killing the reader.
4. Whether a JSON-RPC error -32000 ("connection closed") came from the server or from the SDK: both
   arrive as the same `MCPError`. The SDK raises its own when the connection has ended, and its
   dispatcher (`client.session._dispatcher`) marks itself `_closed` before it wakes the waiting
   requests with it (`jsonrpc_dispatcher.py`, `run()` and `_fan_out_closed`); a write onto a
   transport already torn down raises it `from None`. A server's error arrives on a live connection.
5. Children die with the bridge, even when it is killed (SIGKILL, a crash), on Linux: neither
   `StdioServerParameters` nor `anyio.open_process` takes a `preexec_fn`, so the command is wrapped
   in a tiny Python that sets `PR_SET_PDEATHSIG` (SIGKILL) on itself and then execs the real
   command (same pid, same process group). The command is looked up first with the child's own
   PATH, so a missing one is still reported as "command not found".
6. Stopping in time. On a normal disconnect Claude closes the bridge's stdin, sends SIGTERM about
   2 s later and SIGKILL 2 s after that; the SDK's own stop (0.5 s flush, 2 s for the child to exit
   on stdin EOF, 2 s after SIGTERM) is slower than that. At shutdown `stop_soon` signals the
   child's process group itself: SIGTERM after 0.6 s, SIGKILL 0.5 s later.
7. stderr: the SDK needs a real file descriptor for a child's stderr. A pipe read by the event loop
   (`StderrTail`) keeps only the last bytes in memory: a temporary file kept all of it (63 MB after
   three 20 MB bursts, unlinked and invisible to `du`).

Every stdio child gets `BRIDGE_MARKER` in its environment (the bridge's pid): a bridge that finds
it at start was launched, however indirectly (a wrapper script, a symlink, `python -c "import
main"`), by another bridge, and refuses to serve (`launched_by_bridge`), so no chain can recurse.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import IO, Any

import anyio
import anyio.abc
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import get_default_environment, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from tools.downstream.entries import ServerEntry, SseEntry, StdioEntry

logger = logging.getLogger(__name__)

BRIDGE_MARKER = "LMSTUDIO_BRIDGE_PARENT"
"""Set to the bridge's pid in the environment of every server it starts."""

# What the SDK's transports yield: (ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]).
TransportContext = contextlib.AbstractAsyncContextManager[tuple[Any, Any]]
OnProcess = Callable[[anyio.abc.Process | None], None]


def open_transport(
    entry: ServerEntry, stderr: StderrTail | None, on_process: OnProcess, *, timeout_s: float
) -> TransportContext:
    """The transport for `entry`; `on_process` is told the child process once a stdio server is spawned."""
    if isinstance(entry, StdioEntry):
        assert stderr is not None, "a stdio server needs somewhere to write its stderr"
        params = StdioServerParameters(
            command=entry.command,
            args=list(entry.args),
            env={**entry.env, BRIDGE_MARKER: str(os.getpid())},
            cwd=entry.cwd,
            encoding_error_handler="replace",
        )
        return _stdio_transport(params, stderr, on_process)
    if isinstance(entry, SseEntry):
        return sse_client(entry.url, headers=dict(entry.headers) or None, timeout=timeout_s)
    return _http_transport(entry.url, dict(entry.headers))


def launched_by_bridge(environ: Mapping[str, str]) -> str | None:
    """Why this process must not serve: another bridge started it (its marker is set), else None."""
    parent = environ.get(BRIDGE_MARKER)
    if parent is None:
        return None
    return (
        f"not starting: this process was started by another lmstudio-bridge (pid {parent}) as one of its MCP "
        f"servers ({BRIDGE_MARKER} is set). A bridge inside a bridge would start itself again without end; "
        "remove the entry that starts it from that bridge's .mcp.json"
    )


@asynccontextmanager
async def _stdio_transport(
    params: StdioServerParameters, stderr: StderrTail, on_process: OnProcess
) -> AsyncIterator[tuple[Any, Any]]:
    spawn = stdio_client(_dies_with_the_bridge(params), errlog=stderr.errlog)
    process: anyio.abc.Process | None = None
    try:
        async with spawn as streams:
            stderr.spawned()
            process = spawned_process(spawn)
            on_process(process)
            yield streams
    finally:
        if process is not None:
            _kill_leftovers(process.pid)


# --- 4. children die with the bridge ------------------------------------------------------------

# Runs in the child before the real command: ask to be killed when the bridge dies, check the bridge did
# not die already (then nobody would kill us), and become the real command (same pid and group).
_PDEATHSIG_EXEC = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL(None).prctl(1,signal.SIGKILL,0,0,0)\n"  # 1 = PR_SET_PDEATHSIG
    "os.getppid()==int(sys.argv[1]) or os._exit(1)\n"
    "os.execv(sys.argv[2],sys.argv[3:])"
)


def _dies_with_the_bridge(params: StdioServerParameters) -> StdioServerParameters:
    """`params` with the command wrapped so the child gets SIGKILL when the bridge dies (Linux only).

    Raises:
        FileNotFoundError: the command is not found with the child's PATH (from its cwd, for a path).
    """
    if sys.platform != "linux" or not sys.executable:
        return params
    env = get_default_environment() | (params.env or {})
    command = params.command
    if os.sep in command:
        found = os.path.join(params.cwd or os.getcwd(), os.path.expanduser(command))
        resolved = found if os.access(found, os.X_OK) and not os.path.isdir(found) else None
    else:
        resolved = shutil.which(command, path=env.get("PATH", os.defpath))
    if resolved is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", command)
    return params.model_copy(
        update={
            "command": sys.executable,
            "args": ["-I", "-S", "-c", _PDEATHSIG_EXEC, str(os.getpid()), resolved, command, *params.args],
        }
    )


# --- 1. the child's process -----------------------------------------------------------------------


def spawned_process(spawn: object) -> anyio.abc.Process | None:
    """The child that `stdio_client` spawned, read from its suspended generator frame (see above).

    Returns None if a future SDK renames it (pid and exit code are then unknown).
    """
    frame = getattr(getattr(spawn, "gen", None), "ag_frame", None)
    process = frame.f_locals.get("process") if frame is not None else None
    return process if isinstance(process, anyio.abc.Process) else None


def connection_ended(client: Client, error: MCPError) -> bool:
    """Whether `error` (JSON-RPC code -32000) was raised by the SDK because the connection ended (see above).

    A server may send -32000 itself (the spec leaves -32000..-32099 to implementations): then the
    connection is still open and this is False. When the SDK's internals cannot be read (a future
    `mcp`), True: the error is taken for the end of the connection, as before.
    """
    session = getattr(client, "_session", None)
    if session is None:
        return True  # the client has already left its session
    closed = getattr(getattr(session, "_dispatcher", None), "_closed", None)
    if not isinstance(closed, bool):
        return True
    return closed or error.__suppress_context__


def _kill_leftovers(pgid: int) -> None:
    """Kill what is left of the server's process group once the server itself has exited.

    The SDK kills the whole group only when the server does not exit by itself; a server that
    exits when its stdin closes can leave children (a wrapper's node, a helper) running. The
    server was started in a new session, so the group id is its pid, and Linux does not reuse
    an id while a group still has members: whatever is in the group is ours.
    """
    if sys.platform == "win32":
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    logger.info("Killed processes left behind by MCP server process group %d", pgid)


# --- 5. stopping in time ------------------------------------------------------------------------

STOP_TERM_AFTER_S = 0.6
STOP_KILL_AFTER_S = 0.5


async def stop_soon(process: anyio.abc.Process) -> None:
    """Make sure `process` and its group are gone within STOP_TERM_AFTER_S + STOP_KILL_AFTER_S.

    Runs beside the SDK's own stop (which closes the child's stdin first): a child that exits on
    stdin EOF is left to do so; one that does not gets SIGTERM, then SIGKILL, on its whole group.
    """
    for after_s, signum in ((STOP_TERM_AFTER_S, signal.SIGTERM), (STOP_KILL_AFTER_S, signal.SIGKILL)):
        with anyio.move_on_after(after_s):
            await process.wait()
        if process.returncode is not None:
            return
        logger.info("MCP server process %d still running at shutdown: sending %s to its group", process.pid,
                    signal.Signals(signum).name)
        _signal_group(process.pid, signum)


def _signal_group(pgid: int, signum: int) -> None:
    if sys.platform == "win32":
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


# --- 6. stderr -----------------------------------------------------------------------------------

STDERR_KEEP_BYTES = 8192
STDERR_TAIL_LINES = 20


class StderrTail:
    """A stdio child's stderr: a pipe, read as it comes, of which only the last `keep_bytes` are kept.

    `errlog` is the write end for the SDK to hand the child; `spawned()` closes the bridge's copy of
    it once the child has its own, so the pipe ends when the child (and what it started) is gone.
    Read by the event loop (no thread); where the loop cannot watch a pipe (Windows' proactor loop),
    by a daemon thread.
    """

    def __init__(self, keep_bytes: int = STDERR_KEEP_BYTES) -> None:
        read_fd, write_fd = os.pipe()
        self.errlog: IO[str] = os.fdopen(write_fd, "w", encoding="utf-8", errors="replace")
        self._fd: int | None = read_fd
        self._keep = keep_bytes
        self._kept = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        try:
            os.set_blocking(read_fd, False)
            self._loop.add_reader(read_fd, self._drain)
        except (NotImplementedError, OSError):
            os.set_blocking(read_fd, True)
            self._loop = None
            threading.Thread(target=self._drain_blocking, name="mcp-stderr", daemon=True).start()

    @property
    def kept_bytes(self) -> int:
        """How many bytes are held now (never more than `keep_bytes`)."""
        return len(self._kept)

    def spawned(self) -> None:
        """The child holds its own copy of the write end now: drop the bridge's."""
        self.errlog.close()

    def tail(self) -> str:
        """The last lines the child wrote (what is still in the pipe included)."""
        if self._loop is not None:
            self._drain()
        lines = bytes(self._kept).decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-STDERR_TAIL_LINES:])

    def close(self) -> None:
        self.errlog.close()
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    def _keep_last(self, chunk: bytes) -> None:
        self._kept += chunk
        if len(self._kept) > self._keep:
            del self._kept[: len(self._kept) - self._keep]

    def _drain(self) -> None:
        while self._fd is not None:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:  # every writer is gone
                self.close()
                return
            self._keep_last(chunk)

    def _drain_blocking(self) -> None:
        fd = self._fd
        assert fd is not None
        with contextlib.suppress(OSError):
            while chunk := os.read(fd, 65536):
                self._keep_last(chunk)
        os.close(fd)


@asynccontextmanager
async def _http_transport(url: str, headers: dict[str, str]) -> AsyncIterator[tuple[Any, Any]]:
    async with create_mcp_http_client(headers=headers or None) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            yield streams
