"""The `llama.cpp` generation backend: a GGUF model answered by llama.cpp itself, the runtime users
deploy GGUF files to (llama.cpp, Ollama, LM Studio).

Why it exists: the `hf` backend reads a GGUF through transformers, which de-quantizes the weights to
fp32 and computes with them exactly. llama.cpp computes with the stored blocks and rounds activations
for its kernels (8-bit blocks for quantized weights, f16/bf16 for f16/bf16) and keeps the KV cache in
f16. The two read the same weights (perplexity within 0.5%), but greedy answers part at near-ties:
on SmolLM2-135M-Instruct exported as q4_k_m, 2 of 3 chat answers differ after 1-10 tokens
(tests/quant/test_gguf_llama_cpp.py). A researcher who reports what a GGUF scores as deployed
evaluates it here; `hf` stays the exact reading of the same weights.

How, recipe-style:
- resolve: the model reference must be a GGUF (a .gguf file, or an `ftlab export --format gguf`
  folder); its tokenizer is read by transformers, as the `hf` backend reads it, to render the chat
  template and decode answers;
- load: `llama-server` (found as every llama.cpp tool is, ftlab.quant.llama_cpp.find_tool) starts on
  127.0.0.1 at a free port, one slot (`--parallel 1`), a context as long as the longest prompt plus
  the answer; its log goes to a temporary file, shown only when it fails;
- run: each prompt is rendered by ftlab exactly as for `hf` and tokenized by llama.cpp, as a
  deployment's server tokenizes text (the template's special tokens parsed; a BOS only where ftlab's
  own encoding puts one, so a template's BOS is not doubled); decoded greedily (top-k 1 at
  temperature 0, no penalties, no prompt cache) until llama.cpp's end of generation or
  `max_new_tokens`; the answer is then cut where ftlab's own stopping rules
  (ftlab.eval.backends.stopping: the closed box, stop strings) end it, as `hf` would have stopped
  there. Greedy tokens do not depend on what follows them, so the cut answer is the one an early
  stop gives; the price is decoding past a closed box (not streamed: llama-server leaves out of its
  stream the id of a token that ends inside a UTF-8 character);
- the text is those token ids decoded by the same tokenizer with special tokens skipped, as `hf`.

One prompt at a time, in one slot, is what llama-simple computes (llama.cpp's reference example):
batched decoding takes other kernels, whose sums may round differently. The agreement with
llama-simple, every GGUF type ftlab offers, is a test (tests/quant/test_gguf_llama_cpp.py).
Why llama.cpp tokenizes: transformers' reading of a GGUF's tokenizer can split text otherwise than
the model's own tokenizer. SmolLM2's isolates digits before its byte-level split, and transformers'
conversion drops that step: "students.  25%" is ".", " ", " ", "2" there and ".", "  ", "2" in
llama.cpp (and in SmolLM2's own pre-tokenizer); one of five GSM8K 5-shot prompts holds such a double
space, and its answer changed with it. lm-eval's own GGUF client sends text, so llama.cpp tokenizes
there too (the agreement test with it is in tests/quant/test_gguf_llama_cpp.py).

Generation tasks run here, ftlab's own and lm-eval's `generate_until`; log-likelihood and perplexity
requests need the model's log-probabilities in Python and are refused with a one-line error
(ftlab.eval.runners.RunContext.model_generator).
"""

from __future__ import annotations

import atexit
import ctypes
import http.client
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from ftlab.errors import FtlabError
from ftlab.eval.backends.api import Generation
from ftlab.eval.prompt_format import encode_prompts, prompt_prefix, render_messages, resolve_prompt_format
from ftlab.models.sources import load_tokenizer, resolve_model
from ftlab.quant.llama_cpp import find_tool, how_to_get

log = logging.getLogger(__name__)

SERVER = "llama-server"
START_TIMEOUT_S = 120.0  # loading a 1-3 GB GGUF from a cold disk; a 135M model is ready in about 1 s
READ_TIMEOUT_S = 600.0  # one whole answer: the prompt's prefill and up to max_new_tokens
CONTEXT_STEP = 256  # the server's context is rounded up to this, so nearby lengths reuse one server
# Greedy decoding and nothing else: the server's defaults include top-p, min-p and a temperature.
GREEDY = {"temperature": 0.0, "top_k": 1, "samplers": ["top_k", "temperature"], "repeat_penalty": 1.0,
          "presence_penalty": 0.0, "frequency_penalty": 0.0, "dry_multiplier": 0.0, "n_probs": 0}
STOP_TYPES = {"eos": "eos", "limit": "length"}  # llama.cpp's stop_type -> ftlab's stop_reason
LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")  # llama-server's line once it has bound


def _die_with_parent() -> None:
    """In the server's process, before exec: on Linux, SIGTERM when the evaluating process dies, even
    by kill -9 (a study job's worker), so no server outlives its evaluation."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: atexit and the finalizer still stop it
        pass


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LlamaServer:
    """A running llama-server for one GGUF file; `close()` (or the generator going away, or the
    interpreter exiting) stops it."""

    def __init__(self, exe: Path, gguf: Path, n_ctx: int, threads: int):
        self.n_ctx = n_ctx
        self.port: int | None = None  # the server binds a free port itself (--port 0) and logs it
        self._logdir = tempfile.TemporaryDirectory(prefix="ftlab-llama-server-")
        self.log_path = Path(self._logdir.name) / "server.log"
        args = [str(exe), "-m", str(gguf), "--host", "127.0.0.1", "--port", "0", "-c", str(n_ctx),
                "--parallel", "1", "-t", str(threads), "-tb", str(threads), "--no-webui", "--no-warmup"]
        with open(self.log_path, "wb") as fh:
            self.proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        self._finalizer = weakref.finalize(self, _stop_process, self.proc)
        atexit.register(self._finalizer)
        self._wait_ready(gguf)

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(line.strip() for line in text[-lines:]) or "no log"

    def _wait_ready(self, gguf: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.close()
                raise FtlabError(f"llama-server could not load {gguf} (exit {self.proc.returncode}): {tail}")
            if self.port is None:
                found = LISTENING.search(self.log_path.read_bytes())
                if found is None:
                    time.sleep(0.05)
                    continue
                self.port = int(found.group(1))
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/health")
                ok = conn.getresponse().status == 200
                conn.close()
                if ok:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        tail = self.log_tail()
        self.close()
        raise FtlabError(f"llama-server did not load {gguf} within {START_TIMEOUT_S:.0f} s: {tail}")

    def _post(self, path: str, body: dict, what: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=READ_TIMEOUT_S)
        try:
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as exc:
            raise FtlabError(f"llama-server stopped answering ({exc}): {self.log_tail()}") from None
        finally:
            conn.close()
        if resp.status != 200:
            raise FtlabError(f"llama-server refused {what} (HTTP {resp.status}): {raw[:300].decode('utf-8', 'replace')}")
        try:
            return json.loads(raw)
        except ValueError:
            raise FtlabError(f"llama-server answered {what} with no JSON: {raw[:300].decode('utf-8', 'replace')}") from None

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's tokens for a rendered prompt: special tokens (the chat template's) parsed, no
        BOS added (ftlab's prompt rules decide that)."""
        out = self._post("/tokenize", {"content": text, "add_special": False, "parse_special": True}, "a prompt's text")
        return [int(t) for t in out.get("tokens") or []]

    def complete(self, tokens: list[int], n_predict: int) -> tuple[list[int], str]:
        """(the generated token ids, llama.cpp's stop_type) for a prompt given as token ids.

        Not streamed: llama-server streams a token only once its text is whole UTF-8, and drops the
        id of a token that ends inside a character (a byte-level BPE piece) from the stream, while
        the finished response lists every id."""
        body = {"prompt": tokens, "n_predict": n_predict, "stream": False, "return_tokens": True,
                "cache_prompt": False, **GREEDY}
        answer = self._post("/completion", body, f"a prompt of {len(tokens)} tokens")
        return [int(t) for t in answer.get("tokens") or []], str(answer.get("stop_type", "none"))

    def close(self) -> None:
        self._finalizer()
        atexit.unregister(self._finalizer)
        self._logdir.cleanup()


class LlamaCppGenerator:
    """Greedy answers from llama.cpp for a GGUF: prompts rendered as the `hf` backend renders them,
    tokenized and answered by llama.cpp, cut by ftlab's stopping rules."""

    name = "llama.cpp"
    model = None  # no weights in Python: log-likelihood and perplexity tasks need eval.backend=hf

    def __init__(self, gguf: Path, tokenizer, *, threads: int, prompt_format: str = "auto", source=None,
                 server_exe: Path | None = None, progress: bool = True):
        self.gguf = gguf
        self.tokenizer = tokenizer
        self.threads = threads
        self.progress = progress
        self.prompt_format = resolve_prompt_format(prompt_format, tokenizer, source)
        self.batch_size_used: int | None = None
        self._exe = server_exe or find_tool(SERVER)
        if self._exe is None:
            raise FtlabError(f"eval.backend=llama.cpp needs llama.cpp's {SERVER}, which was not found; {how_to_get()}")
        self._server: LlamaServer | None = None

    @property
    def chat(self) -> bool:
        return self.prompt_format == "chat"

    def render(self, messages: list[dict], enable_thinking: bool = False) -> str:
        return render_messages(self.tokenizer, messages, self.chat, enable_thinking)

    def server(self, n_ctx: int) -> LlamaServer:
        """The running server, restarted with a longer context when `n_ctx` exceeds its own."""
        if self._server is not None and self._server.n_ctx < n_ctx:
            self.close()
        if self._server is None:
            size = -(-n_ctx // CONTEXT_STEP) * CONTEXT_STEP
            log.info("starting llama-server on %s (context %d, %d threads)", self.gguf, size, self.threads)
            self._server = LlamaServer(self._exe, self.gguf, size, self.threads)
        return self._server

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int | None,
                 stop_at_box: bool = True, stop: Sequence[str] = ()) -> Iterator[list[tuple[int, Generation]]]:
        from ftlab.eval.backends.stopping import closing_token_ids, finish_reason  # lazy: imports transformers

        if batch_size not in (None, 1):
            raise FtlabError(f"eval.batch_size={batch_size}: the llama.cpp backend answers one prompt at a time "
                             "(one server slot, as llama-simple computes); leave eval.batch_size unset or 1")
        if not prompts:
            return
        self.batch_size_used = 1
        # llama.cpp tokenizes, as a deployment's server does (transformers' reading of a GGUF's
        # tokenizer can split otherwise: SmolLM2's "  25" is 4 tokens there, 3 in llama.cpp); the
        # server is first sized from ftlab's own count, then grown if llama.cpp's is longer.
        server = self.server(max(len(e) for e in encode_prompts(self.tokenizer, prompts, self.chat)) + max_new_tokens)
        prefix = prompt_prefix(self.tokenizer, self.chat)  # a BOS only where ftlab's encoding puts one
        encoded = [prefix + server.tokenize(p) for p in prompts]
        server = self.server(max(len(e) for e in encoded) + max_new_tokens)
        close_ids = set(closing_token_ids(self.tokenizer))
        bar = tqdm(total=len(prompts), desc="generate", unit="sample", disable=not self.progress, leave=False)
        try:
            for i, ids in enumerate(encoded):
                t0 = time.perf_counter()
                tokens, stop_type = server.complete(ids, max_new_tokens)
                # llama.cpp ended the answer at its end of generation (the last id) or at n_predict;
                # ftlab's rules may end it sooner: the first prefix they call finished is the answer.
                eos = {tokens[-1]} if tokens and stop_type == "eos" else set()
                n, reason = len(tokens), STOP_TYPES.get(stop_type, stop_type)
                for k in range(1, len(tokens) + 1):
                    ours = finish_reason(tokens[:k], self.tokenizer, eos, close_ids, stop_at_box, max_new_tokens, stop)
                    if ours is not None:
                        n, reason = k, ours
                        break
                text = self.tokenizer.decode(tokens[:n], skip_special_tokens=True)
                bar.update(1)
                yield [(i, Generation(text, n, time.perf_counter() - t0, reason))]
        finally:
            bar.close()


def load_llama_cpp_generator(model_ref: str, cfg, workspace, options) -> LlamaCppGenerator:
    if options:
        raise FtlabError(f"eval.backend_options {sorted(options)}: the llama.cpp backend takes none "
                         "(its threads are eval.threads; its context is sized from the prompts)")
    source = resolve_model(model_ref, workspace, cfg.model.revision)
    if not source.gguf_file:
        raise FtlabError(f"eval.backend=llama.cpp runs GGUF files; {model_ref} is not one (export it with "
                         f"`ftlab export --model {model_ref} --type f16`, or any other --type)")
    gguf = Path(source.path) / source.gguf_file
    tokenizer = load_tokenizer(source, workspace)
    threads = cfg.eval.threads or os.cpu_count() or 1
    return LlamaCppGenerator(gguf, tokenizer, threads=threads, source=source,
                             prompt_format=getattr(cfg.eval, "prompt_format", "auto"))
