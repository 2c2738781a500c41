"""``XLSTMLMCache``: the state of every block, as a generation cache.

The cache holds one tuple of state tensors per block (the ``state`` that
``XLSTMLM.forward`` takes and returns). A recurrent block needs no key/value history:
its state is constant in the number of generated tokens. An attention block's state
is its key/value cache (``xlstm_lm.layers.attention``: keys, values, which cached
positions are visible, the next rotary position), which grows by one position per
token. Every state tensor has the batch as dim 0, so beam-search reordering is
``index_select(0, beam_idx)`` on all.

It implements the part of transformers' ``Cache`` interface that ``generate`` uses
for a model that builds its own cache (``get_seq_length``, ``reorder_cache``,
``batch_repeat_interleave``, ``batch_select_indices``, ``reset``, the layer-kind
flags ``is_linear`` / ``is_sliding``) without subclassing ``Cache``, whose internals
(per-layer key/value objects) do not fit a recurrence, nor our attention blocks'
state with its visibility mask and positions.
"""

from __future__ import annotations

import torch

State = list[tuple[torch.Tensor, ...]]


class XLSTMLMCache:
    """Per-block state (recurrent, or key/value for attention) plus the number of
    positions consumed so far.

    ``seen_tokens`` counts every position fed through the model, left padding
    included, so it matches the length of the attention mask that ``generate``
    keeps (that is what ``get_seq_length`` must report for transformers to slice
    the inputs of a resumed generation correctly).
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, states: State | None = None, seen_tokens: int = 0):
        self.states: State | None = None if states is None else [tuple(s) for s in states]
        self.seen_tokens = int(seen_tokens)

    def __repr__(self) -> str:
        blocks = 0 if self.states is None else len(self.states)
        return f"XLSTMLMCache(blocks={blocks}, seen_tokens={self.seen_tokens}, bytes={self.memory_bytes()})"

    def __len__(self) -> int:
        return 0 if self.states is None else len(self.states)

    def update(self, states: State, num_new_tokens: int) -> None:
        """Replace the state by the one after ``num_new_tokens`` more positions."""
        self.states = [tuple(s) for s in states]
        self.seen_tokens += int(num_new_tokens)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions consumed so far, left padding included (recurrent states have no
        sequence dimension; an attention block's keys have exactly this many)."""
        return self.seen_tokens

    @property
    def is_linear(self) -> list[bool]:
        """One False per block: unlike transformers' linear-attention cache layers, this
        cache counts the positions it has seen, so ``generate`` may (and must) slice a
        resumed prompt by ``get_seq_length()``; ``all(is_linear)`` would stop that."""
        return [False] * max(1, len(self))

    @property
    def is_sliding(self) -> list[bool]:
        """No sliding-window layers: every state covers every position seen."""
        return [False] * max(1, len(self))

    def get_max_length(self, layer_idx: int | None = None) -> int:
        """-1: no maximum length (recurrent states do not grow; key/value caches grow
        without a limit)."""
        return -1

    @property
    def batch_size(self) -> int:
        if not self.states or not self.states[0]:
            return -1
        return int(self.states[0][0].shape[0])

    def _map(self, fn) -> None:
        if self.states is not None:
            self.states = [tuple(fn(t) for t in block) for block in self.states]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: keep, for each new beam, the state of the beam it extends."""
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices.to(t.device)])

    def reset(self) -> None:
        """Forget everything: the next forward starts from the empty state."""
        self.states, self.seen_tokens = None, 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "a recurrent state cannot be rolled back to an earlier position; re-run the model on the shorter "
            "prefix instead (speculative and assisted decoding are not supported for stateful models)"
        )

    def memory_bytes(self) -> int:
        """Bytes held by the state tensors: constant while generating with recurrent
        blocks only; attention blocks add their key/value bytes for every position."""
        if self.states is None:
            return 0
        return sum(t.numel() * t.element_size() for block in self.states for t in block)


__all__ = ["XLSTMLMCache"]
