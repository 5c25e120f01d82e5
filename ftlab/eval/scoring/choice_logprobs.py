"""Log-probabilities of option continuations given a context: the engine of log-likelihood scoring.

A request is one question: its context tokens and one token list per option. Per question the
context is computed once: contexts are prefilled together (left-padded, after the prefix every
context shares, i.e. system prompt and few-shot examples, computed once for the whole task), then
each option's tokens run as one row of a second forward on a copy of its question's KV cache
(one-token options, such as yes/no, need no second forward at all). Models whose cache cannot
be edited row by row (sliding-window or hybrid caches) get one left-padded forward per option
over context + option instead: the same numbers, more work. Both paths batch by a token budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from tqdm.auto import tqdm

from ftlab.eval.backends import sizing
from ftlab.eval.backends.kv_cache import PrefixCache, accepts_logits_to_keep, copy_rows, supports_cache_surgery

log = logging.getLogger(__name__)

# Bytes of logits one forward may hold (rows x positions x vocabulary x 4): with a 262k-word
# vocabulary (Gemma 3) a few hundred option tokens already take that much.
LOGITS_BUDGET_BYTES = 512 * 2**20
# Rows share a forward only when each is at least this share of the longest one (padding is
# computed like real tokens): ARC options run from 1 to 20+ tokens, contexts from 30 to 90.
MIN_FILL = 0.75


@dataclass
class ChoiceRequest:
    context: list[int]
    options: list[list[int]]  # continuation tokens, each non-empty


def _budget_rows(cost_fn, order: Sequence[int], start: int, budget: int, max_items: int | None,
                 width: Callable[[int], int]) -> int:
    """How many items from order[start:] (longest first) share one forward: at least one, then
    while `cost_fn` of the group stays within budget and each is at least MIN_FILL of the first's
    `width` (shorter ones would be mostly padding)."""
    n = 1
    while start + n < len(order) and (max_items is None or n < max_items):
        if width(order[start + n]) < MIN_FILL * width(order[start]) or cost_fn(order[start:start + n + 1]) > budget:
            break
        n += 1
    return n


class ChoiceScorer:
    """Scores `ChoiceRequest`s with a causal LM in inference mode; `questions_per_forward` records
    the largest group it ran (after any out-of-memory back-off)."""

    def __init__(self, model, pad_id: int, *, progress: bool = False):
        import torch  # lazy: torch takes 3.3 s to import

        self.model = model
        self.pad_id = pad_id
        self.progress = progress
        self.device = next(model.parameters()).device
        self.torch = torch
        self.cached = supports_cache_surgery(model)
        self.keep_kw = accepts_logits_to_keep(model)
        vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else 1
        self.max_logit_tokens = max(1, LOGITS_BUDGET_BYTES // (4 * vocab))
        self.questions_per_forward = 0

    def score(self, requests: Sequence[ChoiceRequest], max_questions: int | None = None, *, greedy: bool = False
              ) -> Iterator[list[tuple[int, list]]]:
        """Yields groups of (request position, log-probability of each option) as they finish; with
        `greedy`, each option's (log-probability, whether every option token is the argmax), as
        lm-evaluation-harness's loglikelihood requests return it."""

        if not requests:
            return
        torch = self.torch
        self.model.eval()
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].context))
        budget = sizing.PREFILL_TOKEN_BUDGET
        prefix = PrefixCache()
        if self.cached:
            with torch.inference_mode():
                prefix = self._guarded(lambda: PrefixCache.compute(
                    self.model, [r.context for r in requests], self._context_forward, self.device))
        bar = tqdm(total=len(requests), desc="log-likelihood", unit="sample", disable=not self.progress, leave=False)
        start = 0
        try:
            while start < len(order):
                cost = self._cost_cached(requests, len(prefix)) if self.cached else self._cost_full(requests)
                n = _budget_rows(cost, order, start, budget, max_questions,
                                 lambda i: len(requests[i].context) - len(prefix))
                group = order[start:start + n]
                try:
                    with torch.inference_mode():
                        if self.cached:
                            scores = self._score_cached([requests[i] for i in group], prefix)
                        else:
                            scores = self._score_full([requests[i] for i in group])
                except RuntimeError as exc:  # torch.OutOfMemoryError is one
                    if not sizing.is_out_of_memory(exc):
                        raise
                    if n == 1:
                        raise sizing.single_row_oom(exc, "scoring the options of one question",
                                                    "shorten the prompts (fewer eval.num_fewshot examples)") from None
                    budget = max(1, budget // 2)
                    max_questions = max(1, n // 2)
                    log.warning("out of memory scoring %d questions at once; retrying with at most %d", n, max_questions)
                    continue
                self.questions_per_forward = max(self.questions_per_forward, n)
                start += n
                bar.update(n)
                if not greedy:
                    scores = [[lp for lp, _ in options] for options in scores]
                yield list(zip(group, scores))
        finally:
            bar.close()

    def _guarded(self, fn):
        try:
            return fn()
        except RuntimeError as exc:
            if not sizing.is_out_of_memory(exc):
                raise
            raise sizing.single_row_oom(exc, "computing the prompt prefix", "shorten the prompts") from None

    # -- cached path: context once, options from its KV cache ------------------------------------

    def _cost_cached(self, requests, prefix_len: int):
        def cost(group):
            reqs = [requests[i] for i in group]
            ctx = len(group) * max(len(r.context) - prefix_len for r in reqs)
            return ctx + sum(len(o) - 1 for r in reqs for o in r.options)
        return cost

    def _context_forward(self, ids, mask, pos, cache):
        kw = {"logits_to_keep": 1} if self.keep_kw else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                         use_cache=True, **kw)
        return self.torch.log_softmax(out.logits[:, -1, :].float(), dim=-1), out.past_key_values

    def _score_cached(self, reqs: list[ChoiceRequest], prefix: PrefixCache) -> list[list[tuple[float, bool]]]:
        first, cache, mask, next_pos = prefix.prefill(self.model, [r.context for r in reqs], self.pad_id,
                                                      self.device, self._context_forward)
        # Each option's first token is predicted by its context's last position.
        top = first.argmax(-1).tolist()
        scores = [[(float(first[q, opt[0]]), top[q] == opt[0]) for opt in r.options] for q, r in enumerate(reqs)]
        # The other tokens: options longest first, in chunks of similar length (little padding)
        # whose logits fit the logits budget.
        rows = sorted(((q, o) for q, r in enumerate(reqs) for o, opt in enumerate(r.options) if len(opt) > 1),
                      key=lambda qo: -len(reqs[qo[0]].options[qo[1]]))
        lengths = [len(reqs[q].options[o]) - 1 for q, o in rows]
        start = 0
        while start < len(rows):
            width = lengths[start]
            cap = max(1, self.max_logit_tokens // width)
            n = 1
            # A row joins while it is at least MIN_FILL of the chunk's width (padding is wasted work).
            while n < cap and start + n < len(rows) and lengths[start + n] >= MIN_FILL * width:
                n += 1
            chunk = rows[start:start + n]
            for (q, o), (total, top) in zip(chunk, self._option_tokens(reqs, chunk, width, cache, mask, next_pos)):
                lp, greedy = scores[q][o]
                scores[q][o] = (lp + total, greedy and top)
            start += n
        return scores

    def _option_tokens(self, reqs, rows, width: int, cache, mask, next_pos) -> list[tuple[float, bool]]:
        """(summed log-probability, all argmax) of option tokens 2.. for `rows` ((question, option)
        pairs), each row on a copy of its question's context cache."""
        torch = self.torch
        idx = torch.tensor([q for q, _ in rows], device=self.device)
        rows_cache, ctx_mask = copy_rows(cache, mask, idx)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        opt_mask = torch.zeros((len(rows), width), dtype=torch.long)
        targets = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (q, o) in enumerate(rows):
            opt = reqs[q].options[o]
            # Right padding: padded positions come after every real one, so causal attention
            # keeps them out of the real positions' results.
            ids[r, :len(opt) - 1] = torch.tensor(opt[:-1])
            targets[r, :len(opt) - 1] = torch.tensor(opt[1:])
            opt_mask[r, :len(opt) - 1] = 1
        opt_mask = opt_mask.to(self.device)
        pos = next_pos[idx][:, None] + torch.arange(width, device=self.device)[None]
        out = self.model(input_ids=ids.to(self.device), attention_mask=torch.cat([ctx_mask, opt_mask], 1),
                         position_ids=pos, past_key_values=rows_cache, use_cache=True)
        targets = targets.to(self.device)
        totals = (_token_logprobs(out.logits, targets) * opt_mask).sum(-1).tolist()
        tops = ((out.logits.argmax(-1) == targets) | (opt_mask == 0)).all(-1).tolist()
        return list(zip(totals, tops))

    # -- whole-sequence path: one row per option over context + option ---------------------------

    def _cost_full(self, requests):
        def cost(group):
            reqs = [requests[i] for i in group]
            rows = [len(r.context) + len(o) - 1 for r in reqs for o in r.options]
            keep = max(len(o) for r in reqs for o in r.options)
            if len(rows) * keep > self.max_logit_tokens:
                return float("inf")
            return len(rows) * max(rows)
        return cost

    def _score_full(self, reqs: list[ChoiceRequest]) -> list[list[tuple[float, bool]]]:
        torch = self.torch
        seqs = [(q, o, r.context + opt[:-1]) for q, r in enumerate(reqs) for o, opt in enumerate(r.options)]
        width = max(len(s) for _, _, s in seqs)
        keep = max(len(opt) for r in reqs for opt in r.options)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        targets = torch.zeros((len(seqs), keep), dtype=torch.long)
        valid = torch.zeros((len(seqs), keep), dtype=torch.long)
        for r, (q, o, seq) in enumerate(seqs):
            opt = reqs[q].options[o]
            # Left padding: every row's option ends at the last position, so the last `keep`
            # positions hold every prediction of an option token.
            ids[r, width - len(seq):] = torch.tensor(seq)
            mask[r, width - len(seq):] = 1
            targets[r, keep - len(opt):] = torch.tensor(opt)
            valid[r, keep - len(opt):] = 1
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        kw = {"logits_to_keep": keep} if self.keep_kw else {}
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=pos.to(self.device), use_cache=False, **kw)
        targets, valid = targets.to(self.device), valid.to(self.device)
        picked = _token_logprobs(out.logits[:, -keep:], targets) * valid
        tops = ((out.logits[:, -keep:].argmax(-1) == targets) | (valid == 0)).all(-1).tolist()
        scores: list[list[tuple[float, bool]]] = [[(0.0, False)] * len(r.options) for r in reqs]
        for r, total in enumerate(picked.sum(-1).tolist()):
            q, o, _ = seqs[r]
            scores[q][o] = (total, tops[r])
        return scores


def _token_logprobs(logits, targets):
    """log softmax(logits)[target] per position, in fp32 without materialising the whole log-softmax."""
    logits = logits.float()
    return logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)
