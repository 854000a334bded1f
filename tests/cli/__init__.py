"""The `kick-monitor` command, run as a real subprocess against a real PostgreSQL."""
