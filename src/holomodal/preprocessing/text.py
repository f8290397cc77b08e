"""Text columns: offline tokenisers.

``wordpiece`` (default) trains a WordPiece vocabulary on the training split with the
``tokenizers`` library and stores it (as JSON) with the model; ``clip`` uses the CLIP BPE
vocabulary that ships inside open_clip. Neither downloads anything.

Two rules keep pathological text from hanging or crashing a run, the same at training and
at prediction (every text cell goes through :func:`_texts` and the same tokenizer):

* A word (a run of characters between spaces and punctuation) longer than
  :data:`MAX_WORD_CHARS` is cut into pieces of that length before the WordPiece vocabulary
  is fitted and before text is encoded (the CLIP tokenizer gets a space after every
  :data:`MAX_WORD_CHARS` characters of a longer run). Fitting the vocabulary costs roughly
  the square of a word's length (one 1 MB "word" ran for more than 14 minutes), and so does
  CLIP's BPE; with the cap both are linear in the size of the text. The WordPiece model
  turns any word longer than 100 characters into ``[UNK]`` anyway, so no ordinary word
  loses anything. Encoding reads only as much of a text as its first ``max_length``
  tokens need (see :func:`_leading_ids`).
* A cell that is not valid Unicode text, that is a ``str`` holding a lone surrogate (what
  decoding non-UTF-8 bytes with ``errors="surrogateescape"`` or a JSON ``"\ud800"`` escape
  leaves) or a ``bytes`` object, is a :class:`~holomodal.errors.DataError` naming the
  column and rows: no tokenizer can encode it, and guessing a repair would silently feed
  the model different text than the user holds.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import torch

from holomodal.errors import ConfigError, DataError
from holomodal.schema import Column, row_list

MAX_WORD_CHARS = 100  # WordPiece's own max_input_chars_per_word: longer words encode as [UNK]
_LONG_RUN = re.compile(rf"\S{{{MAX_WORD_CHARS}}}(?=\S)")


def _first_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in ``text``, None when it is valid Unicode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _refuse_invalid(name: str, values: pd.Series, cells: list[Any]) -> None:
    as_bytes = [i for i, v in enumerate(cells) if isinstance(v, (bytes, bytearray))]
    if as_bytes:
        raise DataError(
            f"text column '{name}': row(s) {row_list(values.index[as_bytes])} hold bytes, not text; "
            "decode them to str first (e.g. value.decode('utf-8'), after checking the encoding)"
        )
    found = [(i, _first_surrogate(v)) for i, v in enumerate(cells) if isinstance(v, str)]
    bad = [(i, at) for i, at in found if at is not None]
    if bad:
        first, at = bad[0]
        # the code point is shown as U+XXXX: printing the character itself would fail
        raise DataError(
            f"text column '{name}': row(s) {row_list(values.index[[i for i, _ in bad]])} hold text that is not "
            f"valid Unicode (row {values.index[first]}: lone surrogate U+{ord(cells[first][at]):04X} at "
            f"character {at}), as left by decoding bytes that are not UTF-8 with errors='surrogateescape'; "
            "read the file with its real encoding, or remove those characters"
        )


def _capped_words(text: str) -> str:
    """``text`` with a space after every :data:`MAX_WORD_CHARS` characters of a longer word
    (for the CLIP tokenizer, whose BPE costs the square of a word's length)."""
    return _LONG_RUN.sub(lambda m: m.group(0) + " ", text)



def _leading_ids(tok: Any, texts: list[str], need: int, first_chars: int = 4096) -> list[list[int]]:
    """The first ``need`` WordPiece ids of every text, without encoding all of a huge text.

    Normalising and pre-tokenising are local (per character, split at spaces and
    punctuation), so the words of a prefix are the text's own words except the last one,
    which the cut may have shortened. A text is encoded on a prefix; the tokens of its last
    word are dropped, and if fewer than ``need`` remain the prefix grows fourfold. Texts
    shorter than the first prefix, all ordinary ones, are encoded whole as before."""
    out: list[list[int]] = [[] for _ in texts]
    todo, limit = list(range(len(texts))), max(first_chars, 64 * need)
    while todo:
        cut = [texts[i][:limit] for i in todo]
        retry = []
        for i, part, enc in zip(todo, cut, tok.encode_batch(cut, add_special_tokens=False)):
            if len(part) == len(texts[i]):
                out[i] = enc.ids[:need]
                continue
            words = enc.word_ids
            whole = [t for t, w in zip(enc.ids, words) if w != words[-1]] if words else []
            if len(whole) >= need:
                out[i] = whole[:need]
            else:
                retry.append(i)
        todo, limit = retry, 4 * limit
    return out


def _texts(values: pd.Series, name: str) -> tuple[list[str], np.ndarray]:
    """The cells as strings ('' where missing or blank) and which are present; a
    :class:`DataError` for cells that are bytes or not valid Unicode."""
    cells = values.tolist()
    _refuse_invalid(name, values, cells)
    present = np.array([isinstance(v, str) and v.strip() != "" for v in cells], dtype=bool)
    texts = [v if ok else "" for v, ok in zip(cells, present)]
    return texts, present


class TextProcessor:
    def __init__(self, column: Column) -> None:
        self.column = column
        self.kind = column.options.get("tokenizer", "wordpiece")
        self.max_length = int(column.options.get("max_length", 64))
        self.vocab_size = int(column.options.get("vocab_size", 2000))
        if not isinstance(self.kind, str) or not self.kind:
            raise ConfigError(f"column '{column.name}': tokenizer must be wordpiece, clip, or a transformers tokenizer's "
                              f"name or folder, not {self.kind!r}")
        self.tokenizer_json_: str | None = None
        self._tokenizer: Any = None

    def fit(self, df: pd.DataFrame) -> "TextProcessor":
        texts, present = _texts(df[self.column.name], self.column.name)  # checked whatever the tokenizer
        if self.kind == "wordpiece":
            from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

            texts = [t for t, ok in zip(texts, present) if ok]
            specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
            tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
            tok.normalizer = normalizers.BertNormalizer(lowercase=True)
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.BertPreTokenizer(),
                pre_tokenizers.Split(Regex(f".{{1,{MAX_WORD_CHARS}}}"), behavior="isolated"),
            ])
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
            # show_progress off: its bar is written to the terminal by Rust, past Python's
            # stdout, and in a file or pipe leaves blank lines
            trainer = trainers.WordPieceTrainer(vocab_size=self.vocab_size, special_tokens=specials + continuations,
                                                show_progress=False)
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
        elif self.kind != "clip":
            self._adopt_pretrained_tokenizer()
        return self

    def _adopt_pretrained_tokenizer(self) -> None:
        """A pretrained BERT-style tokenizer (``emilyalsentzer/Bio_ClinicalBERT``, a local
        folder) through transformers, kept as its JSON so a saved model needs neither the
        name nor the network again."""
        from transformers import AutoTokenizer

        try:
            loaded = AutoTokenizer.from_pretrained(self.kind)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"column '{self.column.name}': tokenizer '{self.kind}' is neither wordpiece, clip, nor a "
                              f"transformers tokenizer found locally or online ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]})") from None
        backend = getattr(loaded, "backend_tokenizer", None)
        if backend is None or backend.token_to_id("[CLS]") is None or backend.token_to_id("[SEP]") is None:
            raise ConfigError(f"column '{self.column.name}': tokenizer '{self.kind}' is not a fast BERT-style tokenizer "
                              "with [CLS] and [SEP] tokens")
        if backend.token_to_id("[PAD]") not in (0, None):
            raise ConfigError(f"column '{self.column.name}': tokenizer '{self.kind}' pads with id "
                              f"{backend.token_to_id('[PAD]')}; holomodal's text batches pad with 0")
        backend.no_truncation()
        backend.no_padding()
        self.tokenizer_json_ = backend.to_str()
        self._tokenizer = None

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
        texts, present = _texts(df[self.column.name], self.column.name)
        if self.kind == "clip":
            ids = self.tokenizer([_capped_words(t) for t in texts], context_length=self.max_length).long()
        else:
            tok = self.tokenizer
            cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
            ids = torch.zeros((len(texts), self.max_length), dtype=torch.long)
            for i, leading in enumerate(_leading_ids(tok, texts, self.max_length - 2)):
                seq = [cls_id, *leading, sep_id]
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
