"""How faithful a quantized model is to its source, measured where the task is decided: the answer.

On held-out task texts rendered as in training (prompt + answer + end of turn), for every answer
token the source's next-token distribution P and the quantized model's Q give:

* KL(P || Q) = sum_v P(v) (log P(v) - log Q(v)), in nats: mean (with llama.cpp's standard error),
  median, 99th percentile and maximum;
* top-1 agreement: the share of answer tokens where both models' most likely token is the same;
* answer-token NLL / perplexity of the reference answer under each model, and the change in
  probability of that token (mean and RMS);
* whole-text perplexity (system text, instruction, question and answer) as a secondary figure:
  it can *improve* while answers collapse, because the prompt tokens dominate it.

The definitions are those of llama.cpp's `llama-perplexity --kl-divergence` ("Mean KLD", "99.0%
KLD", "Same top p", "RMS Δp", linear-interpolated percentiles); ours are exact, llama.cpp stores
the base log-probabilities as 16-bit codes. `reference_pass` runs the source once and keeps its
answer-token log-probabilities, so the two models never need to be in memory together.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from ftlab.errors import FtlabError
from ftlab.quant.calibration import TextSet

log = logging.getLogger(__name__)

FIDELITY_VERSION = 1


@dataclass
class Encoded:
    """Token ids of each text and where its answer starts (the same for both models)."""

    ids: list[list[int]]
    answer_start: list[int]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode(tokenizer, texts: TextSet, max_length: int) -> Encoded:
    """Tokenizes prompt + answer as evaluation does (the rendered template already holds the special
    tokens). Texts longer than `max_length` lose their oldest tokens, never the answer."""
    if max_length < 2:
        raise FtlabError(f"max_length={max_length} is too small to score an answer")
    ids, starts = [], []
    for prompt, answer in zip(texts.prompts, texts.answers):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
        # A merge across the boundary moves the start back to the first differing token.
        start = max(1, _common_prefix(p, full))
        if start >= len(full):
            raise FtlabError(f"held-out text {len(ids)} of {texts.name} has no answer tokens after its prompt")
        cut = max(0, len(full) - max_length)
        if start - cut < 1:
            raise FtlabError(f"held-out answers of {texts.name} are longer than max_length={max_length}; raise it")
        ids.append(full[cut:])
        starts.append(start - cut)
    if not ids:
        raise FtlabError(f"no held-out texts in {texts.name}")
    return Encoded(ids, starts)


def _batches(enc: Encoded, batch_size: int):
    for i in range(0, len(enc.ids), batch_size):
        yield range(i, min(i + batch_size, len(enc.ids)))


def _forward(model, enc: Encoded, rows: range, pad_id: int):
    """Logits of a right-padded batch, [rows, T, V] in the model's dtype."""
    import torch  # lazy: torch takes 3.3 s to import

    device = next(model.parameters()).device
    width = max(len(enc.ids[r]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, :len(enc.ids[r])] = torch.tensor(enc.ids[r])
        mask[j, :len(enc.ids[r])] = 1
    with torch.inference_mode():
        return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits


@dataclass
class Pass:
    """One model's figures on the encoded texts."""

    answer_logprobs: list  # per text [n_answer, V] fp32 log-probabilities at the answer positions
    answer_targets: list  # per text [n_answer] the reference answer's token ids
    text_nll: float  # summed NLL of every predicted token of the whole texts
    text_tokens: int


def run_pass(model, enc: Encoded, *, pad_id: int, batch_size: int = 4) -> Pass:
    import torch  # lazy: torch takes 3.3 s to import

    model.eval()
    logprobs, targets, text_nll, text_tokens = [], [], 0.0, 0
    for rows in _batches(enc, batch_size):
        logits = _forward(model, enc, rows, pad_id)
        for j, r in enumerate(rows):
            ids = torch.tensor(enc.ids[r])
            # Row by row in fp32, so memory stays one text's [T, V]. Position t predicts token t + 1.
            lp = torch.log_softmax(logits[j, :len(ids) - 1].float().cpu(), dim=-1)
            nll = -lp.gather(1, ids[1:, None]).squeeze(1)
            text_nll += float(nll.double().sum())
            text_tokens += len(ids) - 1
            s = enc.answer_start[r]
            logprobs.append(lp[s - 1:].clone())
            targets.append(ids[s:])
        del logits
    return Pass(logprobs, targets, text_nll, text_tokens)


def percentile(values, fraction: float) -> float:
    """llama.cpp's percentile: linear interpolation at fraction * (n - 1) of the sorted values."""
    import numpy as np  # lazy: numpy takes 0.18 s

    v = np.sort(np.asarray(values, dtype=float))
    if v.size == 0:
        return math.nan
    p = min(max(fraction, 0.0), 1.0) * (v.size - 1)
    i = int(p)
    return float((1 - (p - i)) * v[i] + (p - i) * v[min(i + 1, v.size - 1)])


def _mean_se(x) -> tuple[float, float]:
    """Mean and its standard error as llama.cpp reports them (0 below 11 values)."""
    import numpy as np  # lazy: numpy takes 0.18 s

    x = np.asarray(x, dtype=float)
    n = x.size
    mean = float(x.mean())
    var = float((x * x).mean() - mean * mean)
    return mean, math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0


def token_stats(ref_logprobs, cand_logprobs, targets) -> dict:
    """Per-token KL(ref || cand), top-1 agreement and answer NLLs from [N, V] log-probabilities."""
    import numpy as np  # lazy: numpy takes 0.18 s

    ref = ref_logprobs.double()
    cand = cand_logprobs.double()
    if ref.shape != cand.shape or ref.ndim != 2 or targets.shape != ref.shape[:1]:
        raise FtlabError(f"log-probability shapes differ: {tuple(ref.shape)} vs {tuple(cand.shape)}")
    kl = (ref.exp() * (ref - cand)).sum(-1).numpy()
    same_top = (ref.argmax(-1) == cand.argmax(-1)).numpy()
    nll_ref = (-ref.gather(1, targets[:, None]).squeeze(1)).numpy()
    nll_cand = (-cand.gather(1, targets[:, None]).squeeze(1)).numpy()
    n = kl.size
    kl_mean, kl_se = _mean_se(kl)
    top1 = float(same_top.mean())
    dp = np.exp(-nll_cand) - np.exp(-nll_ref)
    return {
        "tokens": int(n),
        "kl_mean": kl_mean, "kl_mean_se": kl_se, "kl_median": percentile(kl, 0.5), "kl_p99": percentile(kl, 0.99),
        "kl_max": float(kl.max()),
        "top1_agreement": top1, "top1_agreement_se": math.sqrt(top1 * (1 - top1) / (n - 1)) if n > 1 else 0.0,
        "answer_nll_before": float(nll_ref.mean()), "answer_nll_after": float(nll_cand.mean()),
        "answer_perplexity_before": float(math.exp(nll_ref.mean())),
        "answer_perplexity_after": float(math.exp(nll_cand.mean())),
        "delta_p_mean": float(dp.mean()), "delta_p_rms": float(math.sqrt((dp * dp).mean())),
    }


def compare_passes(reference: Pass, candidate: Pass) -> dict:
    """The fidelity document of `candidate` against `reference` (same encoded texts)."""
    import torch  # lazy: torch takes 3.3 s to import

    if len(reference.answer_logprobs) != len(candidate.answer_logprobs):
        raise FtlabError("the two passes scored different texts")
    stats = token_stats(torch.cat(reference.answer_logprobs), torch.cat(candidate.answer_logprobs),
                        torch.cat(reference.answer_targets))
    stats["whole_text_perplexity_before"] = math.exp(reference.text_nll / reference.text_tokens)
    stats["whole_text_perplexity_after"] = math.exp(candidate.text_nll / candidate.text_tokens)
    stats["whole_text_tokens"] = reference.text_tokens
    return stats


def measure(reference_model, candidate_model, tokenizer, texts: TextSet, *, max_length: int = 512,
            batch_size: int = 4) -> dict:
    """Fidelity of `candidate_model` to `reference_model` on `texts`, both already loaded."""
    session = Session(tokenizer, texts, max_length=max_length, batch_size=batch_size)
    session.run_reference(reference_model)
    return session.compare(candidate_model)


def _pad_id(tokenizer) -> int:
    for v in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if v is not None:
            return int(v)
    return 0


def describe(texts: TextSet, max_length: int) -> dict:
    return {"version": FIDELITY_VERSION, "dataset": texts.name, "split": texts.split, "samples": len(texts.prompts),
            "hash": texts.hash, "max_length": max_length}


class Session:
    """Measures one source against any number of candidates: the source runs once."""

    def __init__(self, tokenizer, texts: TextSet, *, max_length: int = 512, batch_size: int = 4):
        self.texts, self.max_length, self.batch_size = texts, max_length, batch_size
        self.enc = encode(tokenizer, texts, max_length)
        self.pad = _pad_id(tokenizer)
        self.reference: Pass | None = None

    def run_reference(self, model) -> None:
        self.reference = run_pass(model, self.enc, pad_id=self.pad, batch_size=self.batch_size)

    def compare(self, model) -> dict:
        if self.reference is None:
            raise FtlabError("run the source model first (Session.run_reference)")
        cand = run_pass(model, self.enc, pad_id=self.pad, batch_size=self.batch_size)
        return describe(self.texts, self.max_length) | compare_passes(self.reference, cand)


def summary_line(f: dict) -> str:
    """One line for the console and model cards."""
    return (f"answer-token KL {f['kl_mean']:.4f} nats (99th pct {f['kl_p99']:.3f}), top-1 agreement "
            f"{100 * f['top1_agreement']:.1f}%, answer perplexity {f['answer_perplexity_before']:.3f} -> "
            f"{f['answer_perplexity_after']:.3f} over {f['tokens']} answer tokens of {f['samples']} {f['dataset']} "
            f"texts (whole-text perplexity {f['whole_text_perplexity_before']:.2f} -> {f['whole_text_perplexity_after']:.2f})")
