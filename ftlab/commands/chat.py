"""`ftlab chat MODEL --prompt "..."`: one answer from a model (greedy, inference mode).

Models with a learned chat template get the prompt as a user turn; base models without one
continue the prompt as plain text (`--raw` / `--no-raw` force either way; see
ftlab.eval.prompt_format)."""

from __future__ import annotations

import argparse

from ftlab.commands.evaluate import resolve_threads
from ftlab.env import set_threads
from ftlab.errors import FtlabError
from ftlab.models.sources import load_model
from ftlab.paths import Workspace


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model folder, run name, hub id, built-in name or scratch:<preset>")
    parser.add_argument("--prompt", required=True, help="the user message")
    parser.add_argument("--system", default=None, help="system message (default: the chat template's)")
    parser.add_argument("--raw", action=argparse.BooleanOptionalAction, default=None,
                        help="--raw: continue the prompt as plain text; --no-raw: wrap it in the chat template "
                             "(default: the template when the model learned one, plain text for base models)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--dtype", default="auto", help="auto, bf16, fp16 or fp32")
    parser.add_argument("--enable-thinking", action="store_true", help="let templates with a thinking mode think")
    parser.add_argument("--stop-at-box", action="store_true", help="stop once a \\boxed{...} answer closes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def chat(model_ref: str, prompt: str, *, system: str | None = None, max_new_tokens: int = 256, dtype: str = "auto",
         enable_thinking: bool = False, stop_at_box: bool = False, raw: bool | None = None, workspace=None):
    """(response text, Generation) for one prompt; `raw` None = plain text for base models."""
    from ftlab.eval.backends.hf import HFGenerator, default_device_map  # lazy: ftlab.eval.backends.hf imports transformers

    if not prompt or not prompt.strip():
        raise FtlabError("--prompt is empty; give the question to ask")
    if max_new_tokens <= 0:
        raise FtlabError(f"--max-new-tokens={max_new_tokens} must be positive")
    model, tokenizer, source = load_model(model_ref, workspace=workspace, dtype=dtype, device_map=default_device_map())
    fmt = {True: "plain", False: "chat", None: "auto"}[raw]
    gen = HFGenerator(model, tokenizer, progress=False, prompt_format=fmt, source=source, format_option="--no-raw")
    if gen.chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        rendered = gen.render(messages, enable_thinking=enable_thinking)
    else:  # plain completion: the model continues the text exactly as given
        rendered = (f"{system}\n\n" if system else "") + prompt
    (batch,) = list(gen.generate([rendered], max_new_tokens=max_new_tokens, batch_size=1, stop_at_box=stop_at_box))
    return batch[0][1].text, batch[0][1]


def run(args: argparse.Namespace) -> int:
    set_threads(resolve_threads(args.threads))
    text, _ = chat(args.model, args.prompt, system=args.system, max_new_tokens=args.max_new_tokens, dtype=args.dtype,
                   enable_thinking=args.enable_thinking, stop_at_box=args.stop_at_box, raw=args.raw,
                   workspace=Workspace.at(getattr(args, "workdir", None)))
    print(text)
    return 0
