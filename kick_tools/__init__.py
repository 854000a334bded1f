"""Tooling beside the product: benchmarks (`bench`), the demo (`demo`), the parser micro-benchmark
(`bench_parse`) and the process harness they share with the tests (`harness`).

Tools may import the product (`kick_monitor`, `workers`) and the simulator (`kick_sim`); the
product never imports them (tests/unit/test_import_graph.py). `kick-monitor demo|bench` reach
them through the `kick_monitor.commands` entry points declared in setup.cfg.
"""
