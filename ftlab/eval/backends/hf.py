"""The transformers generation backend (`hf`, `hf-generate`): prompt rendering and encoding,
batch sizing, and fixed batches through `model.generate`; continuous batching lives in
ftlab.eval.backends.continuous.

Why it is fast without changing answers:
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
import time
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from ftlab.errors import FtlabError
from ftlab.eval.backends import sizing
from ftlab.eval.backends.api import Generation
from ftlab.eval.backends.kv_cache import supports_cache_surgery
from ftlab.eval.backends.stopping import BoxClosedCriteria
from ftlab.eval.prompt_format import encode_prompts, end_of_turn_ids, render_messages, resolve_prompt_format
from ftlab.models.sources import load_model

log = logging.getLogger(__name__)


class HFGenerator:
    name = "hf"

    def __init__(self, model, tokenizer, *, progress: bool = True, continuous: bool = True,
                 prompt_format: str = "auto", source=None, format_option: str = "eval.prompt_format"):
        self.model = model
        self.tokenizer = tokenizer
        self.progress = progress
        self.batch_size_used: int | None = None  # the last generate()'s rows (after auto and back-off)
        # Continuous batching (own decode loop) when the model's KV cache allows it; otherwise
        # fixed batches through model.generate.
        self.continuous = continuous
        self.prompt_format = resolve_prompt_format(prompt_format, tokenizer, source, format_option)
        if tokenizer.pad_token_id is None:
            raise FtlabError("the tokenizer has no pad token (nor EOS to use as one); set tokenizer.pad_token in the model folder")

    @property
    def chat(self) -> bool:
        return self.prompt_format == "chat"

    def render(self, messages: list[dict], enable_thinking: bool = False) -> str:
        return render_messages(self.tokenizer, messages, self.chat, enable_thinking)

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        return encode_prompts(self.tokenizer, prompts, self.chat)

    def eos_ids(self) -> list[int]:
        """Tokens that end an answer: the model's EOS, and in chat format the template's end of turn."""
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids = [int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None]
        if self.chat:
            ids += [i for i in end_of_turn_ids(self.tokenizer) if i not in ids]
        return ids

    def resolve_batch_size(self, encoded: list[list[int]], max_new_tokens: int, batch_size: int | None) -> int:
        if batch_size is None:
            batch_size = sizing.auto_batch_size(self.model, max(len(e) for e in encoded) + max_new_tokens, len(encoded))
            log.info("eval.batch_size=auto: %d rows", batch_size)
        self.batch_size_used = batch_size
        return batch_size

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int | None,
                 stop_at_box: bool = True, stop: Sequence[str] = ()) -> Iterator[list[tuple[int, Generation]]]:
        from ftlab.eval.backends.continuous import ContinuousBatcher  # lazy: ftlab.eval.backends.continuous imports transformers

        if not prompts:
            return
        if not self.continuous or not supports_cache_surgery(self.model):
            yield from self.generate_static(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                            stop_at_box=stop_at_box, stop=stop)
            return
        yield from ContinuousBatcher(self, max_new_tokens, batch_size, stop_at_box, stop).run(prompts)

    def generate_static(self, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int | None,
                        stop_at_box: bool = True, stop: Sequence[str] = ()) -> Iterator[list[tuple[int, Generation]]]:
        """Fixed batches through `model.generate` (any model transformers can generate with)."""
        import torch  # lazy: torch takes 3.3 s to import
        from transformers import GenerationConfig, StoppingCriteriaList  # lazy: transformers takes 1.3 s (and torch)

        if not prompts:
            return
        encoded = self.encode(prompts)
        batch_size = self.resolve_batch_size(encoded, max_new_tokens, batch_size)
        # Longest first: similar lengths share a batch (little padding) and a memory problem
        # shows up in the first batch rather than at the end.
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        device = next(self.model.parameters()).device
        eos_ids = self.eos_ids()
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
                crit = BoxClosedCriteria(self.tokenizer, width, len(rows), eos_ids, stop_at_box, start_time=t0, stop=stop)
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
    import torch  # lazy: torch takes 3.3 s to import

    return {"": 0} if torch.cuda.is_available() else None


def load_hf_generator(model_ref: str, cfg, workspace, continuous: bool) -> HFGenerator:
    model, tokenizer, source = load_model(
        model_ref, workspace=workspace, dtype=cfg.model.dtype, revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code, attn_implementation=cfg.model.attn_implementation,
        device_map=default_device_map(),
    )
    return HFGenerator(model, tokenizer, continuous=continuous,
                       prompt_format=getattr(cfg.eval, "prompt_format", "auto"), source=source)
