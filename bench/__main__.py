"""`python -m bench`: the benchmark suite (bench/cli.py), from the repository's root."""

from bench.cli import bench

if __name__ == "__main__":
    bench(prog_name="python -m bench")
