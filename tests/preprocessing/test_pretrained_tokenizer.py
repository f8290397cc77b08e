"""A text column tokenised by a transformers tokenizer named by folder (Bio_ClinicalBERT's way,
offline here with a small saved vocabulary): stored as JSON, so a saved model needs neither."""

import pandas as pd
import pytest

from holomodal.errors import ConfigError
from holomodal.preprocessing.text import TextProcessor
from holomodal.schema import Column, Modality

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "pneum", "##onia", "effusion", "left", "."]


@pytest.fixture()
def tokenizer_folder(tmp_path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                      sep_token="[SEP]", mask_token="[MASK]")
    wrapped.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


def test_pretrained_tokenizer_by_folder(tokenizer_folder):
    column = Column("report", Modality.TEXT, {"tokenizer": str(tokenizer_folder), "max_length": 8})
    frame = pd.DataFrame({"report": ["No pneumonia.", "left effusion seen", None]})
    proc = TextProcessor(column).fit(frame)
    inputs, present = proc.transform(frame, {})
    ids = inputs["input_ids"]
    word = {t: i for i, t in enumerate(VOCAB)}
    assert ids[0, :6].tolist() == [word["[CLS]"], word["no"], word["pneum"], word["##onia"], word["."], word["[SEP]"]]
    assert ids[1, :5].tolist() == [word["[CLS]"], word["left"], word["effusion"], word["[UNK]"], word["[SEP]"]]
    assert present.tolist() == [True, True, False] and proc.spec()["vocab_size"] == len(VOCAB)
    # reloaded from its state alone: the folder is no longer read
    state = proc.state()
    for f in tokenizer_folder.iterdir():
        f.unlink()
    again = TextProcessor(column)
    again.load_state(state)
    assert again.transform(frame, {})[0]["input_ids"].equal(ids)


def test_unknown_tokenizer_names_the_column(tmp_path):
    column = Column("report", Modality.TEXT, {"tokenizer": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="column 'report': tokenizer '.*nowhere' is neither wordpiece, clip"):
        TextProcessor(column).fit(pd.DataFrame({"report": ["x"]}))
