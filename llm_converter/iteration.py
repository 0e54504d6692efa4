"""One serving iteration's batch: the prefill chunks and decode requests a scheduler put together."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """`tokens` new prompt tokens of one request, after `context` tokens already in its KV cache."""

    tokens: int
    context: int = 0

    @property
    def kv_after(self) -> int:
        return self.context + self.tokens


@dataclass(frozen=True, slots=True)
class Iteration:
    """A batch: prefill chunks plus decode requests (one new token each, `decode[i]` tokens of KV already)."""

    prefill: tuple[PrefillChunk, ...] = ()
    decode: tuple[int, ...] = ()

    @property
    def prefill_tokens(self) -> int:
        return sum(chunk.tokens for chunk in self.prefill)

    @property
    def tokens(self) -> int:
        """Tokens processed by the dense layers this iteration."""
        return self.prefill_tokens + len(self.decode)

    @property
    def sequences(self) -> int:
        """Requests in the batch: each yields one row of logits (lm_head, sampler)."""
        return len(self.prefill) + len(self.decode)

    def describe(self) -> str:
        parts = []
        if self.prefill:
            parts.append("prefill " + "+".join(f"{c.tokens}@{c.context}" for c in self.prefill))
        if self.decode:
            parts.append(f"decode {len(self.decode)}x(kv {min(self.decode)}..{max(self.decode)})")
        return ", ".join(parts) or "empty"
