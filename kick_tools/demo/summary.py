"""The demo's verdict: what the simulator sent, what the service committed, and whether they agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .view import ms


@dataclass(frozen=True)
class Outcome:
    """Numbers gathered after the service stopped, while the database and simulator still ran."""

    sent: int
    committed: int
    learned: int
    counts: dict[str, int]
    wrong: list[str] = field(default_factory=list)
    p50: float | None = None
    p99: float | None = None
    joined: int = 0
    service_code: int | None = 0

    @property
    def problem(self) -> str | None:
        """Why the demo should fail (exit 1), or None when everything agreed."""
        if self.wrong:
            return f"{len(self.wrong)} streamers differ between the database and the simulator, e.g. {self.wrong[0]}"
        if self.service_code != 0:
            return f"the service exited with code {self.service_code}; see its log"
        return None

    def lines(self, directory: Path, all_stopped: bool = True) -> list[str]:
        """The final summary, one fact per line, `name  value` aligned for humans and greps alike."""
        counts = self.counts
        rows = [
            ("streamers", f"online {counts['online']}, offline {counts['offline']}, unknown {counts['unknown']}"),
            ("transitions sent", f"{self.sent}  (by the simulator)"),
            ("transitions committed", f"{self.committed}  (plus {self.learned} initial statuses from the API)"),
            ("mismatches", f"{len(self.wrong)}  (database vs simulator, per streamer)"),
            ("latency", f"p50 {ms(self.p50)}, p99 {ms(self.p99)}  (send→commit, {self.joined} transitions)"),
            ("service exit code", str(self.service_code)),
            ("logs", f"{directory / 'service.log'}, {directory / 'sim.log'}"),
        ]
        width = max(len(name) for name, _ in rows)
        stopped = "service, simulator and PostgreSQL stopped" if all_stopped else "NOT everything could be stopped"
        return ["", f"demo summary ({stopped})"] + [
            f"  {name:<{width}}  {value}" for name, value in rows
        ]
