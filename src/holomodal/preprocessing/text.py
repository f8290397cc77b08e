"""Text columns: offline tokenisers.

``wordpiece`` (default) trains a WordPiece vocabulary on the training split with the
``tokenizers`` library and stores it (as JSON) with the model; ``clip`` uses the CLIP BPE
vocabulary that ships inside open_clip. Neither downloads anything.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from holomodal.errors import ConfigError
from holomodal.schema import Column


def _texts(values: pd.Series) -> tuple[list[str], np.ndarray]:
    present = np.array(values.map(lambda v: isinstance(v, str) and v.strip() != "").tolist(), dtype=bool)
    texts = [v if ok else "" for v, ok in zip(values.tolist(), present)]
    return texts, present


class TextProcessor:
    def __init__(self, column: Column) -> None:
        self.column = column
        self.kind = column.options.get("tokenizer", "wordpiece")
        self.max_length = int(column.options.get("max_length", 64))
        self.vocab_size = int(column.options.get("vocab_size", 2000))
        if self.kind not in ("wordpiece", "clip"):
            raise ConfigError(f"column '{column.name}': unknown tokenizer '{self.kind}' (wordpiece, clip)")
        self.tokenizer_json_: str | None = None
        self._tokenizer: Any = None

    def fit(self, df: pd.DataFrame) -> "TextProcessor":
        if self.kind == "wordpiece":
            from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

            texts, present = _texts(df[self.column.name])
            texts = [t for t, ok in zip(texts, present) if ok]
            specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
            tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
            tok.normalizer = normalizers.BertNormalizer(lowercase=True)
            tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            # The trainer numbers the "##x" continuation pieces in hash-map order, which
            # differs per process, and breaks ties between equally frequent merges by those
            # numbers, so the same data could give another vocabulary in another process
            # (huggingface/tokenizers#1794). Declaring every continuation piece up front, in
            # sorted order, fixes their numbers and so every tie-break.
            continuations = sorted({
                "##" + ch
                for text in texts
                for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))
                for ch in word[1:]
            })
            trainer = trainers.WordPieceTrainer(vocab_size=self.vocab_size, special_tokens=specials + continuations)
            tok.train_from_iterator(texts, trainer=trainer)
            # a fresh tokenizer: the continuation pieces are ordinary vocabulary, not special
            # tokens to be cut out of raw text; ids renumbered canonically
            ordered = specials + sorted(t for t in tok.get_vocab() if t not in specials)
            trained = tok
            tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(ordered)}, unk_token="[UNK]"))
            tok.normalizer = trained.normalizer
            tok.pre_tokenizer = trained.pre_tokenizer
            tok.add_special_tokens(specials)
            self.tokenizer_json_ = tok.to_str()
            self._tokenizer = tok
        return self

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            if self.kind == "clip":
                from open_clip.tokenizer import SimpleTokenizer

                self._tokenizer = SimpleTokenizer(context_length=self.max_length)
            else:
                from tokenizers import Tokenizer

                self._tokenizer = Tokenizer.from_str(self.tokenizer_json_)
        return self._tokenizer

    def transform(self, df: pd.DataFrame, summary: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        texts, present = _texts(df[self.column.name])
        if self.kind == "clip":
            ids = self.tokenizer(texts, context_length=self.max_length).long()
        else:
            tok = self.tokenizer
            cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
            ids = torch.zeros((len(texts), self.max_length), dtype=torch.long)
            for i, enc in enumerate(tok.encode_batch(texts, add_special_tokens=False)):
                seq = [cls_id, *enc.ids[: self.max_length - 2], sep_id]
                ids[i, : len(seq)] = torch.tensor(seq)
        mask = (ids != 0).long()
        return {"input_ids": ids, "attention_mask": mask}, torch.from_numpy(present)

    def spec(self) -> dict[str, Any]:
        vocab = 49408 if self.kind == "clip" else self.tokenizer.get_vocab_size()
        return {"vocab_size": int(vocab), "max_length": self.max_length, "pad_id": 0, "tokenizer": self.kind}

    def state(self) -> dict[str, Any]:
        return {"tokenizer_json": self.tokenizer_json_}

    def load_state(self, state: dict[str, Any]) -> None:
        self.tokenizer_json_ = state["tokenizer_json"]
        self._tokenizer = None
