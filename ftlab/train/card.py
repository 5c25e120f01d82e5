"""Model card (`README.md`) for a trained or snapshot model folder, generated from its metadata."""

from __future__ import annotations

import json

from ftlab.train.base_quant import BASE_QUANTS


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "n/a" if value is None else str(value)


def model_card(meta: dict) -> str:
    base = meta.get("base_model") or {}
    ds = meta.get("dataset")
    peft = meta.get("peft")
    quant = meta.get("quantization") or {}
    res = meta.get("results") or {}
    args = meta.get("training_args") or {}
    lines = [f"# {meta['run_name']}", ""]
    if ds is None:
        lines += [f"Untrained snapshot of `{base.get('ref')}` saved by ftlab as a baseline for evaluation.", ""]
    else:
        what = "Adapter" if meta.get("adapter_only") else "Merged model" if meta.get("merged") else "Model"
        lines += [
            f"{what} trained by ftlab with {meta.get('method')} on `{ds.get('name')}` "
            f"({ds.get('train_rows')} training rows, {ds.get('val_rows')} held out).", "",
        ]
    lines += ["| field | value |", "|---|---|",
              f"| base model | `{base.get('ref')}` ({base.get('source_kind')}) |",
              f"| method | {meta.get('method') or 'none'} |",
              f"| PEFT | {peft.get('method') if peft else 'none'} |",
              f"| quantization | {quant.get('method', 'NoQuant')} |",
              f"| adapter only | {meta.get('adapter_only')} |",
              f"| merged | {meta.get('merged')} |"]
    if peft:
        lines.append(f"| rank / alpha | {peft.get('r')} / {peft.get('alpha')} |")
        lines.append(f"| target modules | {', '.join(peft.get('target_modules') or [])} |")
        for key, label in (("init_lora_weights", "adapter initialisation"), ("saved_as", "adapter saved as")):
            if peft.get(key):
                lines.append(f"| {label} | {peft[key]} |")
    if res:
        tp = res.get("trainable_parameters") or {}
        lines += [
            f"| trainable parameters | {tp.get('trainable')} of {tp.get('total')} "
            f"({_fmt(100 * tp.get('share', 0), 3)}%) |",
            f"| steps | {res.get('global_step')} |",
            f"| final train loss | {_fmt(res.get('train_loss'))} |",
            f"| eval loss / perplexity | {_fmt(res.get('eval_loss'))} / {_fmt(res.get('eval_perplexity'))} |",
            f"| runtime | {_fmt(res.get('runtime_s'), 3)} s |",
            f"| tokens/s | {_fmt(res.get('tokens_per_s'), 4)} |",
            f"| peak RSS | {_fmt((res.get('peak_memory') or {}).get('peak_rss_mb'), 5)} MB |",
        ]
    if meta.get("merged") and quant.get("method") in BASE_QUANTS and BASE_QUANTS.get(quant["method"]).merged_note:
        lines += ["", BASE_QUANTS.get(quant["method"]).merged_note]
    lines += ["", "## Loading", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if meta.get("adapter_only"):
        lines += ["from peft import PeftModel",
                  f"base = AutoModelForCausalLM.from_pretrained({base.get('path') or base.get('ref')!r})",
                  "model = PeftModel.from_pretrained(base, 'THIS_FOLDER')"]
    else:
        lines += ["model = AutoModelForCausalLM.from_pretrained('THIS_FOLDER')"]
    lines += ["tokenizer = AutoTokenizer.from_pretrained('THIS_FOLDER')  # carries the chat template", "```", ""]
    if args:
        lines += ["## Training settings", "", "```json", json.dumps(args, indent=2, default=str), "```", ""]
    if meta.get("oom_backoff", {}).get("attempts", [None])[1:]:
        lines += ["## Out-of-memory back-off", ""]
        for a in meta["oom_backoff"]["attempts"]:
            lines.append(f"- {a.get('status')}: {json.dumps(a.get('settings'))} {a.get('change') or ''}")
        lines.append("")
    return "\n".join(lines)
