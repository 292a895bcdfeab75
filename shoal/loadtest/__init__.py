"""The test stage: `shoal loadtest` and `shoal bench sweep`.

cli/sweep_cli (flags) -> command/sweep (what a run is) -> runner (processes, ceiling)
-> engine (closed/open/single loops) -> http (keep-alive client) -> stats/histogram
(pooled percentiles) -> report/plots/cost (what users read).
"""
