"""The user's other MCP servers, as the bridge reaches them for the local model.

    entries.py     one server's entry (stdio / http / sse), validated
    discovery.py   finding and reading `.mcp.json`, `${VAR}` expansion, hot reload
    transports.py  opening a connection; every SDK workaround
    pool.py        one persistent session per server: start, reuse, restart, reap, retire, close
    session.py     one session's state and requests (SDK errors translated); the lease a run holds
    toolset.py     MCP tools -> the model's tools: names, cleaned schemas, argument checks
    policy.py      which tools the model may see (allow/deny globs, read-only mode)
    errors.py      the MCP-side error tree
"""
