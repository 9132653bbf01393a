"""OpenELM as an lm-evaluation-harness LM: log-likelihoods, rolling log-likelihoods and generation.

The harness turns every task into requests; this class answers them with the torch model and
the project's SentencePiece tokenizer, the way the harness's own `hf` backend answers them for
a transformers model (so the two agree on an export):

- BOS is prepended to every context (Apple evaluated with `add_bos_token=True`); `add_bos=False`
  turns it off, and an empty context is then conditioned on BOS alone, as the harness does.
- Requests are sorted by length (longest first), right-padded and scored in batches; attention
  is causal, so padding after a row's last token never reaches its scores, and a batch gives
  what the requests give one at a time.
- A context longer than the model's context is cut on the left: the last `max_length + 1`
  tokens of context and continuation are kept, as the harness does.
- `generate_until` decodes greedily with the KV cache and stops at the first `until` string.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from lm_eval import utils as harness_utils
from lm_eval.api.model import TemplateLM

from corpus.tokenizer.tokenizer import Tokenizer
from model.openelm import OpenELM

DEFAULT_MAX_GEN_TOKS = 256


class OpenELMLM(TemplateLM):
    """A loaded OpenELM and its tokenizer, answering harness requests in batches of `batch_size`."""

    def __init__(self, model: OpenELM, tokenizer: Tokenizer, batch_size: int = 8, add_bos: bool = True,
                 max_length: int | None = None, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.sp = tokenizer
        self.add_bos = add_bos
        self.batch_size = batch_size
        self.max_length = int(max_length or model.config.max_context_length)
        self.max_gen_toks = max_gen_toks
        self._device = model.transformer.token_embeddings.weight.device

    @property
    def device(self) -> torch.device:
        return self._device

    # ---------------------------------------------------------------- tokens

    @property
    def eot_token_id(self) -> int:
        return self.sp.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.sp.bos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        bos = self.add_bos if add_special_tokens is None else bool(add_special_tokens)
        return self.sp.encode_one(string, bos=bos, eos=False)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.sp.decode(tokens)

    # ---------------------------------------------------------------- scoring

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        # The harness calls this without disable_tqdm, so its "Tokenizing inputs" bar ignores tqdm's TQDM_DISABLE.
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or os.environ.get("TQDM_DISABLE") == "1")

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of log-probabilities of the continuation, whether it is the greedy continuation) per request."""
        windows = []
        for _, context, continuation in requests:
            if not continuation:
                raise ValueError("a request has an empty continuation")
            if len(continuation) > self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens exceeds the model's "
                                 f"context of {self.max_length}")
            # Cut on the left: the last max_length + 1 tokens; the input is all but the last of them.
            windows.append((context + continuation)[-(self.max_length + 1):])
        order = sorted(range(len(requests)), key=lambda i: -len(windows[i]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            inputs = [windows[i][:-1] for i in chunk]
            counts = [len(requests[i][2]) for i in chunk]
            logits = self._continuation_logits(inputs, counts)
            targets = torch.tensor([t for i, n in zip(chunk, counts) for t in windows[i][-n:]], device=logits.device)
            logprobs = F.log_softmax(logits, dim=-1)
            chosen = logprobs.gather(1, targets[:, None]).squeeze(1)
            hits = logprobs.argmax(dim=-1) == targets
            for i, logprob, hit in zip(chunk, chosen.split(counts), hits.split(counts)):
                results[i] = (float(logprob.sum()), bool(hit.all()))
        return results

    @torch.no_grad()
    def _continuation_logits(self, inputs: list[list[int]], counts: list[int]) -> torch.Tensor:
        """Float32 logits (sum of counts, vocab): each row's last `count` positions, rows one after another.

        The rows are right-padded with EOS into one batch; only the scored positions go through
        the output projection, which is most of a small model's work.
        """
        width = max(len(x) for x in inputs)
        ids = torch.full((len(inputs), width), self.sp.eos_id, dtype=torch.long)
        for row, x in enumerate(inputs):
            ids[row, :len(x)] = torch.tensor(x, dtype=torch.long)
        hidden = self.model.hidden_states(ids.to(self.device))
        picked = torch.cat([hidden[row, len(x) - n:len(x)] for row, (x, n) in enumerate(zip(inputs, counts))])
        return self.model.logits(picked).float()

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, scored in disjoint windows of the model's context (perplexity tasks)."""
        windows, owner = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            for context, continuation in map(harness_utils.make_disjoint_window, harness_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---------------------------------------------------------------- generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, when a task asks) continuations, cut at the first `until` string."""
        out = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            until.append(self.tok_decode([self.eot_token_id]))
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            prompt = self.tok_encode(context)[-(self.max_length - max_new):] if max_new < self.max_length \
                else self.tok_encode(context)[-1:]
            text = self._generate(prompt, max_new, until, temperature)
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
            out.append(text)
        return out

    def _generate(self, prompt: list[int], max_new: int, until: list[str], temperature: float) -> str:
        n = len(prompt)

        def reached_stop(tokens: torch.Tensor) -> bool:
            text = self.tok_decode(tokens[0, n:].tolist())
            return any(s and s in text for s in until)

        tokens = self.model.generate(torch.tensor([prompt], device=self.device), max_new, temperature=temperature,
                                     eos_id=self.sp.eos_id, stop=reached_stop)
        text = self.tok_decode(tokens[0, n:].tolist())
        cut = min((text.index(s) for s in until if s and s in text), default=len(text))
        return text[:cut]
