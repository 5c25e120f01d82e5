"""Generation backends on tiny in-process models: batching must not change greedy outputs,
rows stop when their box closes, and the hf backend works through the CLI end to end."""

import pytest
import torch

from ftlab.cli import main
from ftlab.eval.records.documents import load_metrics_document
from ftlab.commands.chat import chat
from ftlab.eval.evaluator import metrics_paths
from ftlab.eval.backends.hf import HFGenerator
from ftlab.eval.backends.stopping import BoxClosedCriteria
from ftlab.io import read_jsonl

PROMPTS = [
    "What is 1 + 1?",
    "A much longer question that goes on for a while about arithmetic and numbers, what is 12 * 3?",
    "Hi",
    "Which number is larger, 1234 or 4321? Think step by step.",
    "Tell me a story about a cat.",
]


def _run(gen, prompts, **kw):
    out = {}
    for batch in gen.generate(prompts, **kw):
        for i, g in batch:
            out[i] = g
    return [out[i] for i in range(len(prompts))]


def test_batching_and_continuous_batching_keep_greedy_outputs(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok, progress=False)
    prompts = [gen.render([{"role": "user", "content": p}]) for p in PROMPTS]
    gen.continuous = False
    alone = _run(gen, prompts, max_new_tokens=12, batch_size=1)
    static = _run(gen, prompts, max_new_tokens=12, batch_size=3)
    gen.continuous = True
    rolling = _run(gen, prompts, max_new_tokens=12, batch_size=2)  # forces refills mid-decode
    assert [g.text for g in static] == [g.text for g in alone]
    assert [g.text for g in rolling] == [g.text for g in alone]
    assert [g.new_tokens for g in rolling] == [g.new_tokens for g in alone]
    for g in rolling:
        assert 1 <= g.new_tokens <= 12 and g.stop_reason in ("eos", "length") and g.latency_s > 0


def test_generation_matches_plain_model_generate(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok, progress=False)
    prompt = gen.render([{"role": "user", "content": PROMPTS[1]}])
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert _run(gen, [prompt], max_new_tokens=10, batch_size=4)[0].text == expected


class Scripted(torch.nn.Module):
    """Wraps a real model (so the KV cache is real) but forces the next token: a chain that
    writes "The answer is \\boxed{7} and then keeps talking" after any prompt."""

    def __init__(self, inner, tok):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.generation_config = inner.generation_config
        self.script = tok("The answer is \\boxed{7} and then keeps talking", add_special_tokens=False)["input_ids"]
        assert len(set(self.script)) == len(self.script)
        self.after = {a: b for a, b in zip(self.script, self.script[1:])}

    def forward(self, input_ids, **kw):
        out = self.inner(input_ids=input_ids, **kw)
        logits = torch.full((input_ids.shape[0], 1, self.config.vocab_size), -1e9)
        for r, last in enumerate(input_ids[:, -1].tolist()):
            logits[r, 0, self.after.get(last, self.script[0])] = 0.0
        out.logits = logits
        return out


def test_rows_stop_when_their_box_closes(tiny):
    model, tok = tiny
    gen = HFGenerator(Scripted(model, tok), tok, progress=False)
    prompts = [gen.render([{"role": "user", "content": p}]) for p in PROMPTS[:3]]
    results = _run(gen, prompts, max_new_tokens=40, batch_size=2)
    for g in results:
        assert g.text == "The answer is \\boxed{7}" and g.stop_reason == "box"
    without = _run(gen, prompts[:1], max_new_tokens=40, batch_size=2, stop_at_box=False)[0]
    assert without.text.startswith("The answer is \\boxed{7} and then keeps talking") and without.new_tokens == 40


def test_box_criteria_marks_rows_individually(tiny):
    _, tok = tiny
    prompt = tok("prompt", add_special_tokens=False)["input_ids"]
    a = prompt + tok(" so \\boxed{12} and", add_special_tokens=False)["input_ids"]
    b = prompt + tok(" still thinking about it, I am not sure yet at all", add_special_tokens=False)["input_ids"]
    width = min(len(a), len(b))
    crit = BoxClosedCriteria(tok, len(prompt), 2, eos_ids=[tok.eos_token_id])
    states = []
    for step in range(len(prompt) + 1, width + 1):
        ids = torch.tensor([a[:step], b[:step]])
        states.append(crit(ids, None).tolist())
    assert states[-1] == [True, False]
    assert crit.reason[0] == "box" and tok.decode(a[len(prompt):len(prompt) + crit.finish_step[0]]).endswith("}")


def test_cli_evaluate_and_chat_on_scratch_model(workspace, capsys):
    argv = ["evaluate", "scratch:tiny", "--datasets", "synthetic-arith", "perplexity", "--limit", "3", "--threads", "1",
            "eval.max_new_tokens=6", "eval.bootstrap_samples=50"]
    assert main(argv) == 0
    json_path, samples_path = metrics_paths(workspace, "scratch-tiny")
    doc = load_metrics_document(json_path)
    assert doc["status"] == "complete" and doc["backend"] == "hf"
    block = doc["datasets"]["synthetic-arith"]
    assert block["n"] == 3 and block["max_new_tokens"] == 6 and block["new_tokens"]["mean"] <= 6
    assert block["samples_per_s"] > 0 and len(read_jsonl(samples_path)) == 3
    ppl = doc["datasets"]["perplexity:synthetic-arith"]
    # Random weights over a ~49k vocabulary: perplexity is huge but finite.
    assert ppl["n"] == 3 and 1 < ppl["metrics"]["perplexity"] < 1e7
    assert doc["summary"]["mean_accuracy"] == block["metrics"]["accuracy"]  # perplexity is not an accuracy
    assert "metrics written to" in capsys.readouterr().out
    assert main(["chat", "scratch:tiny", "--prompt", "Hello there", "--max-new-tokens", "4", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    # The CLI prints the model's greedy answer once, exactly (random weights may answer with
    # special tokens only, i.e. an empty text).
    text, gen = chat("scratch:tiny", "Hello there", max_new_tokens=4)
    assert printed == text + "\n" and 1 <= gen.new_tokens <= 4
    assert main(["chat", "scratch:tiny", "--prompt", " ", "--threads", "1"]) == 2


@pytest.mark.slow
def test_smollm2_continuous_batching_matches_one_by_one(workspace):
    """Real SmolLM2-135M-Instruct, fp32: batched answers are the answers it gives alone."""
    from ftlab.data.loading import load_examples
    from ftlab.data.prompts import build_messages
    from ftlab.data.tasks import get_task
    from ftlab.models.sources import load_model

    model, tok, _ = load_model("smollm2-135m-instruct", dtype="fp32")
    gen = HFGenerator(model, tok, progress=False)
    task = get_task("synthetic-arith")
    prompts = [gen.render(build_messages(task, ex)) for ex in load_examples("synthetic-arith", "test", limit=6)]
    rolling = _run(gen, prompts, max_new_tokens=16, batch_size=4)
    gen.continuous = False
    alone = _run(gen, prompts, max_new_tokens=16, batch_size=1)
    assert [g.text for g in rolling] == [g.text for g in alone]
    assert all(g.text.strip() for g in rolling)


def test_render_passes_enable_thinking_to_templates_that_read_it(tiny):
    _, tok = tiny
    saved = tok.chat_template
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if enable_thinking %}<think>{% else %}<think></think>{% endif %}")
    try:
        gen = HFGenerator(tiny[0], tok, progress=False)
        msgs = [{"role": "user", "content": "Q"}]
        assert gen.render(msgs, enable_thinking=False) == "Q<think></think>"
        assert gen.render(msgs, enable_thinking=True) == "Q<think>"
    finally:
        tok.chat_template = saved


# ---------------------------------------------------------------------------------------------
# eval.batch_size=None (auto), prefill token budget, out-of-memory back-off


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_kv_bytes_per_token_matches_a_real_cache(kv_heads):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.cache_utils import DynamicCache

    from ftlab.eval.backends.sizing import kv_bytes_per_token

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (2, 7))
    with torch.inference_mode():
        cache = model(input_ids=ids, past_key_values=DynamicCache(config=cfg), use_cache=True).past_key_values
    real = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers) // (2 * 7)
    assert kv_bytes_per_token(model) == real


def test_auto_batch_size_follows_free_memory_and_caps(tiny, monkeypatch):
    from ftlab.eval.backends import sizing
    from ftlab.eval.backends.sizing import auto_batch_size, kv_bytes_per_token

    model, _ = tiny
    per_token = kv_bytes_per_token(model)
    monkeypatch.setattr(sizing, "free_memory_bytes", lambda device: 40 * per_token * 100)
    # A quarter of free memory holds the KV cache of 10 rows of 100 tokens.
    assert auto_batch_size(model, 100, 1000) == 10
    assert auto_batch_size(model, 100, 3) == 3  # never more rows than prompts
    monkeypatch.setattr(sizing, "free_memory_bytes", lambda device: 10**15)
    # With memory to spare, CPU rows stop where their KV cache outweighs the weights AUTO_KV_WEIGHT_RATIO times...
    weights = sizing.weight_bytes(model)
    assert weights >= sum(p.numel() * p.element_size() for p in model.parameters())
    tokens = int(sizing.AUTO_KV_WEIGHT_RATIO["cpu"] * weights // (per_token * 20))  # 20 rows' worth
    assert auto_batch_size(model, tokens, 1000) == 20
    # ... and short rows at the device's row cap.
    assert auto_batch_size(model, 1, 1000) == sizing.AUTO_MAX_ROWS["cpu"]
    monkeypatch.setattr(sizing, "free_memory_bytes", lambda device: 1)
    assert auto_batch_size(model, 100, 1000) == 1


def test_auto_batch_and_prefill_budget_keep_greedy_outputs(tiny, monkeypatch):
    from ftlab.eval.backends import sizing

    model, tok = tiny
    gen = HFGenerator(model, tok, progress=False)
    prompts = [gen.render([{"role": "user", "content": p}]) for p in PROMPTS]
    alone = _run(gen, prompts, max_new_tokens=12, batch_size=1)
    auto = _run(gen, prompts, max_new_tokens=12, batch_size=None)
    assert gen.batch_size_used == len(PROMPTS)  # plenty of memory: one row per prompt
    # A prefill budget of a few tokens admits one prompt per prefill.
    monkeypatch.setattr(sizing, "PREFILL_TOKEN_BUDGET", 4)
    trickled = _run(gen, prompts, max_new_tokens=12, batch_size=4)
    assert [g.text for g in auto] == [g.text for g in alone]
    assert [g.text for g in trickled] == [g.text for g in alone]


def test_long_prompts_prefilled_alone_keep_greedy_outputs(tiny, monkeypatch):
    """Rows past SOLO_PREFILL_TOKENS are prefilled one at a time and then laid out as a padded
    prefill lays them out (after a shared prefix); the answers do not change."""
    from ftlab.eval.backends import kv_cache

    model, tok = tiny
    gen = HFGenerator(model, tok, progress=False)
    prompts = [gen.render([{"role": "user", "content": p}]) for p in PROMPTS]
    alone = _run(gen, prompts, max_new_tokens=12, batch_size=1)
    calls = []
    solo = kv_cache.PrefixCache._prefill_alone
    monkeypatch.setattr(kv_cache.PrefixCache, "_prefill_alone",
                        lambda self, model, seqs, *a: calls.append(len(seqs)) or solo(self, model, seqs, *a))
    monkeypatch.setattr(kv_cache, "SOLO_PREFILL_TOKENS", 1)
    together = _run(gen, prompts, max_new_tokens=12, batch_size=4)
    assert calls and max(calls) > 1  # several rows were admitted in one prefill, each run alone
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.new_tokens for g in together] == [g.new_tokens for g in alone]


def test_finished_rows_slots_are_reused_in_place_and_outputs_kept(tiny, monkeypatch):
    """Prompts wait for slots: a finished row's slot takes the next prompt in place (write_rows);
    the cache is copied to drop rows only once no prompt waits (the tail)."""
    from ftlab.eval.backends import continuous

    model, tok = tiny
    gen = HFGenerator(model, tok, progress=False)
    prompts = [gen.render([{"role": "user", "content": p + tail}]) for p in PROMPTS for tail in ("", " Answer briefly.")]
    gen.continuous = False
    alone = _run(gen, prompts, max_new_tokens=12, batch_size=1)
    gen.continuous = True
    calls = []
    for name in ("write_rows", "select_rows", "splice_rows"):
        real = getattr(continuous, name)
        monkeypatch.setattr(continuous, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    together = _run(gen, prompts, max_new_tokens=12, batch_size=3)
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.new_tokens for g in together] == [g.new_tokens for g in alone]
    assert calls.count("write_rows") >= 3  # 10 prompts through 3 slots
    assert calls.count("splice_rows") == 0  # the first prefill fills all 3 slots
    assert calls.count("select_rows") <= 2  # only the tail: 3 rows left, the last needs no copy


def test_growing_cache_layer_gives_bitwise_the_same_logits_through_row_surgery(tiny):
    """Decoding into GrowingLayers (written in place) against transformers' concatenating
    DynamicLayers, through a row selection, a splice and growth past the spare room."""
    from transformers.cache_utils import DynamicCache

    from ftlab.eval.backends import kv_cache

    model, _ = tiny
    torch.manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (3, 9))
    extra = torch.randint(5, model.config.vocab_size, (2, 6))

    def decode(grow: bool):
        logits = []
        with torch.inference_mode():
            cache = model(input_ids=ids, use_cache=True, past_key_values=DynamicCache(config=model.config)).past_key_values
            mask = torch.ones(3, 9, dtype=torch.long)
            if grow:
                kv_cache.growing(cache)
            last, pos = ids[:, -1], torch.full((3,), 9)
            for step in range(kv_cache.GROWTH_TOKENS + 20):
                if step == 5:  # the middle row leaves
                    cache, mask = kv_cache.select_rows(cache, mask, torch.tensor([0, 2]))
                    last, pos = last[[0, 2]], pos[[0, 2]]
                if step == 9:  # two shorter rows join
                    new = model(input_ids=extra, use_cache=True, past_key_values=DynamicCache(config=model.config))
                    cache, mask = kv_cache.splice_rows(cache, mask, new.past_key_values, torch.ones(2, 6, dtype=torch.long))
                    last, pos = torch.cat([last, extra[:, -1]]), torch.cat([pos, torch.full((2,), 6)])
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                out = model(input_ids=last[:, None], attention_mask=mask, position_ids=pos[:, None],
                            past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                logits.append(out.logits[:, -1])
                last, pos = out.logits[:, -1].argmax(-1), pos + 1
        return logits, cache

    plain, plain_cache = decode(grow=False)
    grown, grown_cache = decode(grow=True)
    assert {type(layer).__name__ for layer in grown_cache.layers} == {"GrowingLayer"}
    assert {type(layer).__name__ for layer in plain_cache.layers} == {"DynamicLayer"}
    assert len(plain) == len(grown)
    for a, b in zip(plain, grown):
        assert torch.equal(a, b)
    for a, b in zip(plain_cache.layers, grown_cache.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_out_of_memory_halves_the_batch_and_keeps_outputs(tiny, monkeypatch, caplog):
    from ftlab.eval.backends.continuous import ContinuousBatcher

    model, tok = tiny
    gen = HFGenerator(model, tok, progress=False)
    prompts = [gen.render([{"role": "user", "content": p}]) for p in PROMPTS]
    alone = _run(gen, prompts, max_new_tokens=12, batch_size=1)
    real_forward = ContinuousBatcher._forward

    def forward(self, ids, mask, pos, cache):
        if ids.shape[0] > 2:  # "memory" holds two rows
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, ids, mask, pos, cache)

    monkeypatch.setattr(ContinuousBatcher, "_forward", forward)
    with caplog.at_level("WARNING", logger="ftlab.eval.backends.continuous"):
        backed_off = _run(gen, prompts, max_new_tokens=12, batch_size=5)
    assert [g.text for g in backed_off] == [g.text for g in alone]
    assert gen.batch_size_used == 2
    assert "out of memory with 5 rows; retrying their prompts with 2" in caplog.text


def _every_forward_raises(monkeypatch, exc: Exception) -> None:
    from ftlab.eval.backends.continuous import ContinuousBatcher

    def forward(self, ids, mask, pos, cache):
        raise exc

    monkeypatch.setattr(ContinuousBatcher, "_forward", forward)


def test_out_of_memory_with_one_row_is_a_clear_error(tiny, monkeypatch):
    from ftlab.errors import FtlabError

    model, tok = tiny
    gen = HFGenerator(model, tok, progress=False)
    _every_forward_raises(monkeypatch,
                          RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 999 bytes"))
    with pytest.raises(FtlabError, match="out of memory generating a single row; lower eval.max_new_tokens"):
        _run(gen, [gen.render([{"role": "user", "content": "Hi"}])] * 3, max_new_tokens=4, batch_size=2)


def test_other_runtime_errors_are_not_taken_for_out_of_memory(tiny, monkeypatch):
    model, tok = tiny
    gen = HFGenerator(model, tok, progress=False)
    _every_forward_raises(monkeypatch, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _run(gen, [gen.render([{"role": "user", "content": "Hi"}])], max_new_tokens=4, batch_size=2)
