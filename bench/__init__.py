"""citystream's benchmarks, run from a checkout's root (not installed with citystream):

- `python -m bench` (bench/cli.py, bench/run.py, bench/suite.py): every stage of the pipeline
  and its peers (Telegraf, Quix Streams, a parse-validate-encode floor) side by side on a
  private stack;
- `python -m bench.<name>_bench`: one component alone (decode, engine, sim, sink, opendata,
  memory), each `--help` says how.

All build on one harness: bench/procs.py (the private stack, the measured processes through
tests/support.py's `Process`), bench/load.py (input), bench/kafka.py, bench/influx.py,
bench/system.py (what the machine says) and bench/stats.py. Method and figures:
docs/performance.md."""
