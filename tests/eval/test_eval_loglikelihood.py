"""Log-likelihood scoring (`arc:ll`, `boolq:ll`), few-shot prompts and plain-text prompts for base
models, on tiny in-process models. Agreement with lm-evaluation-harness itself on a real model is
tests/eval/test_lm_eval_agreement.py."""

import json

import pytest
import torch

from ftlab.cli import main
from ftlab.eval.records.documents import load_metrics_document
from ftlab.eval.scoring.choice_logprobs import ChoiceRequest, ChoiceScorer
from ftlab.eval.scoring.choice_formats import ChoiceItem, split_options
from ftlab.eval.scoring.choice_prompts import build_item, encode, render
from ftlab.eval.evaluator import metrics_paths
from ftlab.eval.scoring.loglikelihood import metrics_block, predictions
from ftlab.io import read_jsonl


# ---------------------------------------------------------------------------------------------
# What is asked


@pytest.mark.parametrize("text, expected", [
    ("Which is a gas? A. ice B. steam C. water D. rock", ("Which is a gas?", "ABCD", ["ice", "steam", "water", "rock"])),
    ("Which is a gas?\nA. ice\nB. steam\nC. water", ("Which is a gas?", "ABC", ["ice", "steam", "water"])),
    # ARC rows labelled 1-4 become A-D, as their golds do (ftlab.data.tasks.arc_label)
    ("Nutrient source? 1. sunlight 2. oxygen 3. carbon dioxide 4. dead organisms",
     ("Nutrient source?", "ABCD", ["sunlight", "oxygen", "carbon dioxide", "dead organisms"])),
    # a label inside an option's text ("Vitamin D.") is not taken for the next option
    ("Which one? A. Vitamin D. B. iron C. zinc D. salt E. air",
     ("Which one?", "ABCDE", ["Vitamin D.", "iron", "zinc", "salt", "air"])),
    ("What is 1 + 1? A. 2 B. 3", ("What is 1 + 1?", "AB", ["2", "3"])),
])
def test_split_options(text, expected):
    stem, labels, options = split_options(text)
    assert (stem, "".join(labels), options) == expected


@pytest.mark.parametrize("text", ["No options here", "Pick one. A. only one", "A. no stem B. here",
                                  "Skipped label? A. x C. y"])
def test_split_options_rejects_text_without_an_option_list(text):
    assert split_options(text) is None


def test_every_shared_arc_row_parses_into_its_options(shared_datasets):
    from ftlab.data.loading import load_examples
    from ftlab.data.tasks import get_task

    task = get_task("arc")
    for split in ("test", "train"):
        for ex in load_examples("arc", split, source_dir=shared_datasets):
            item = build_item(task, ex)
            assert 3 <= len(item.options) <= 5 and item.labels[item.gold] == ex.answer


def test_rendering_follows_lm_eval_plain_and_chat():
    item = ChoiceItem("Question: Q?\nAnswer:", ["red", "blue"], ["A", "B"], 1)
    shot = ChoiceItem("Question: S?\nAnswer:", ["x", "y"], ["A", "B"], 0)
    context, conts = render(item, [shot], chat=False)
    assert context == "Question: S?\nAnswer: x\n\nQuestion: Q?\nAnswer:" and conts == [" red", " blue"]

    class Tok:
        chat_template = "t"

        def apply_chat_template(self, messages, **kw):
            assert kw["add_generation_prompt"] is True
            return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>\n"

    context, conts = render(item, [shot], chat=True, tokenizer=Tok(), system="Be brief.")
    assert context == ("<system>Be brief.</system><user>Question: S?\nAnswer:</user><assistant>x</assistant>"
                       "<user>Question: Q?\nAnswer:</user><assistant>\n")
    assert conts == ["red", "blue"]  # the assistant turn starts with the option itself


def test_encode_moves_trailing_whitespace_to_the_continuation(tiny):
    _, tok = tiny

    def enc(texts):
        return tok(list(texts), add_special_tokens=False)["input_ids"]

    ctx, options = encode("Answer:\n", ["Paris", "Rome"], enc)
    assert ctx == enc(["Answer:"])[0]
    for opt, text in zip(options, ["Paris", "Rome"]):
        assert tok.decode(opt) == "\n" + text
        assert ctx + opt == enc(["Answer:\n" + text])[0]


def test_predictions_acc_and_acc_norm():
    # lm-eval's acc_norm divides by the option's length in characters
    assert predictions([-6.0, -8.0], [2, 8]) == (0, 1)
    assert predictions([-3.0, -3.0, -9.0], [1, 1, 1]) == (0, 0)  # ties: the first option


# ---------------------------------------------------------------------------------------------
# The engine: cached contexts and whole sequences agree with a plain forward per option


def _naive_logprobs(model, req: ChoiceRequest) -> list[float]:
    out = []
    for opt in req.options:
        with torch.inference_mode():
            lp = torch.log_softmax(model(torch.tensor([req.context + opt])).logits[0].double(), -1)
        out.append(sum(float(lp[len(req.context) - 1 + t, tok]) for t, tok in enumerate(opt)))
    return out


def _requests(n: int = 9, context=(9, 12)) -> list[ChoiceRequest]:
    g = torch.Generator().manual_seed(1)

    def rand(lo, hi):
        return torch.randint(20, 500, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    shared = list(range(5, 16))  # a prefix every context shares (computed once)
    return [ChoiceRequest(shared + rand(*context), [rand(1, 5) for _ in range(4)]) for _ in range(n)]


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("max_questions", [None, 2])
def test_choice_logprobs_equal_a_forward_per_option(tiny, cached, max_questions):
    model, tok = tiny
    reqs = _requests()
    scorer = ChoiceScorer(model, tok.pad_token_id)
    assert scorer.cached  # Llama: a plain DynamicCache
    scorer.cached = cached
    got = {}
    for group in scorer.score(reqs, max_questions=max_questions):
        got.update(dict(group))
    assert scorer.questions_per_forward == (max_questions or len(reqs))
    for i, req in enumerate(reqs):
        assert got[i] == pytest.approx(_naive_logprobs(model, req), abs=1e-4)


def test_contexts_of_very_different_lengths_do_not_share_a_forward(tiny):
    model, tok = tiny
    reqs = _requests(8, context=(1, 12))  # own context tokens 1..11 after the shared prefix
    scorer = ChoiceScorer(model, tok.pad_token_id)
    got = {}
    for group in scorer.score(reqs):
        own = [len(reqs[i].context) - 11 for i, _ in group]
        assert min(own) >= 0.75 * max(own)  # little padding in each prefill
        got.update(dict(group))
    assert sorted(got) == list(range(8))
    for i, req in enumerate(reqs):
        assert got[i] == pytest.approx(_naive_logprobs(model, req), abs=1e-4)


def test_choice_logprobs_token_budget_and_out_of_memory(tiny, monkeypatch, caplog):
    from ftlab.errors import FtlabError
    from ftlab.eval.backends import sizing

    model, tok = tiny
    reqs = _requests(6)
    reference = {}
    for group in ChoiceScorer(model, tok.pad_token_id).score(reqs):
        reference.update(dict(group))
    monkeypatch.setattr(sizing, "PREFILL_TOKEN_BUDGET", 30)  # about one question per forward
    scorer = ChoiceScorer(model, tok.pad_token_id)
    budgeted = {}
    for group in scorer.score(reqs):
        budgeted.update(dict(group))
    assert scorer.questions_per_forward < len(reqs)
    assert all(budgeted[i] == pytest.approx(reference[i], abs=1e-4) for i in range(len(reqs)))

    monkeypatch.setattr(sizing, "PREFILL_TOKEN_BUDGET", 8192)
    real = ChoiceScorer._score_cached

    def small_memory(self, group, prefix):
        if len(group) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, group, prefix)

    monkeypatch.setattr(ChoiceScorer, "_score_cached", small_memory)
    scorer = ChoiceScorer(model, tok.pad_token_id)
    with caplog.at_level("WARNING", logger="ftlab.eval.scoring.choice_logprobs"):
        backed_off = {}
        for group in scorer.score(reqs):
            backed_off.update(dict(group))
    assert "out of memory scoring 6 questions at once; retrying with at most 3" in caplog.text
    assert scorer.questions_per_forward == 1  # 3 did not fit either
    assert all(backed_off[i] == pytest.approx(reference[i], abs=1e-4) for i in range(len(reqs)))

    def no_memory(self, group, prefix):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 999 bytes")

    monkeypatch.setattr(ChoiceScorer, "_score_cached", no_memory)
    with pytest.raises(FtlabError, match="out of memory scoring the options of one question"):
        list(ChoiceScorer(model, tok.pad_token_id).score(reqs))


# ---------------------------------------------------------------------------------------------
# The runner through the CLI


def _evaluate(*args) -> int:
    return main(["evaluate", "scratch:tiny", "--threads", "1", "eval.bootstrap_samples=50", *args])


def test_both_modes_in_one_evaluation_and_resume(workspace, shared_datasets, capsys):
    src = f"eval.source_dir={shared_datasets}"
    assert _evaluate("--datasets", "arc", "arc:ll", "boolq:ll", "--limit", "8", "eval.max_new_tokens=4", src) == 0
    assert "arc:ll: n=8" in capsys.readouterr().out
    json_path, samples_path = metrics_paths(workspace, "scratch-tiny")
    doc = load_metrics_document(json_path)
    assert set(doc["datasets"]) == {"arc", "arc:ll", "boolq:ll"}
    assert doc["datasets"]["arc"].get("scoring") != "loglikelihood"  # the generative result is its own
    lines = read_jsonl(samples_path)
    for key, labels in (("arc:ll", None), ("boolq:ll", ["no", "yes"])):
        block = doc["datasets"][key]
        assert block["n"] == 8 and block["scoring"] == "loglikelihood" and block["num_fewshot"] == 0
        # plain text for every model (the same question for a base model and its fine-tune)
        assert block["prompt_format"] == "plain" and block["kv_cache_reuse"] is True
        mine = [ln for ln in lines if ln["dataset"] == key]
        assert sorted(ln["index"] for ln in mine) == list(range(8))
        for ln in mine:
            assert ln["response"] is None and len(ln["choice_logprobs"]) == len(ln["choice_lengths"])
            assert all(lp < 0 for lp in ln["choice_logprobs"])
            if labels:
                assert ln["choice_labels"] == labels
            pred, pred_norm = predictions(ln["choice_logprobs"], ln["choice_lengths"])
            assert ln["pred"] == ln["choice_labels"][pred] and ln["pred_norm"] == ln["choice_labels"][pred_norm]
            assert ln["correct"] == (ln["pred"] == ln["gold"]) and ln["correct_norm"] == (ln["pred_norm"] == ln["gold"])
        m = block["metrics"]
        assert m["accuracy"] == m["acc"] == sum(ln["correct"] for ln in mine) / 8
        assert m["acc_norm"] == sum(ln["correct_norm"] for ln in mine) / 8
        lo, hi = block["intervals"]["acc_norm"]
        assert lo <= m["acc_norm"] <= hi
        recomputed = metrics_block(_task(key), mine, bootstrap_samples=50, seed=0)
        assert recomputed["metrics"] == m
    # A rerun with the same settings keeps every result as it is and scores nothing.
    assert _evaluate("--datasets", "arc", "arc:ll", "boolq:ll", "--limit", "8", "eval.max_new_tokens=4", src) == 0
    again = load_metrics_document(json_path)
    assert again["datasets"] == doc["datasets"]
    assert len(read_jsonl(samples_path)) == len(lines)
    # A higher limit scores only the new rows: the 8 stored lines are reused.
    assert _evaluate("--datasets", "arc:ll", "--limit", "10", src) == 0
    more = load_metrics_document(json_path)["datasets"]["arc:ll"]
    assert more["n"] == 10 and more["scored_this_run"] == 2
    assert len(read_jsonl(samples_path)) == len(lines) + 2


def _task(key):
    from ftlab.data.tasks import get_task

    return get_task(key.split(":")[0])


def test_scoring_setting_makes_plain_entries_log_likelihood(workspace, shared_datasets):
    assert _evaluate("--datasets", "boolq", "--limit", "3", "eval.scoring=loglikelihood",
                     f"eval.source_dir={shared_datasets}") == 0
    doc = load_metrics_document(metrics_paths(workspace, "scratch-tiny")[0])
    assert list(doc["datasets"]) == ["boolq:ll"]  # the key always names the mode


@pytest.mark.parametrize("args, message", [
    (["--datasets", "synthetic-arith:ll"], "'synthetic-arith:ll' has numeric answers; loglikelihood scoring needs choice or boolean"),
    (["--datasets", "arc", "synthetic-arith", "eval.scoring=loglikelihood"], "'synthetic-arith' has numeric answers"),
    (["--datasets", "arc:ll", "eval.scoring=loglikelihod"], "eval.scoring='loglikelihod' is unknown (did you mean 'loglikelihood'?)"),
    (["--datasets", "arc:ll", "eval.num_fewshot=-1"], "eval.num_fewshot=-1 must be >= 0"),
    (["--datasets", "arc:ll", "eval.prompt_format=raw"], "eval.prompt_format='raw' is unknown"),
    (["--datasets", "arc:ll", "eval.backend=canned", "eval.backend_options={response: x}"],
     "arc:ll needs model weights; the 'canned' backend has none"),
])
def test_bad_log_likelihood_settings_are_one_line_errors(workspace, shared_datasets, capsys, args, message):
    assert _evaluate("--limit", "2", f"eval.source_dir={shared_datasets}", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_custom_choice_file_needs_its_options_written_out(workspace, tmp_path, capsys):
    rows = [{"question": "Sky colour? A. blue B. red", "answer": "A"}, {"question": "Odd one out?", "answer": "B"}]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert _evaluate("--datasets", f"{path}:ll") == 2
    assert "mine row 1: no options found in the question" in capsys.readouterr().err
    path.write_text(json.dumps(rows[0]) + "\n")
    assert _evaluate("--datasets", f"{path}:ll") == 0
    doc = load_metrics_document(metrics_paths(workspace, "scratch-tiny")[0])
    assert doc["datasets"][f"{path}:ll"]["metrics"]["per_class"].keys() >= {"A", "B"}


# ---------------------------------------------------------------------------------------------
# Few-shot


def test_fewshot_draws_from_train_deterministically_and_never_evaluated_rows(shared_datasets, tmp_path):
    from ftlab.data.loading import load_examples
    from ftlab.data.tasks import get_task
    from ftlab.errors import FtlabError
    from ftlab.eval.fewshot import draw_shots

    task = get_task("arc")
    test = load_examples("arc", "test", limit=20, source_dir=shared_datasets)
    a = draw_shots("arc", task, test, 3, seed=0, source_dir=shared_datasets)
    b = draw_shots("arc", task, test, 3, seed=0, source_dir=shared_datasets)
    c = draw_shots("arc", task, test, 3, seed=1, source_dir=shared_datasets)
    train = {ex.question for ex in load_examples("arc", "train", source_dir=shared_datasets)}
    assert [s.question for s in a] == [s.question for s in b] != [s.question for s in c]
    assert all(s.question in train for s in a) and not {s.question for s in a} & {ex.question for ex in test}
    assert draw_shots("arc", task, test, 0, seed=0, source_dir=shared_datasets) == []

    # A custom file has no train split: shots come from its rows that are not evaluated.
    rows = [{"question": f"Q{i}? A. x B. y", "answer": "AB"[i % 2]} for i in range(6)]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    evaluated = load_examples(str(path), "test", limit=4)
    shots = draw_shots(str(path), task, evaluated, 2, seed=0)
    assert sorted(s.index for s in shots) == [4, 5]
    with pytest.raises(FtlabError, match=r"eval.num_fewshot=3, but the rows of .*mine.jsonl that are not evaluated .* "
                                         r"has only 2 usable example\(s\); lower eval.num_fewshot"):
        draw_shots(str(path), task, evaluated, 3, seed=0)


def test_fewshot_prompts_in_both_modes(workspace, shared_datasets):
    from ftlab.data.loading import load_examples

    assert _evaluate("--datasets", "arc", "arc:ll", "--limit", "2", "eval.num_fewshot=2", "eval.max_new_tokens=2",
                     f"eval.source_dir={shared_datasets}") == 0
    doc = load_metrics_document(metrics_paths(workspace, "scratch-tiny")[0])
    assert doc["datasets"]["arc:ll"]["num_fewshot"] == 2
    # The shots are solved exchanges before the question, in the chat template's turns.
    from ftlab.eval.fewshot import draw_shots
    from ftlab.data.tasks import get_task
    from ftlab.data.prompts import build_messages

    task = get_task("arc")
    test = load_examples("arc", "test", limit=2, source_dir=shared_datasets)
    shots = draw_shots("arc", task, test, 2, seed=0, source_dir=shared_datasets)
    msgs = build_messages(task, test[0], None, shots)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"] == f"The answer is \\boxed{{{shots[0].answer}}}."
    lines = [ln for ln in read_jsonl(metrics_paths(workspace, "scratch-tiny")[1]) if ln["dataset"] == "arc"]
    assert len(lines) == 2


# ---------------------------------------------------------------------------------------------
# Plain prompts for base models


class _Tok:
    def __init__(self, template):
        self.chat_template = template


def test_a_supplied_template_is_learned_only_after_fine_tuning():
    from ftlab.errors import FtlabError
    from ftlab.eval.prompt_format import has_learned_template, resolve_prompt_format
    from ftlab.models.builtins import GEMMA_CHAT_TEMPLATE
    from ftlab.models.sources import ModelSource

    base = ModelSource("gemma-3-270m", "builtin", "gemma-3-270m")
    tuned = ModelSource("Models/x", "local", "gemma-3-270m", metadata={"dataset": {"name": "arc"}})
    snapshot = ModelSource("Models/y", "local", "gemma-3-270m", metadata={"dataset": None})
    assert not has_learned_template(_Tok(GEMMA_CHAT_TEMPLATE), base)
    assert not has_learned_template(_Tok(GEMMA_CHAT_TEMPLATE), snapshot)
    assert has_learned_template(_Tok(GEMMA_CHAT_TEMPLATE), tuned)
    assert has_learned_template(_Tok("{{ messages }}"), base)  # the model's own template
    assert not has_learned_template(_Tok(None), tuned)
    assert resolve_prompt_format("auto", _Tok(GEMMA_CHAT_TEMPLATE), base) == "plain"
    assert resolve_prompt_format("chat", _Tok(GEMMA_CHAT_TEMPLATE), base) == "chat"
    with pytest.raises(FtlabError, match="--no-raw asks for the chat template, but the model's tokenizer has none"):
        resolve_prompt_format("chat", _Tok(None), base, "--no-raw")


def test_plain_prompts_start_with_bos_where_the_tokenizer_puts_one(tiny):
    from ftlab.eval.backends.hf import HFGenerator
    from ftlab.eval.prompt_format import bos_ids

    model, tok = tiny
    assert bos_ids(tok) == []  # SmolLM2's tokenizer adds no BOS
    plain = HFGenerator(model, tok, progress=False, prompt_format="plain")
    assert plain.render([{"role": "user", "content": "Q"}]) == "User: Q\n\nAssistant:"
    assert plain.encode(["Hi there"]) == [tok("Hi there", add_special_tokens=False)["input_ids"]]
    saved = tok._ftlab_bos_ids if hasattr(tok, "_ftlab_bos_ids") else None
    tok._ftlab_bos_ids = [tok.bos_token_id]  # as for Gemma, whose tokenizer starts every text with <bos>
    try:
        assert plain.encode(["Hi there"])[0][0] == tok.bos_token_id
        chat = HFGenerator(model, tok, progress=False, prompt_format="chat")
        assert tok.bos_token_id not in chat.encode(["Hi there"])[0][:1]  # templates write their own
    finally:
        tok._ftlab_bos_ids = saved


def test_chat_raw_continues_the_prompt_verbatim(capsys):
    from ftlab.commands.chat import chat
    from ftlab.models.sources import load_model

    text, gen = chat("scratch:tiny", "The capital of France is", max_new_tokens=5, raw=True)
    model, tok, _ = load_model("scratch:tiny", dtype="fp32")
    enc = tok("The capital of France is", return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert text == tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert main(["chat", "scratch:tiny", "--prompt", "The capital of France is", "--raw", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == text + "\n"


def test_chat_format_stops_at_the_templates_end_of_turn(tiny):
    """Gemma's template ends a turn with <end_of_turn> while its EOS is <eos>: without stopping
    there a chat answer runs on into invented next turns (the answer shown several times)."""
    from ftlab.eval.backends.hf import HFGenerator
    from ftlab.eval.prompt_format import end_of_turn_ids

    model, tok = tiny
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_ids(tok) == [im_end]
    saved = tok.chat_template
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|endoftext|>\n{% endfor %}"
    tok._ftlab_end_of_turn = None
    try:
        end = tok.convert_tokens_to_ids("<|endoftext|>")
        assert end_of_turn_ids(tok) == [end]
        assert end in HFGenerator(model, tok, progress=False, prompt_format="chat").eos_ids()
        assert end not in HFGenerator(model, tok, progress=False, prompt_format="plain").eos_ids()
    finally:
        tok.chat_template = saved
        tok._ftlab_end_of_turn = None


@pytest.mark.slow
def test_gemma_base_continues_a_plain_prompt(capsys):
    """`ftlab chat gemma-3-270m --prompt "The capital of France is"`: a base model without a
    learned template continues the text (after its BOS), once."""
    from ftlab.models.sources import load_model

    prompt = "The capital of France is"
    assert main(["chat", "gemma-3-270m", "--prompt", prompt, "--max-new-tokens", "8", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    model, tok, _ = load_model("gemma-3-270m", dtype="fp32")
    enc = tok(prompt, return_tensors="pt")  # Gemma's tokenizer starts the text with <bos>
    assert enc["input_ids"][0, 0] == tok.bos_token_id
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    # Measured: " the capital of the country of France." (in the supplied turn template the same
    # model repeats "The capital of France is devenue" until the token cap).
    assert printed == expected + "\n" and "France" in expected and "devenue" not in expected
