"""`kick-monitor bench`: the real pipeline measured end to end, with a report and a plot.

Everything runs as real processes on loopback — the simulator (`kick_sim.cli`),
`kick-monitor run` (coordinator, workers, writer), an embedded PostgreSQL of the
benchmark's own — and is measured from outside through `/proc`, the simulator's ground
truth and the database. One module per job:

- `harness`   start and stop processes (by PID and own process group, nothing left behind)
- `measure`   /proc sampling, the latency join on ground truth, loss checks, statistics
- `scenarios` S1 seed, S2 busy, S3 scale, S4 recovery, W writer, and the comparisons
- `compare`   the alternatives: a naive one-commit-per-change writer, Pysher, a REST poller
- `agents`    entry points of the helper processes (writer alone, feeders, clients, poller)
- `report`    JSON, Markdown and PNG under bench/results/
- `cli`       the `kick-monitor bench` command
"""
