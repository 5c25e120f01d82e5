"""ftlab's engine behind lm-evaluation-harness's model interface (`lm_eval.api.model.LM`).

lm-eval builds the requests (documents, few-shot contexts, continuations, stop sequences) and
scores the answers (filters, metrics); this class only answers its three request types, on the
model ftlab already loaded:
- `loglikelihood`: requests that share a context (a multiple-choice question's options) are
  one `ChoiceRequest`: the context is computed once and each option continues from its KV cache
  (ftlab.eval.scoring.choice_logprobs), where lm-eval's HF backend runs context + option once per
  option. Contexts and continuations are split into tokens as lm-eval splits them (trailing
  whitespace of the context moves to the continuation; the continuation is what follows the
  context's own tokens), so the numbers are the same (tests/eval/test_lmeval_tasks.py).
- `generate_until`: greedy decoding in ftlab's continuous batcher, each row ending at the
  request's stop strings, EOS or `max_gen_toks`; the text is cut at the first stop string by
  lm-eval's own helper. Sampling is refused: ftlab's engine decodes greedily.
- `loglikelihood_rolling`: lm-eval's own rolling windows (`get_rolling_token_windows` at the
  model's maximum length), each window scored as a context and one continuation.

Every answer is appended to a request cache as its batch finishes (ftlab.eval.lmeval.cache), so
a killed run resumes without asking the model again.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict

from lm_eval.api.model import LM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text, resolve_max_length
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ftlab.errors import FtlabError
from ftlab.eval.prompt_format import encode_prompts
from ftlab.eval.scoring.choice_logprobs import ChoiceRequest, ChoiceScorer
from ftlab.eval.scoring.choice_prompts import encode

log = logging.getLogger(__name__)


class FtlabLM(LM):
    """`generator`: ftlab's loaded HF generator (model, tokenizer, batcher), set to the prompt format
    lm-eval renders in; `cache`: the run's RequestCache."""

    def __init__(self, generator, *, chat: bool, batch_size: int | None, cache):
        super().__init__()
        self.gen = generator
        self.model = generator.model
        self.tokenizer = generator.tokenizer
        self.chat = chat
        self.batch_size = batch_size
        self.cache = cache
        self.max_length = resolve_max_length(getattr(self.model, "config", None), self.tokenizer)
        self.timings: dict[str, float] = defaultdict(float)  # request type -> seconds spent in the model
        self.asked: dict[str, int] = defaultdict(int)  # request type -> requests sent to the model this run

    # -- what lm-eval asks of a chat model ------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        from ftlab.data.prompts import render_prompt  # lazy: ftlab.data.prompts imports numpy

        if add_generation_prompt:
            return render_prompt(self.tokenizer, chat_history)
        # A prefilled assistant turn the model continues (lm-eval's `gen_prefix`).
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=False,
                                                  continue_final_message=True)

    # -- tokens ---------------------------------------------------------------------------------

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is (lm-eval's choice): BOS, else EOS."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return encode_prompts(self.tokenizer, texts, self.chat)

    # -- the three request types ----------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        args = [tuple(r.args) for r in requests]
        out = self.cache.lookup("loglikelihood", args)
        todo = [i for i, a in enumerate(args) if out[i] is None]
        # One choice request per distinct context: its options share the context's forward.
        by_context: dict[tuple, list[int]] = defaultdict(list)
        tokens: dict[int, tuple[list[int], list[int]]] = {}
        for i in todo:
            context, continuation = args[i]
            if context == "":  # tokens decided per request (lm-eval's empty-context rule)
                tokens[i] = self._empty_context(continuation)
                by_context[("tokens", tuple(tokens[i][0]))].append(i)
            else:
                by_context[("text", context)].append(i)
        groups = list(by_context.values())
        choice = []
        for members in groups:
            context = args[members[0]][0]
            if context == "":
                choice.append(ChoiceRequest(tokens[members[0]][0], [tokens[i][1] for i in members]))
            else:
                choice.append(ChoiceRequest(*encode(context, [args[i][1] for i in members], self._encode)))
        for finished in self._score(choice, "loglikelihood"):
            done_args, done_answers = [], []
            for group_pos, results in finished:
                members = groups[group_pos]
                answers = [(float(lp), bool(greedy)) for lp, greedy in results]
                for i, answer in zip(members, answers):
                    out[i] = answer
                done_args += [args[i] for i in members]
                done_answers += answers
            self.cache.store("loglikelihood", done_args, done_answers)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        args = [tuple(r.args) for r in requests]
        out = self.cache.lookup("loglikelihood_rolling", args)
        # Every window of every pending text in one scoring pass; a text's answer is its windows' sum.
        windows, owner = [], []
        for i, a in enumerate(args):
            if out[i] is not None:
                continue
            tokens = self.tokenizer(a[0], add_special_tokens=False)["input_ids"]
            for ctx, cont in (make_disjoint_window(w) for w in get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)):
                windows.append(ChoiceRequest(ctx, [cont]))
                owner.append(i)
        totals: dict[int, float] = defaultdict(float)
        left = defaultdict(int)
        for i in owner:
            left[i] += 1
        for finished in self._score(windows, "loglikelihood_rolling"):
            done = []
            for w, results in finished:
                i = owner[w]
                totals[i] += float(results[0][0])
                left[i] -= 1
                if left[i] == 0:
                    out[i] = totals[i]
                    done.append(i)
            self.cache.store("loglikelihood_rolling", [args[i] for i in done], [out[i] for i in done])
        for i, a in enumerate(args):
            if out[i] is None:  # an empty text: nothing to predict, log-likelihood 0 (as lm-eval's sum)
                out[i] = 0.0
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        args = [(r.args[0], r.args[1]) for r in requests]
        keys = [(context, _canonical(kwargs)) for context, kwargs in args]
        out = self.cache.lookup("generate_until", keys)
        eos = self.tokenizer.decode([self.tokenizer.eos_token_id], skip_special_tokens=False) \
            if self.tokenizer.eos_token_id is not None else None
        # Requests with the same generation settings run as one batch (lm-eval groups them alike).
        by_kwargs: dict[str, list[int]] = defaultdict(list)
        for i, (_, canonical) in enumerate(keys):
            if out[i] is None:
                by_kwargs[canonical].append(i)
        for members in by_kwargs.values():
            # lm-eval's own default cap (256, HFLM's max_gen_toks) where the task gives none.
            kwargs = normalize_gen_kwargs(dict(args[members[0]][1]))
            if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0:
                raise FtlabError(f"an lm-eval task asks for sampled generation ({_canonical(args[members[0]][1])}); "
                                 "ftlab's engine decodes greedily: set the task's generation_kwargs do_sample: false")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            prompts = [args[i][0] for i in members]
            self._check_length(prompts, max_gen)
            t0 = time.perf_counter()
            self.asked["generate_until"] += len(prompts)
            for batch in self.gen.generate(prompts, max_new_tokens=max_gen, batch_size=self.batch_size,
                                           stop_at_box=False, stop=until):
                texts = []
                for j, generation in batch:
                    text = postprocess_generated_text(generation.text, until, None)
                    out[members[j]] = text
                    texts.append(text)
                self.cache.store("generate_until", [keys[members[j]] for j, _ in batch], texts)
            self.timings["generate_until"] += time.perf_counter() - t0
        return out

    # -- helpers --------------------------------------------------------------------------------

    def _empty_context(self, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's rule for an empty context: the prefix token stands in for it, unless the
        continuation already starts with that token (then its first token is the context)."""
        cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not cont:
            raise FtlabError("an lm-eval request has an empty context and an empty continuation; nothing to score")
        if cont[0] != self.prefix_token_id:
            return [self.prefix_token_id], cont
        if len(cont) < 2:
            raise FtlabError("an lm-eval request's continuation is only the prefix token; nothing to score")
        return cont[:1], cont[1:]

    def _check_length(self, prompts: list[str], reserve: int) -> None:
        longest = max(len(ids) for ids in self._encode(prompts))
        if longest + reserve > self.max_length:
            raise FtlabError(f"an lm-eval prompt of {longest} tokens plus {reserve} to generate exceeds the model's "
                             f"{self.max_length}; use fewer few-shot examples (eval.lmeval_num_fewshot)")

    def _score(self, requests: list[ChoiceRequest], kind: str):
        if not requests:
            return
        # The model reads the context and every continuation token but the last.
        longest = max(len(r.context) + max(len(o) for o in r.options) - 1 for r in requests)
        if longest > self.max_length:
            raise FtlabError(f"an lm-eval request of {longest} tokens exceeds the model's {self.max_length}; "
                             "use fewer few-shot examples (eval.lmeval_num_fewshot)")
        scorer = ChoiceScorer(self.model, self.tokenizer.pad_token_id, progress=getattr(self.gen, "progress", False))
        t0 = time.perf_counter()
        self.asked[kind] += sum(len(r.options) for r in requests)
        # Yields the groups of (request position, [(log-probability, greedy)] per option) as they finish.
        yield from scorer.score(requests, max_questions=self.batch_size, greedy=True)
        self.timings[kind] += time.perf_counter() - t0


def _canonical(kwargs) -> str:
    return json.dumps(kwargs, sort_keys=True, default=str)
