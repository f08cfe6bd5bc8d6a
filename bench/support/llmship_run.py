"""Run one llmship load test as its own process (so the benchmark can pin it to one core).

python -m bench.support.llmship_run URL MODEL OUT.json '{"concurrency": 64, "num_requests": 10000}' [TOKENIZER]
"""

from __future__ import annotations

import json
import sys

from tasks.loadtest import LoadProfile, run_load_test


def main(argv: list[str]) -> None:
    url, model, out, profile = argv[:4]
    tokenizer = argv[4] if len(argv) > 4 and argv[4] else None
    rep = run_load_test(url, model, LoadProfile(**json.loads(profile)), tokenizer=tokenizer)
    rep.write_json(out, detailed=False)


if __name__ == "__main__":
    main(sys.argv[1:])
