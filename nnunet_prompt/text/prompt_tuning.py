"""Text prompt tuning (LLMSeg, eq. 1) on a frozen Hugging Face language model.

For each of N prompt groups n, the model reads

    t_n = { s, v^n_1 ... v^n_M, [TEXT], [SEG] }

where s is the tokenizer's first special token (BERT's [CLS], Llama's <s>; absent for tokenizers that add
none), v^n are M learnable vectors of the model's embedding size, [TEXT] the tokenised clinical text (with
the tokenizer's own closing tokens), and [SEG] an appended token. The model's output at [SEG] is the
context embedding g_n; a case gets N of them, shape (N, D).

Only the prompt vectors and the [SEG] embedding train; the language model's weights get neither
gradients nor optimizer state: it is kept *outside* the module tree (not a submodule), so
``parameters()``, ``state_dict()``, checkpoints, DDP and ``.to()`` never see it. Gradients still flow
through it to the prompt vectors.

Why not ``peft``'s prompt tuning: peft prepends one block of virtual tokens in front of the whole input
(before [CLS]) and yields one output sequence per input. Eq. 1 puts the vectors after the first special
token, uses N independent groups (one [SEG] output each) and reads the output at an appended [SEG]
token; peft expresses none of these three, so the splice is done here on ``inputs_embeds``.

The context embeddings are then standardised with running statistics over the training texts
(``RunningStandardization``; why: see there). This is not in LLMSeg; it is what made the text's
effect learnable in a few hundred steps here (tests/test_text_behaviour.py).

``text_readout`` > 0 (opt-in: ``TextPromptTrainer_tokenReadout``) adds that many context embeddings read from the language model's outputs at the text's own
tokens (``TextTokenReadout``), after the N [SEG] outputs. Not in LLMSeg either; why: when clinicians word their
notes differently, the side is a single word among many that vary, and MiniLM's sentence-level outputs ([CLS],
[SEG] at initialisation, the mean over tokens) barely carry it: over ten wordings, the side explains 1-2 % of their
variance and a linear read-out of it is right in 54-62 % of held-out notes (100 % with one wording). The outputs
at the words "left" and "right" differ in every wording, and a learned attention over the tokens reaches them
directly, where the [SEG] route has to learn it through the frozen model with deliberately slow prompt vectors.
Not shown to help yet: as the default it made the 500-step behaviour check (tests/test_text_behaviour.py, one
wording) fail, and on the varied-wording phantom 600 iterations taught the model no laterality either way
(benchmarks/RESULTS.md). So it is off unless asked for.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from nnunet_prompt.text.language_model import TextModelSpec, load_frozen_language_model
from nnunet_prompt.text.standardization import RunningStandardization

EMBEDDING_SCALE = 0.02  # std of BERT-like token embeddings


class TextTokenReadout(nn.Module):
    """K learned queries attend (torch's multi-head attention, padding masked) over the language model's outputs at
    the text's tokens: (B, T, D) outputs, (B, T) text mask -> (B, K, D)."""

    def __init__(self, dim: int, num_queries: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) / dim ** 0.5)
        self.attention = nn.MultiheadAttention(dim, num_heads=1, batch_first=True)

    def forward(self, hidden: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        queries = self.queries[None].expand(hidden.shape[0], -1, -1).to(hidden.dtype)
        out, _ = self.attention(queries, hidden, hidden, key_padding_mask=~text_mask, need_weights=False)
        return out


class TextPromptTuning(nn.Module):
    def __init__(self, spec: TextModelSpec, num_groups: int = 4, vectors_per_group: int = 8, text_readout: int = 0):
        super().__init__()
        self.spec = spec
        self.num_groups = int(num_groups)
        self.vectors_per_group = int(vectors_per_group)
        self.readout = TextTokenReadout(spec.hidden_size, int(text_readout)) if text_readout else None
        self.context_dim = spec.hidden_size
        # Randomly initialised as in LLMSeg, at the scale of token embeddings (std EMBEDDING_SCALE). Stored in
        # units of that scale, so an optimizer step moves them by ~EMBEDDING_SCALE x lr: at the image network's
        # learning rate (AdamW 1e-3..3e-3) unscaled vectors jump by many embedding norms within a hundred steps,
        # the language model's output keeps changing under the fusion layers, and the text's effect is learned
        # and lost again (measured: tests/test_text_behaviour.py's task learned only with slow prompt vectors).
        self.prompt_vectors = nn.Parameter(torch.randn(self.num_groups, self.vectors_per_group, spec.hidden_size))
        self.seg_embedding = nn.Parameter(torch.randn(spec.hidden_size))
        self.__dict__["_language_model"] = None   # not a submodule: see module docstring
        self.__dict__["_tokenizer"] = None
        self._token_cache: Dict[str, Tuple[List[int], List[int]]] = {}
        self.standardize = RunningStandardization(self.num_groups + int(text_readout), spec.hidden_size)

    @property
    def num_context_tokens(self) -> int:
        """Context embeddings per text: one per prompt group, then the token read-out's."""
        return self.num_groups + (self.readout.queries.shape[0] if self.readout is not None else 0)

    def scaled_prompt_vectors(self) -> torch.Tensor:
        """(N, M, D): the vectors v^n_m as the language model receives them."""
        return self.prompt_vectors * EMBEDDING_SCALE

    def scaled_seg_embedding(self) -> torch.Tensor:
        return self.seg_embedding * EMBEDDING_SCALE

    # ---------------------------------------------------------------- model
    def _ensure_loaded(self, device: torch.device):
        if self.__dict__["_language_model"] is None:
            tokenizer, model = load_frozen_language_model(self.spec)
            self.__dict__["_tokenizer"], self.__dict__["_language_model"] = tokenizer, model
        model = self.__dict__["_language_model"]
        if next(model.parameters()).device != device:
            model.to(device)
        return model

    @property
    def language_model(self) -> nn.Module:
        return self._ensure_loaded(self.prompt_vectors.device)

    def tokens(self, text: str) -> Tuple[List[int], List[int]]:
        """(leading special token ids, remaining ids) of a text, tokenised once and cached."""
        if text not in self._token_cache:
            tok = self.__dict__["_tokenizer"]
            limit = getattr(tok, "model_max_length", 512)
            limit = min(limit if isinstance(limit, int) and limit < 100_000 else 512, 512)
            ids = tok(text, truncation=True, max_length=limit - self.vectors_per_group - 1)["input_ids"]
            head = ids[:1] if ids and ids[0] in set(tok.all_special_ids) else []
            self._token_cache[text] = (head, ids[len(head):])
        return self._token_cache[text]

    # -------------------------------------------------------------- forward
    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """texts: one string per sample -> standardised context embeddings (B, N + text_readout, D)."""
        return self.standardize(self.encode(texts))

    @torch.no_grad()
    def calibrate(self, texts: Sequence[str], chunk: int = 16) -> None:
        """Start the running statistics from all training texts (instead of from the first batch)."""
        g = torch.cat([self.encode(list(texts[i:i + chunk])) for i in range(0, len(texts), chunk)])
        self.standardize.reset_from(g)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        device = self.prompt_vectors.device
        model = self._ensure_loaded(device)
        embed = model.get_input_embeddings()
        rows, lengths = [], []
        for text in texts:
            head, rest = self.tokens(text)
            e_head = embed(torch.as_tensor(head, dtype=torch.long, device=device))
            e_rest = embed(torch.as_tensor(rest, dtype=torch.long, device=device))
            vectors, seg = self.scaled_prompt_vectors(), self.scaled_seg_embedding()
            for n in range(self.num_groups):
                seq = torch.cat([e_head, vectors[n].to(e_head.dtype), e_rest, seg.to(e_head.dtype)[None]], 0)
                rows.append(seq)
                lengths.append(seq.shape[0])
        longest = max(lengths)
        inputs = torch.zeros((len(rows), longest, self.context_dim), dtype=rows[0].dtype, device=device)
        attention = torch.zeros((len(rows), longest), dtype=torch.long, device=device)
        for i, seq in enumerate(rows):  # right padding: [SEG] sits at length - 1
            inputs[i, :seq.shape[0]] = seq
            attention[i, :seq.shape[0]] = 1
        hidden = model(inputs_embeds=inputs, attention_mask=attention).last_hidden_state
        seg = hidden[torch.arange(len(rows), device=device), torch.as_tensor(lengths, device=device) - 1]
        seg = seg.view(len(texts), self.num_groups, self.context_dim)
        if self.readout is None:
            return seg
        # the text's tokens in group 0's sequence: after the head and the prompt vectors, before [SEG]
        first = [self.num_groups * i for i in range(len(texts))]
        text_mask = torch.zeros((len(texts), longest), dtype=torch.bool, device=device)
        for i, text in enumerate(texts):
            head, rest = self.tokens(text)
            start = len(head) + self.vectors_per_group
            text_mask[i, start:start + max(len(rest), 1)] = True  # an empty text: [SEG], never an all-masked row
        return torch.cat([seg, self.readout(hidden[first], text_mask)], 1)
