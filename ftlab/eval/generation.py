"""Generation backends, keyed by name: `hf` (continuous batching, the default), `hf-generate`
(fixed batches through `model.generate`) and `canned` (fixed responses; tests only).

Why the hf backend is fast without changing answers:
- prompts are sorted by token length, so prompts prefilled together need little padding;
  padding is on the left with a proper attention mask and per-row position ids, so a padded
  row sees exactly the positions it would see alone;
- each row stops as soon as its `\\boxed{...}` closes (or at EOS / max_new_tokens);
- a finished row leaves the batch at once and a waiting prompt takes its place (continuous
  batching), so one long answer does not keep a whole batch of finished rows busy.
Greedy decoding in fp32 then gives the answers each prompt gets alone (the throughput benchmark
measures the share of identical answers).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from transformers import StoppingCriteria

from ftlab.errors import FtlabError
from ftlab.eval.extraction import has_closed_box
from ftlab.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class Generation:
    text: str
    new_tokens: int
    latency_s: float  # from the row's admission (its prefill) until it finished
    stop_reason: str  # box | eos | length | canned


class Generator(Protocol):
    name: str
    model: Any  # None for backends without a model (canned)
    tokenizer: Any

    def render(self, messages: list[dict], enable_thinking: bool = False) -> str: ...

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int | None,
                 stop_at_box: bool = True) -> Iterator[list[tuple[int, Generation]]]:
        """Yields finished (prompt position, generation) pairs as they finish, in groups;
        batch_size None = auto."""
        ...


GENERATORS: Registry[Callable[..., Generator]] = Registry("generation backend")

# eval.batch_size=None (auto): rows whose KV cache fills this share of free memory, capped where
# larger batches stop paying (matmul efficiency on CPU saturates around 64-128 rows).
AUTO_MEMORY_SHARE = 0.25
AUTO_MAX_ROWS = {"cpu": 128, "cuda": 256}
AUTO_FALLBACK_ROWS = 16
# At most this many prompt tokens per prefill forward: long prompts (squad_v2 contexts reach 800
# tokens) times a full batch would otherwise need gigabytes of activations at once.
PREFILL_TOKEN_BUDGET = 8192
MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth a separate forward pass


def shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with (chat template, system prompt, task preamble), leaving each
    prompt at least one token of its own to prefill; 0 below MIN_SHARED_PREFIX."""
    n = min(len(os.path.commonprefix(list(encoded))), min(len(e) for e in encoded) - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


def kv_bytes_per_token(model) -> int | None:
    """Bytes of KV cache one token takes over all layers, from the model config (None if the
    config does not say)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None)
    if not head_dim and heads and getattr(config, "hidden_size", None):
        head_dim = config.hidden_size // heads
    if not (layers and kv_heads and head_dim):
        return None
    import torch

    dtype = getattr(model, "dtype", torch.float32)
    element = dtype.itemsize if dtype.is_floating_point else 4
    return int(layers) * 2 * int(kv_heads) * int(head_dim) * element


def free_memory_bytes(device) -> int:
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def auto_batch_size(model, tokens_per_row: int, n_prompts: int) -> int:
    """Rows for eval.batch_size=None: as many as AUTO_MEMORY_SHARE of free memory holds for the
    KV cache of rows `tokens_per_row` long (longest prompt + max_new_tokens), capped per device."""
    device = next(model.parameters()).device
    cap = AUTO_MAX_ROWS.get(device.type, AUTO_MAX_ROWS["cpu"])
    per_token = kv_bytes_per_token(model)
    if per_token is None:
        log.info("eval.batch_size=auto: the model config does not give the KV cache size; using %d rows",
                 AUTO_FALLBACK_ROWS)
        rows = AUTO_FALLBACK_ROWS
    else:
        rows = int(AUTO_MEMORY_SHARE * free_memory_bytes(device) // (per_token * max(1, tokens_per_row)))
    return max(1, min(cap, rows, n_prompts))


def _single_row_oom(exc: BaseException) -> FtlabError:
    first = (str(exc).splitlines() or [""])[0][:200]
    return FtlabError("out of memory generating a single row; lower eval.max_new_tokens, shorten the prompts "
                      f"or use a smaller (or quantized) model ({first})")


def _is_out_of_memory(exc: RuntimeError) -> bool:
    import torch

    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


# ---------------------------------------------------------------------------------------------
# hf


def _closing_token_ids(tokenizer) -> list[int]:
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


class BoxClosedCriteria(StoppingCriteria):
    """Per-row stopping: a row is done when its generated text holds a closed box or it emitted
    EOS. Records each row's finishing step and time, which give new-token counts and latencies.

    Implements transformers' StoppingCriteria protocol (returns one bool per row); `generate`
    then pads finished rows and stops when all are done.
    """

    def __init__(self, tokenizer, prompt_len: int, batch: int, eos_ids: Sequence[int], stop_at_box: bool = True,
                 start_time: float | None = None):
        import torch

        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stop_at_box = stop_at_box
        self.start = start_time if start_time is not None else time.perf_counter()
        self.done = torch.zeros(batch, dtype=torch.bool)
        self.finish_step = [0] * batch
        self.finish_time = [0.0] * batch
        self.reason = ["length"] * batch
        self.eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)
        self.close_ids = torch.tensor(_closing_token_ids(tokenizer), dtype=torch.long)

    def __call__(self, input_ids, scores=None, **kwargs):
        import torch

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
        return self.done.to(input_ids.device).clone()

    def _finish(self, row: int, step: int, now: float, reason: str) -> None:
        self.done[row] = True
        self.finish_step[row] = step
        self.finish_time[row] = now
        self.reason[row] = reason


class HFGenerator:
    name = "hf"

    def __init__(self, model, tokenizer, *, progress: bool = True, continuous: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.progress = progress
        self.batch_size_used: int | None = None  # the last generate()'s rows (after auto and back-off)
        # Continuous batching (own decode loop) when the model's KV cache allows it; otherwise
        # fixed batches through model.generate.
        self.continuous = continuous
        if tokenizer.pad_token_id is None:
            raise FtlabError("the tokenizer has no pad token (nor EOS to use as one); set tokenizer.pad_token in the model folder")

    def render(self, messages: list[dict], enable_thinking: bool = False) -> str:
        from ftlab.data.prompts import render_prompt

        return render_prompt(self.tokenizer, messages, enable_thinking=enable_thinking)

    def _eos_ids(self) -> list[int]:
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids = eos if isinstance(eos, (list, tuple)) else [eos]
        return [int(i) for i in ids if i is not None]

    def resolve_batch_size(self, encoded: list[list[int]], max_new_tokens: int, batch_size: int | None) -> int:
        if batch_size is None:
            batch_size = auto_batch_size(self.model, max(len(e) for e in encoded) + max_new_tokens, len(encoded))
            log.info("eval.batch_size=auto: %d rows", batch_size)
        self.batch_size_used = batch_size
        return batch_size

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        # Rendered chat prompts already carry the template's special tokens (BOS included where
        # the template wants it); adding them again would change the model's input.
        return self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int | None,
                 stop_at_box: bool = True) -> Iterator[list[tuple[int, Generation]]]:
        if not prompts:
            return
        if not self.continuous or not _supports_cache_surgery(self.model):
            yield from self.generate_static(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                            stop_at_box=stop_at_box)
            return
        yield from _ContinuousBatcher(self, max_new_tokens, batch_size, stop_at_box).run(prompts)

    def generate_static(self, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int | None,
                        stop_at_box: bool = True) -> Iterator[list[tuple[int, Generation]]]:
        """Fixed batches through `model.generate` (any model transformers can generate with)."""
        import torch
        from tqdm.auto import tqdm
        from transformers import GenerationConfig, StoppingCriteriaList

        if not prompts:
            return
        encoded = self.encode(prompts)
        batch_size = self.resolve_batch_size(encoded, max_new_tokens, batch_size)
        # Longest first: similar lengths share a batch (little padding) and a memory problem
        # shows up in the first batch rather than at the end.
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        device = next(self.model.parameters()).device
        eos_ids = self._eos_ids()
        pad_id = self.tokenizer.pad_token_id
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id,
            eos_token_id=eos_ids or None, bos_token_id=getattr(self.model.generation_config, "bos_token_id", None),
        )
        self.model.eval()
        bar = tqdm(total=len(prompts), desc="generate", unit="sample", disable=not self.progress, leave=False)
        try:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                width = max(len(encoded[i]) for i in rows)
                ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    seq = encoded[i]
                    ids[r, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
                    mask[r, width - len(seq):] = 1
                t0 = time.perf_counter()
                crit = BoxClosedCriteria(self.tokenizer, width, len(rows), eos_ids, stop_at_box, start_time=t0)
                with torch.inference_mode():
                    out = self.model.generate(
                        input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg,
                        stopping_criteria=StoppingCriteriaList([crit]),
                    )
                elapsed = time.perf_counter() - t0
                results = []
                generated = out[:, width:].cpu()
                for r, i in enumerate(rows):
                    steps = crit.finish_step[r] if crit.done[r] else generated.shape[1]
                    tokens = generated[r, :steps].tolist()
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    latency = crit.finish_time[r] if crit.done[r] else elapsed
                    results.append((i, Generation(text, len(tokens), latency, crit.reason[r])))
                bar.update(len(rows))
                yield results
        finally:
            bar.close()


def default_device_map():
    """The whole model on the first GPU when there is one (bitsandbytes needs a device map)."""
    import torch

    return {"": 0} if torch.cuda.is_available() else None


def _load_hf(model_ref: str, cfg, workspace, continuous: bool) -> HFGenerator:
    from ftlab.models.sources import load_model

    model, tokenizer, _ = load_model(
        model_ref, workspace=workspace, dtype=cfg.model.dtype, revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code, attn_implementation=cfg.model.attn_implementation,
        device_map=default_device_map(),
    )
    return HFGenerator(model, tokenizer, continuous=continuous)


@GENERATORS.register("hf")
def _hf_backend(model_ref: str, cfg, workspace, options: Mapping[str, Any] | None = None) -> HFGenerator:
    """Continuous batching: finished rows leave the batch at once and waiting prompts take their place."""
    return _load_hf(model_ref, cfg, workspace, continuous=True)


@GENERATORS.register("hf-generate")
def _hf_generate_backend(model_ref: str, cfg, workspace, options: Mapping[str, Any] | None = None) -> HFGenerator:
    """Fixed length-sorted batches through model.generate (reference path; slower when answer lengths vary)."""
    return _load_hf(model_ref, cfg, workspace, continuous=False)


# ---------------------------------------------------------------------------------------------
# Continuous batching


def _cache_layers(cache) -> list | None:
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return None
    return layers


def _supports_cache_surgery(model) -> bool:
    """Rows are added to and removed from the KV cache by editing its per-layer tensors, which
    is only valid for plain (full-attention, dynamically grown) caches."""
    from transformers.cache_utils import DynamicCache

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    try:
        cache = DynamicCache(config=config)
    except Exception:  # noqa: BLE001 - exotic configs: fall back to model.generate
        return False
    layers = getattr(cache, "layers", None)
    # Lazily created layers (empty list) are DynamicLayer too; a sliding or hybrid cache is not.
    return layers is not None and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def _accepts_logits_to_keep(model) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class _ContinuousBatcher:
    """Greedy decoding with a rolling batch.

    Rows live in one left-padded KV cache. A row leaves as soon as it finishes (box closed, EOS or
    max_new_tokens) and waiting prompts are prefilled as a group and spliced in, so the batch
    stays full instead of idling until its longest answer ends. Each row keeps its own position
    ids and attention mask, so its tokens are the ones it would get alone (up to float summation
    order, which the benchmark measures)."""

    def __init__(self, gen: HFGenerator, max_new_tokens: int, batch_size: int | None, stop_at_box: bool):
        import torch

        self.gen = gen
        self.model = gen.model
        self.tok = gen.tokenizer
        self.max_new = max_new_tokens
        self.batch_size = batch_size
        self.stop_at_box = stop_at_box
        self.eos = set(gen._eos_ids())
        self.close_ids = set(_closing_token_ids(self.tok))
        self.pad_id = self.tok.pad_token_id
        self.device = next(self.model.parameters()).device
        self.logits_kw = {"logits_to_keep": 1} if _accepts_logits_to_keep(self.model) else {}
        self.torch = torch
        self.prefix: list[int] = []
        self.prefix_kv: list[tuple] = []

    def _forward(self, ids, mask, pos, cache):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                         use_cache=True, **self.logits_kw)
        return out.logits[:, -1, :].float().argmax(-1), out.past_key_values

    def _shared_prefix(self, encoded: list[list[int]]) -> None:
        """Computes the KV cache of the prefix every prompt shares (chat template, system prompt,
        task preamble) once; prefills then only run the rest. Prompts are ~3x longer than the
        answers of short tasks, so prefill is most of the work there."""
        torch = self.torch
        self.prefix: list[int] = []
        self.prefix_kv: list[tuple] = []
        first = encoded[0]
        n = shared_prefix_length(encoded)
        if not n:
            return
        from transformers.cache_utils import DynamicCache

        ids = torch.tensor([first[:n]], dtype=torch.long, device=self.device)
        mask = torch.ones_like(ids)
        pos = torch.arange(n, device=self.device)[None]
        _, cache = self._forward(ids, mask, pos, DynamicCache(config=self.model.config))
        layers = _cache_layers(cache)
        if layers is None:
            return
        self.prefix = first[:n]
        self.prefix_kv = [(layer.keys, layer.values) for layer in layers]

    def _prefill(self, seqs: list[list[int]]):
        from transformers.cache_utils import DynamicCache

        torch = self.torch
        p = len(self.prefix)
        rest = [seq[p:] for seq in seqs]
        width = max(len(s) for s in rest)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), p + width), dtype=torch.long)
        mask[:, :p] = 1
        for r, seq in enumerate(rest):
            ids[r, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[r, p + width - len(seq):] = 1
        # Same position ids as model.generate derives for left padding; padding between the
        # shared prefix and a row's own tokens is masked out like left padding.
        pos = ((mask.cumsum(-1) - 1).masked_fill(mask == 0, 0))[:, p:]
        ids, mask, pos = ids.to(self.device), mask.to(self.device), pos.to(self.device)
        cache = DynamicCache(config=self.model.config)
        for layer_idx, (k, v) in enumerate(self.prefix_kv):
            cache.update(k.expand(len(seqs), -1, -1, -1).contiguous(), v.expand(len(seqs), -1, -1, -1).contiguous(),
                         layer_idx)
        nxt, cache = self._forward(ids, mask, pos, cache)
        return cache, mask, pos[:, -1] + 1, nxt

    def _finished(self, tokens: list[int]) -> str | None:
        last = tokens[-1]
        if last in self.eos:
            return "eos"
        if self.stop_at_box and last in self.close_ids:
            if has_closed_box(self.tok.decode(tokens, skip_special_tokens=True)):
                return "box"
        if len(tokens) >= self.max_new:
            return "length"
        return None

    def run(self, prompts: Sequence[str]) -> Iterator[list[tuple[int, Generation]]]:
        import collections

        from tqdm.auto import tqdm

        torch = self.torch
        self.encoded = self.gen.encode(prompts)
        self._set_batch_size(self.gen.resolve_batch_size(self.encoded, self.max_new, self.batch_size))
        self.queue = collections.deque(sorted(range(len(prompts)), key=lambda i: -len(self.encoded[i])))
        self.rows: list[dict] = []  # per active row: prompt index, tokens, admission time
        self.cache = self.mask = self.pos = self.last = None
        bar = tqdm(total=len(prompts), desc="generate", unit="sample", disable=not self.gen.progress, leave=False)
        self.model.eval()
        try:
            try:
                with torch.inference_mode():
                    self._shared_prefix(self.encoded)
            except RuntimeError as exc:  # torch.OutOfMemoryError is one
                if not _is_out_of_memory(exc):
                    raise
                raise _single_row_oom(exc) from None
            while self.queue or self.rows:
                # Inference mode per step, not around the loop: the consumer runs between yields.
                try:
                    with torch.inference_mode():
                        done = self._step()
                except RuntimeError as exc:  # torch.OutOfMemoryError is one
                    if not _is_out_of_memory(exc):
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
            raise _single_row_oom(exc) from None
        for row in reversed(self.rows):
            self.queue.appendleft(row["i"])
        self.rows = []
        self.cache = self.mask = self.pos = self.last = None
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
        log.warning("out of memory with %d rows; retrying their prompts with %d", self.batch_size, self.batch_size // 2)
        self._set_batch_size(self.batch_size // 2)

    def _step(self) -> list[tuple[int, Generation]]:
        """Admits waiting prompts when enough slots are free, else decodes one token for every
        row; returns the rows that finished."""
        torch = self.torch
        rows = self.rows
        first_changed = 0
        free = self.batch_size - len(rows)
        if self.queue and (not rows or free >= min(self.refill_at, len(self.queue))):
            # The queue is longest first, so its head is the widest prompt of this prefill.
            width = max(1, len(self.encoded[self.queue[0]]) - len(self.prefix))
            n_take = max(1, min(free, len(self.queue), PREFILL_TOKEN_BUDGET // width))
            take = [self.queue.popleft() for _ in range(n_take)]
            t_admit = time.perf_counter()
            try:
                n_cache, n_mask, n_pos, n_next = self._prefill([self.encoded[i] for i in take])
                if rows:
                    self.cache, self.mask = _splice(self.cache, self.mask, n_cache, n_mask)
                    self.pos, self.last = torch.cat([self.pos, n_pos]), torch.cat([self.last, n_next])
                else:
                    self.cache, self.mask, self.pos, self.last = n_cache, n_mask, n_pos, n_next
            except BaseException:
                self.queue.extendleft(reversed(take))  # not admitted: they wait again (e.g. out of memory)
                raise
            first_changed = len(rows)
            rows += [{"i": i, "tokens": [int(t)], "t0": t_admit} for i, t in zip(take, n_next.tolist())]
        else:
            self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
            self.last, self.cache = self._forward(self.last[:, None], self.mask, self.pos[:, None], self.cache)
            self.pos = self.pos + 1
            for row, t in zip(rows, self.last.tolist()):
                row["tokens"].append(int(t))
        done, keep = [], []
        now = time.perf_counter()
        for r, row in enumerate(rows):
            # Rows that did not move this iteration were checked before.
            reason = self._finished(row["tokens"]) if r >= first_changed else None
            if reason is None:
                keep.append(r)
                continue
            text = self.tok.decode(row["tokens"], skip_special_tokens=True)
            done.append((row["i"], Generation(text, len(row["tokens"]), now - row["t0"], reason)))
        if done:
            self.rows = [rows[r] for r in keep]
            if self.rows:
                idx = torch.tensor(keep, device=self.device)
                self.cache, self.mask = _select(self.cache, self.mask, idx)
                self.pos, self.last = self.pos[idx], self.last[idx]
            else:
                self.cache = self.mask = self.pos = self.last = None
        return done


def _select(cache, mask, idx):
    """Keeps rows `idx` and drops left-padding columns no remaining row needs."""
    mask = mask[idx]
    used = mask.any(0).nonzero()
    start = int(used[0]) if used.numel() else 0
    for layer in _cache_layers(cache):
        layer.keys = layer.keys[idx, :, start:, :]
        layer.values = layer.values[idx, :, start:, :]
    return cache, mask[:, start:]


def _splice(cache, mask, new_cache, new_mask):
    """Appends the rows of `new_cache` to `cache`, left-padding whichever is shorter."""
    import torch
    import torch.nn.functional as F

    old_len, new_len = mask.shape[1], new_mask.shape[1]
    width = max(old_len, new_len)
    for layer, new_layer in zip(_cache_layers(cache), _cache_layers(new_cache)):
        for attr in ("keys", "values"):
            a, b = getattr(layer, attr), getattr(new_layer, attr)
            a = F.pad(a, (0, 0, width - old_len, 0))
            b = F.pad(b, (0, 0, width - new_len, 0))
            setattr(layer, attr, torch.cat([a, b], dim=0))
    mask = torch.cat([F.pad(mask, (width - old_len, 0)), F.pad(new_mask, (width - new_len, 0))], dim=0)
    return cache, mask


# ---------------------------------------------------------------------------------------------
# canned (tests only)


class CannedGenerator:
    """TEST DOUBLE: returns fixed responses without a model, to test scoring, resume and output
    writing quickly. `responses` is a callable `prompt -> response`, a list consumed in order, or
    one string for every prompt. Never use it to report results."""

    name = "canned"
    model = None
    tokenizer = None

    def __init__(self, responses: Callable[[str], str] | Sequence[str] | str):
        self._responses = responses
        self._cursor = 0

    def render(self, messages: list[dict], enable_thinking: bool = False) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"

    def _next(self, prompt: str) -> str:
        if callable(self._responses):
            return self._responses(prompt)
        if isinstance(self._responses, str):
            return self._responses
        if self._cursor >= len(self._responses):
            raise FtlabError(f"canned generator ran out of responses after {len(self._responses)}")
        self._cursor += 1
        return self._responses[self._cursor - 1]

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int | None,
                 stop_at_box: bool = True) -> Iterator[list[tuple[int, Generation]]]:
        batch_size = batch_size or max(1, len(prompts))
        for start in range(0, len(prompts), batch_size):
            batch = []
            for i in range(start, min(len(prompts), start + batch_size)):
                t0 = time.perf_counter()
                text = self._next(prompts[i])
                batch.append((i, Generation(text, len(text.split()), time.perf_counter() - t0, "canned")))
            yield batch


@GENERATORS.register("canned")
def _canned_backend(model_ref: str, cfg, workspace, options: Mapping[str, Any] | None = None) -> CannedGenerator:
    """`eval.backend=canned` with `eval.backend_options={response: "..."}` or
    `{responses_file: lines.jsonl}` (lines with a "response" key, used in order)."""
    from ftlab.io import read_jsonl

    options = dict(options or {})
    if "responses_file" in options:
        lines = read_jsonl(options["responses_file"])
        if not lines:
            raise FtlabError(f"eval.backend_options.responses_file {options['responses_file']} has no JSON lines")
        return CannedGenerator([str(line.get("response", "")) for line in lines])
    if "response" in options:
        return CannedGenerator(str(options["response"]))
    raise FtlabError("eval.backend=canned needs eval.backend_options with 'response' or 'responses_file'")


def build_generator(model_ref: str, cfg, workspace) -> Generator:
    factory = GENERATORS.get(cfg.eval.backend)
    return factory(model_ref, cfg, workspace, getattr(cfg.eval, "backend_options", None))
