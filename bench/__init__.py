"""The benchmark harness behind `make bench` (bench/run.sh); see bench/runner.py."""
