"""What the bridge exposes over MCP, and the autonomous agent behind it."""
