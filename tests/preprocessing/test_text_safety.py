"""Pathological text: a 1 MB "word" fits and encodes in seconds; text that is not valid
Unicode (lone surrogates, bytes) is a clear error naming column and rows, the same when
training and when predicting."""

import time

import numpy as np
import pandas as pd
import pytest

from tiny import TINY_ENCODERS
from holomodal.errors import DataError, HolomodalError
from holomodal.preprocessing import Preprocessor
from holomodal.preprocessing.text import MAX_WORD_CHARS, TextProcessor
from holomodal.schema import Column, Modality, Schema

NOTES = "clinical_notes"


def _schema(**text_options):
    options = {"max_length": 32, "vocab_size": 300, **text_options}
    return Schema([Column(NOTES, Modality.TEXT, options), Column("label", Modality.LABEL, {"task": "binary"})])


@pytest.fixture(scope="module")
def notes(covid):
    """Real clinical notes and labels from covid_cxr (rows that have a note)."""
    train = covid.split("train")
    rows = train[train[NOTES].map(lambda v: isinstance(v, str) and v.strip() != "")].iloc[:40]
    return rows[[NOTES, "label"]].astype(object)


def _random_word(n, seed=0):
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return "".join(np.random.default_rng(seed).choice(letters, n))


def test_one_megabyte_word_fits_and_encodes_in_seconds(notes):
    word = _random_word(1_000_000)
    train = notes.copy()
    train.iloc[3, 0] = word
    start = time.perf_counter()
    pre = Preprocessor(_schema()).fit(train)
    batch, _ = pre.transform(train)
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"fitting and encoding took {elapsed:.1f} s"  # unbounded, it ran > 14 minutes
    proc = pre.processors[NOTES]
    tok = proc.tokenizer
    ids = batch.inputs[NOTES]["input_ids"]
    assert ids.shape == (len(train), 32)
    assert tok.get_vocab_size() <= 300 + len({c for c in word})  # the vocabulary stays bounded
    # the word is read as pieces of MAX_WORD_CHARS characters, not as one [UNK]
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(word[: 2 * MAX_WORD_CHARS + 50])]
    assert [len(p) for p in pieces] == [MAX_WORD_CHARS, MAX_WORD_CHARS, 50]
    first_piece = tok.encode(word[:MAX_WORD_CHARS], add_special_tokens=False).ids
    huge = ids[3].tolist()
    assert huge[0] == tok.token_to_id("[CLS]") and huge[-1] == tok.token_to_id("[SEP]")
    assert huge[1 : 1 + min(len(first_piece), 30)] == first_piece[:30]
    assert tok.token_to_id("[UNK]") not in huge
    # ordinary notes encode as they would without the huge one in the batch
    alone, _ = pre.transform(train.drop(index=train.index[3]))
    assert alone.inputs[NOTES]["input_ids"].tolist() == ids[[i for i in range(len(train)) if i != 3]].tolist()


def test_long_words_cost_linear_time_with_the_clip_tokenizer(notes):
    frame = notes.iloc[:4].copy()
    frame.iloc[1, 0] = _random_word(50_000)  # about 90 s of BPE as one word
    proc = TextProcessor(Column(NOTES, Modality.TEXT, {"tokenizer": "clip", "max_length": 32})).fit(frame)
    proc.tokenizer  # loading the vocabulary is not what is timed
    start = time.perf_counter()
    tensors, present = proc.transform(frame, {})
    assert time.perf_counter() - start < 30
    assert present.all() and int(tensors["attention_mask"][1].sum()) == 32


def _with_cell(frame, position, value):
    frame = frame.copy()
    frame.iloc[position, 0] = value
    return frame


def _assert_names_column_and_row(error, row):
    message = str(error)
    assert f"'{NOTES}'" in message and str(row) in message
    message.encode("utf-8")  # printable: the CLI prints it on stderr


@pytest.mark.parametrize("tokenizer", ["wordpiece", "clip"])
def test_lone_surrogate_is_a_data_error_at_training(notes, tokenizer):
    bad = _with_cell(notes, 5, "fever and \ud800 cough")
    with pytest.raises(DataError) as caught:
        Preprocessor(_schema(tokenizer=tokenizer)).fit(bad)
    _assert_names_column_and_row(caught.value, bad.index[5])
    assert "U+D800" in str(caught.value) and "not valid Unicode" in str(caught.value)
    pre = Preprocessor(_schema(tokenizer=tokenizer)).fit(notes)
    with pytest.raises(DataError) as caught:  # the training split is encoded by the same rule
        pre.transform(bad)
    _assert_names_column_and_row(caught.value, bad.index[5])


def test_undecodable_bytes_are_refused_at_training(notes):
    bad = _with_cell(notes, 7, b"\xff\xfe")
    with pytest.raises(HolomodalError) as caught:
        Preprocessor(_schema()).fit(bad)
    _assert_names_column_and_row(caught.value, bad.index[7])
    with pytest.raises(DataError, match=rf"text column '{NOTES}': row\(s\) {bad.index[7]} hold bytes"):
        TextProcessor(_schema()[NOTES]).fit(bad)


@pytest.fixture(scope="module")
def classifier(notes, tmp_path_factory):
    from holomodal.estimator import Classifier

    clf = Classifier(_schema(), model={"encoders": {"text": TINY_ENCODERS["text"]}},
                     trainer={"max_epochs": 1, "enable_progress_bar": False}, batch_size=16,
                     run_dir=tmp_path_factory.mktemp("text_safety") / "run", loggers=["csv"])
    return clf.fit(notes.iloc[:32], notes.iloc[32:])


def test_invalid_text_is_the_same_error_at_prediction(classifier, notes):
    from holomodal.prediction import predict_frame

    rows = notes.drop(columns=["label"]).iloc[:6].reset_index(drop=True)
    assert len(predict_frame(classifier, rows)) == 6
    for value, error in (("lone \udcff surrogate", DataError), (b"\xff\xfe", HolomodalError)):
        bad = _with_cell(rows, 4, value)
        with pytest.raises(error) as caught:
            predict_frame(classifier, bad)
        _assert_names_column_and_row(caught.value, 4)
    # the model loaded back from disk (the predict command's path) applies the same rule
    state = Preprocessor.from_state(classifier.preprocessor_.state_dict())
    with pytest.raises(DataError, match=r"row\(s\) 4 .*U\+DCFF"):
        state.transform(_with_cell(rows, 4, "lone \udcff surrogate"), with_target=False)
