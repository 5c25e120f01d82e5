"""Stopping rules for greedy answers: a row is done at EOS, when its `\\boxed{...}` closes, or when
its text holds one of the request's stop strings (lm-evaluation-harness's `until`)."""

from __future__ import annotations

import time
from typing import Sequence

from transformers import StoppingCriteria

from ftlab.eval.scoring.extraction import has_closed_box


def closing_token_ids(tokenizer) -> list[int]:
    """Ids of vocabulary tokens containing `}`: only after one of these can a box close."""
    cached = getattr(tokenizer, "_ftlab_close_ids", None)
    if cached is not None:
        return cached
    vocab = tokenizer.get_vocab()
    ids = sorted(i for tok, i in vocab.items() if "}" in tok)
    try:
        tokenizer._ftlab_close_ids = ids
    except AttributeError:  # some tokenizers forbid new attributes; recomputing is only slower
        pass
    return ids


def holds_stop(text: str, stop: Sequence[str]) -> bool:
    return any(s and s in text for s in stop)


def finish_reason(tokens: list[int], tokenizer, eos: set[int], close_ids: set[int], stop_at_box: bool,
                  max_new_tokens: int, stop: Sequence[str] = ()) -> str | None:
    """Why a row whose generated tokens are `tokens` is finished (eos, box, stop, length), or None."""
    last = tokens[-1]
    if last in eos:
        return "eos"
    if stop_at_box and last in close_ids and has_closed_box(tokenizer.decode(tokens, skip_special_tokens=True)):
        return "box"
    if stop and holds_stop(tokenizer.decode(tokens, skip_special_tokens=True), stop):
        return "stop"
    if len(tokens) >= max_new_tokens:
        return "length"
    return None


class BoxClosedCriteria(StoppingCriteria):
    """Per-row stopping for `model.generate`: a row is done when its generated text holds a closed
    box or it emitted EOS. Records each row's finishing step and time, which give new-token counts
    and latencies.

    Implements transformers' StoppingCriteria protocol (returns one bool per row); `generate`
    then pads finished rows and stops when all are done.
    """

    def __init__(self, tokenizer, prompt_len: int, batch: int, eos_ids: Sequence[int], stop_at_box: bool = True,
                 start_time: float | None = None, stop: Sequence[str] = ()):
        import torch  # lazy: torch takes 3.3 s to import

        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stop_at_box = stop_at_box
        self.stop = tuple(stop)
        self.start = start_time if start_time is not None else time.perf_counter()
        self.done = torch.zeros(batch, dtype=torch.bool)
        self.finish_step = [0] * batch
        self.finish_time = [0.0] * batch
        self.reason = ["length"] * batch
        self.eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)
        self.close_ids = torch.tensor(closing_token_ids(tokenizer), dtype=torch.long)

    def __call__(self, input_ids, scores=None, **kwargs):
        import torch  # lazy: torch takes 3.3 s to import

        now = time.perf_counter() - self.start
        step = input_ids.shape[1] - self.prompt_len
        last = input_ids[:, -1].cpu()
        newly = torch.zeros_like(self.done)
        if self.eos.numel():
            newly |= torch.isin(last, self.eos) & ~self.done
        for row in torch.nonzero(newly).flatten().tolist():
            self._finish(row, step, now, "eos")
        if self.stop_at_box and self.close_ids.numel():
            candidates = torch.isin(last, self.close_ids) & ~self.done
            for row in torch.nonzero(candidates).flatten().tolist():
                text = self.tokenizer.decode(input_ids[row, self.prompt_len:], skip_special_tokens=True)
                if has_closed_box(text):
                    self._finish(row, step, now, "box")
        if self.stop:
            for row in torch.nonzero(~self.done).flatten().tolist():
                if holds_stop(self.tokenizer.decode(input_ids[row, self.prompt_len:], skip_special_tokens=True), self.stop):
                    self._finish(row, step, now, "stop")
        return self.done.to(input_ids.device).clone()

    def _finish(self, row: int, step: int, now: float, reason: str) -> None:
        self.done[row] = True
        self.finish_step[row] = step
        self.finish_time[row] = now
        self.reason[row] = reason
