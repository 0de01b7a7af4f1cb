"""citystream's benchmark suite: `citystream bench` (bench/run.py), measuring each stage of the
pipeline and its peers (Telegraf, Quix Streams, a parse-validate-encode floor) side by side on
a private stack. The method and the latest figures are in docs/performance.md. The older
single-purpose scripts (`*_bench.py`) stay runnable on their own."""
