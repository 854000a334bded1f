"""kick-monitor: keeps Kick.com streamers' live status in PostgreSQL, in real time."""

try:  # written by setup.py at build/install time: the number of commits (see setup.py)
    from ._build import BUILD
except ImportError:  # a source tree that was never built or installed
    BUILD = 0

__version__ = f"1.0.{BUILD}"
