"""How a prompt reaches a model: through its chat template, or as plain text it continues.

`eval.prompt_format` (and `ftlab chat --raw / --no-raw`) chooses: `chat`, `plain`, or `auto`. For
generation `auto` is the chat template when the model learned one. A template that ftlab supplies
for a base model shipped without one (gemma-3-270m's GGUF) does not count until a fine-tune has
trained on it: asked "The capital of France is" inside invented turns, gemma-3-270m answers
"devenue", while the same text given plainly continues sensibly. A scoring mode may fix `auto`
instead (log-likelihood: plain text, see ftlab.eval.scoring.modes).
"""

from __future__ import annotations

from typing import Callable

from ftlab.errors import FtlabError
from ftlab.kinds.eval import AUTO, CHAT, PLAIN, PROMPT_FORMAT_NAMES
from ftlab.models.sources import BUILTIN_MODELS
from ftlab.registry import Registry

# One behaviour per name in ftlab.kinds.eval.PROMPT_FORMAT_NAMES (the names the config accepts):
# (tokenizer, source, option) -> `chat` or `plain` for this model.
PROMPT_FORMATS: Registry[Callable[..., str]] = Registry("prompt format")


def supplied_templates() -> set[str]:
    """Chat templates ftlab attaches to built-in base models whose files carry none."""

    return {b.chat_template for _, b in BUILTIN_MODELS.items() if b.chat_template}


def has_learned_template(tokenizer, source=None) -> bool:
    """The tokenizer has a chat template the model's weights were trained with: its own, or an
    ftlab-supplied one that a fine-tune (training metadata naming a dataset) trained on."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return False
    if not isinstance(template, str) or template not in supplied_templates():
        return True
    return bool((getattr(source, "metadata", None) or {}).get("dataset"))


@PROMPT_FORMATS.register(AUTO)
def _auto(tokenizer, source, option: str) -> str:
    return CHAT if has_learned_template(tokenizer, source) else PLAIN


@PROMPT_FORMATS.register(CHAT)
def _chat(tokenizer, source, option: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise FtlabError(f"{option} asks for the chat template, but the model's tokenizer has none; "
                         "give the prompt as plain text instead")
    return CHAT


@PROMPT_FORMATS.register(PLAIN)
def _plain(tokenizer, source, option: str) -> str:
    return PLAIN


def resolve_prompt_format(requested: str, tokenizer, source=None, option: str = "eval.prompt_format",
                          auto: str | None = None) -> str:
    """`chat` or `plain` for this model; `option` names the setting in error messages; `auto`, when
    given, is what `auto` means (a scoring mode's fixed choice)."""
    if requested == AUTO and auto is not None:
        requested = auto
    # The exact spelling, as the config checks it (the registry's lookup ignores case).
    if requested not in PROMPT_FORMAT_NAMES:
        raise FtlabError(f"{option}={requested!r} is unknown; valid: {', '.join(PROMPT_FORMAT_NAMES)}")
    return PROMPT_FORMATS.get(requested)(tokenizer, source, option)


def render_messages(tokenizer, messages: list[dict], chat: bool, enable_thinking: bool = False) -> str:
    """One prompt's text: the chat template's rendering, or the messages as plain text."""
    from ftlab.data.prompts import render_plain, render_prompt  # lazy: ftlab.data.prompts imports numpy

    if not chat:
        return render_plain(messages)
    return render_prompt(tokenizer, messages, enable_thinking=enable_thinking)


def encode_prompts(tokenizer, prompts, chat: bool) -> list[list[int]]:
    """Token ids of rendered prompts: `prompt_prefix`, then the text's own tokens."""
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    prefix = prompt_prefix(tokenizer, chat)
    return [prefix + row for row in ids] if prefix else ids


def prompt_prefix(tokenizer, chat: bool) -> list[int]:
    """The ids a rendered prompt starts with before its text's tokens. Chat-rendered prompts already
    carry the template's special tokens (BOS included where the template wants it); adding them
    again would change the model's input. Plain prompts start with BOS where the tokenizer's own
    encoding does."""
    return [] if chat else bos_ids(tokenizer)


def bos_ids(tokenizer) -> list[int]:
    """[BOS] when the tokenizer's own encoding starts every text with it (Gemma, Llama), else [].
    Plain prompts get it as the model saw it in pretraining; chat templates write it themselves."""
    cached = getattr(tokenizer, "_ftlab_bos_ids", None)
    if cached is not None:
        return cached
    bos = tokenizer.bos_token_id
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    out = [bos] if bos is not None and ids and ids[0] == bos else []
    try:
        tokenizer._ftlab_bos_ids = out
    except AttributeError:  # some tokenizers forbid new attributes; recomputing is only slower
        pass
    return out


def end_of_turn_ids(tokenizer) -> list[int]:
    """The special token the chat template writes right after an assistant message (`<|im_end|>`,
    Gemma's `<end_of_turn>`), or [] when it writes none. Generation in chat format stops there:
    models whose EOS is another token (Gemma: `<eos>`) otherwise write the next turns too."""
    cached = getattr(tokenizer, "_ftlab_end_of_turn", None)
    if cached is not None:
        return cached
    marker = "\x00ftlab-answer\x00"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
                                             tokenize=False)
    except Exception:  # noqa: BLE001 - templates that reject this exchange: no extra stop token
        text = ""
    tail = text.split(marker, 1)[1] if marker in text else ""
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    special = {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(tok, "special", False)}
    out = [ids[0]] if ids and ids[0] in special else []
    try:
        tokenizer._ftlab_end_of_turn = out
    except AttributeError:  # some tokenizers forbid new attributes; recomputing is only slower
        pass
    return out
