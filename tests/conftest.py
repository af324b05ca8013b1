pytest_plugins = ["tests.support.mcp_servers"]
