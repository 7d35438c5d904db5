"""Benchmarks of lbclient against plain httpx, run with ``python -m bench`` (``--quick`` for a short run).

Everything they need is started here and stopped at the end: an nginx on ``127.0.0.1`` (a free port,
generated config in a temp dir) for the overhead measurements, and ``httpx.MockTransport`` for the
balancer's own cost as pools grow, which never opens a connection. Only loopback is ever contacted.

The machine is expected to be small and noisy, so every comparison runs its contenders in the same
process, interleaved in many short rounds whose order alternates, and reports medians and ratios.

Modules: ``_nginx`` (the server), ``_rounds`` (interleaved rounds and their statistics), ``_timers``
(the timed request loops, sync and async), ``_overhead`` (LBClient against httpx on nginx), ``_compare``
(a comparison's rounds as a report section), ``_scaling`` (balancer cost from 10 to 10,000 hosts, raw
pick cost), ``_report`` (tables, summary and JSON), ``_settings`` (quick and full presets).
"""
