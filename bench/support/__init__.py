"""Support code for the benchmarks under bench/: fake servers, peer runners, a tiny model."""
