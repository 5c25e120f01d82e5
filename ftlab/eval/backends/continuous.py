"""Continuous batching for the `hf` backend: greedy decoding with a rolling batch.

Rows live in one left-padded KV cache. A row leaves as soon as it finishes (box closed, EOS, a stop
string or max_new_tokens) and waiting prompts are prefilled as a group and written into the slots
finished rows left, so the batch stays full instead of idling until its longest answer ends. Each
row keeps its own position ids and attention mask, so its tokens are the ones it would get alone
(up to float summation order, which the throughput benchmark measures).

Slots are reused in place because copying the cache is not cheap: removing one row of a 16-row,
1,400-token SmolLM2-135M cache by selecting the rows that stay, then giving them room to grow
again, copied 2 GB in 0.59 s on 2 cores (one decode step takes 0.16 s); writing a new row into a
slot takes 4 ms. Rows are only compacted (copied) when no prompt is waiting to take their slots.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from ftlab.eval.backends import sizing
from ftlab.eval.backends.api import Generation, Generator
from ftlab.eval.backends.kv_cache import (PrefixCache, accepts_logits_to_keep, drop_unused_columns, growing, select_rows,
                                          splice_rows, write_rows)
from ftlab.eval.backends.stopping import closing_token_ids, finish_reason

log = logging.getLogger(__name__)

# Once no prompt waits, free slots are dropped (a copy of the cache) when they are this share of
# the rows (1/4): decoding a free slot costs what decoding a row does, and copying at every finished
# row would copy an 80-row cache 80 times.
TAIL_COMPACT_SHARE = 4


class ContinuousBatcher:
    def __init__(self, gen: Generator, max_new_tokens: int, batch_size: int | None, stop_at_box: bool,
                 stop: Sequence[str] = ()):
        import torch  # lazy: torch takes 3.3 s to import

        self.gen = gen
        self.model = gen.model
        self.tok = gen.tokenizer
        self.max_new = max_new_tokens
        self.batch_size = batch_size
        self.stop_at_box = stop_at_box
        self.stop = tuple(stop)
        self.eos = set(gen.eos_ids())
        self.close_ids = set(closing_token_ids(self.tok))
        self.pad_id = self.tok.pad_token_id
        self.device = next(self.model.parameters()).device
        self.logits_kw = {"logits_to_keep": 1} if accepts_logits_to_keep(self.model) else {}
        self.torch = torch
        self.prefix = PrefixCache()

    def _forward(self, ids, mask, pos, cache):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                         use_cache=True, **self.logits_kw)
        return out.logits[:, -1, :].float().argmax(-1), out.past_key_values

    def run(self, prompts: Sequence[str]) -> Iterator[list[tuple[int, Generation]]]:
        torch = self.torch
        self.encoded = self.gen.encode(prompts)
        self._set_batch_size(self.gen.resolve_batch_size(self.encoded, self.max_new, self.batch_size))
        self.queue = collections.deque(sorted(range(len(prompts)), key=lambda i: -len(self.encoded[i])))
        self.rows: list[dict | None] = []  # per cache row: prompt index, tokens, admission time; None: a free slot
        self.cache = self.mask = self.pos = self.last = None
        bar = tqdm(total=len(prompts), desc="generate", unit="sample", disable=not self.gen.progress, leave=False)
        self.model.eval()
        try:
            try:
                with torch.inference_mode():
                    self.prefix = PrefixCache.compute(self.model, self.encoded, self._forward, self.device)
            except RuntimeError as exc:  # torch.OutOfMemoryError is one
                if not sizing.is_out_of_memory(exc):
                    raise
                raise sizing.single_row_oom(exc) from None
            while self.queue or self._active():
                # Inference mode per step, not around the loop: the consumer runs between yields.
                try:
                    with torch.inference_mode():
                        done = self._step()
                except RuntimeError as exc:  # torch.OutOfMemoryError is one
                    if not sizing.is_out_of_memory(exc):
                        raise
                    self._back_off(exc)
                    continue
                if done:
                    bar.update(len(done))
                    yield done
        finally:
            bar.close()

    def _set_batch_size(self, rows: int) -> None:
        self.batch_size = rows
        self.gen.batch_size_used = rows
        # Refill in groups: one prefill for several prompts costs about as much as for one.
        self.refill_at = max(1, rows // 8)

    def _back_off(self, exc: BaseException) -> None:
        """Out of memory: the active rows go back to the front of the queue and restart with half
        as many rows. Greedy rows are independent, so their answers do not change."""
        if self.batch_size <= 1:
            raise sizing.single_row_oom(exc) from None
        for row in reversed(self.rows):
            if row is not None:
                self.queue.appendleft(row["i"])
        self.rows = []
        self.cache = self.mask = self.pos = self.last = None
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
        log.warning("out of memory with %d rows; retrying their prompts with %d", self.batch_size, self.batch_size // 2)
        self._set_batch_size(self.batch_size // 2)

    def _active(self) -> int:
        return sum(row is not None for row in self.rows)

    def _admit(self) -> list[int]:
        """Prefills the next waiting prompts (at most the free slots and the prefill token budget)
        and puts them into free slots (or after the last row); returns their rows."""
        torch = self.torch
        free = self.batch_size - self._active()
        # The queue is longest first, so its head is the widest prompt of this prefill.
        width = max(1, len(self.encoded[self.queue[0]]) - len(self.prefix))
        n_take = max(1, min(free, len(self.queue), sizing.PREFILL_TOKEN_BUDGET // width))
        take = [self.queue.popleft() for _ in range(n_take)]
        t_admit = time.perf_counter()
        try:
            n_next, n_cache, n_mask, n_pos = self.prefix.prefill(
                self.model, [self.encoded[i] for i in take], self.pad_id, self.device, self._forward)
            slots = [s for s, row in enumerate(self.rows) if row is None][:n_take]
            if len(slots) == n_take and n_mask.shape[1] <= self.mask.shape[1]:
                self.mask = write_rows(self.cache, self.mask, slots, n_cache, n_mask)
                self.pos[slots], self.last[slots] = n_pos, n_next
            else:  # no room in place (at the start, or a new prompt wider than the cache: the queue is longest first)
                self._compact()
                slots = list(range(len(self.rows), len(self.rows) + n_take))
                if self.rows:
                    self.cache, self.mask = splice_rows(self.cache, self.mask, n_cache, n_mask)
                    self.pos, self.last = torch.cat([self.pos, n_pos]), torch.cat([self.last, n_next])
                else:
                    self.cache, self.mask, self.pos, self.last = n_cache, n_mask, n_pos, n_next
                self.rows += [None] * n_take
            growing(self.cache)  # each decoded token is then written in place, not concatenated
        except BaseException:
            self.queue.extendleft(reversed(take))  # not admitted: they wait again (e.g. out of memory)
            raise
        for s, i, t in zip(slots, take, n_next.tolist()):
            self.rows[s] = {"i": i, "tokens": [int(t)], "t0": t_admit}
        return slots

    def _compact(self) -> None:
        """Removes the free slots from the cache (a copy of the rows that stay)."""
        keep = [s for s, row in enumerate(self.rows) if row is not None]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask, self.pos, self.last = [], None, None, None, None
            return
        idx = self.torch.tensor(keep, device=self.device)
        self.cache, self.mask = select_rows(self.cache, self.mask, idx)
        self.pos, self.last = self.pos[idx], self.last[idx]
        self.rows = [self.rows[s] for s in keep]

    def _decode(self) -> None:
        """One greedy token for every row (a free slot's token is thrown away)."""
        torch = self.torch
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        self.last, self.cache = self._forward(self.last[:, None], self.mask, self.pos[:, None], self.cache)
        self.pos = self.pos + 1
        for row, t in zip(self.rows, self.last.tolist()):
            if row is not None:
                row["tokens"].append(int(t))

    def _step(self) -> list[tuple[int, Generation]]:
        """Admits waiting prompts when enough slots are free, else decodes one token for every
        row; returns the rows that finished."""
        free = self.batch_size - self._active()
        if self.queue and (not self._active() or free >= min(self.refill_at, len(self.queue))):
            changed = self._admit()
        else:
            self._decode()
            changed = [s for s, row in enumerate(self.rows) if row is not None]
        done, finished = [], []
        now = time.perf_counter()
        for s in changed:  # rows that did not move this iteration were checked before
            row = self.rows[s]
            reason = finish_reason(row["tokens"], self.tok, self.eos, self.close_ids, self.stop_at_box, self.max_new,
                                   self.stop)
            if reason is None:
                continue
            text = self.tok.decode(row["tokens"], skip_special_tokens=True)
            done.append((row["i"], Generation(text, len(row["tokens"]), now - row["t0"], reason)))
            self.rows[s] = None
            finished.append(s)
        if finished:
            # A free slot attends to nothing before its next (thrown-away) token, so the columns
            # only it used can go; its decode step attends to that token alone (no empty row).
            self.mask[finished] = 0
            self.mask = drop_unused_columns(self.cache, self.mask)
        if not self.queue and len(self.rows) - self._active() >= max(1, len(self.rows) // TAIL_COMPACT_SHARE):
            self._compact()  # no prompt will take the free slots: stop decoding them
        return done
