"""kick-monitor: keeps Kick.com streamers' live status in PostgreSQL, in real time."""

__version__ = "1.0.0"
