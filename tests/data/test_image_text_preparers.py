"""`holomodal data prepare mmimdb|food101|hatefulmemes` on small fixtures in each public
release's own file layout; the prepared folders load, preprocess and train."""

import json

import pandas as pd
import pytest
from PIL import Image

from holomodal.cli import main
from holomodal.data.image_text_preparers import MMIMDB_GENRES
from holomodal.errors import DataError
from holomodal.experiment import load_splits
from holomodal.preprocessing import Preprocessor


def _picture(path, shade, mode="RGB", suffix=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (20, 16), (shade, 80, 200 - shade)).save(path, format=suffix)


def _mmimdb_release(root):
    """Twelve movies; movie 0003 has two plot summaries, 0004 none, 0005 no poster; one genre
    (Reality-TV) is outside the 23."""
    genres = [["Drama", "Comedy"], ["Horror"], ["Film-Noir", "Crime"], ["Drama"], ["Action", "Reality-TV"],
              ["Comedy"], ["Western"], ["Sci-Fi", "Drama"], ["Music"], ["War"], ["Short"], ["Family"]]
    for i, kinds in enumerate(genres):
        movie = f"{i:04d}"
        plot = [f"plot of movie {i}", f"a second   plot for {i}"] if i == 3 else ([] if i == 4 else [f"plot of movie {i}"])
        (root / "dataset").mkdir(parents=True, exist_ok=True)
        (root / "dataset" / f"{movie}.json").write_text(json.dumps({"title": movie, "plot": plot, "genres": kinds}))
        if i != 5:
            _picture(root / "dataset" / f"{movie}.jpeg", 10 * i, suffix="JPEG")
    ids = [f"{i:04d}" for i in range(12)]
    (root / "split.json").write_text(json.dumps({"train": ids[:6], "dev": ids[6:9], "test": ids[9:]}))


def _food101_release(root):
    classes = ["apple_pie", "baklava", "ramen"]
    for part, n in (("train", 10), ("test", 3)):
        lines = []
        for c in classes:
            for k in range(n):
                name = f"{c}_{part}{k}.jpg"
                _picture(root / "images" / part / c / name, 20 * k, suffix="JPEG")
                title = "" if (part == "train" and k == 0) else f"Best {c.replace('_', ' ')} recipe, number {k}"
                lines.append(f'{name},"{title}",{c}')
        (root / "texts").mkdir(parents=True, exist_ok=True)
        (root / "texts" / f"{part}_titles.csv").write_text("\n".join(lines) + "\n")


def _hateful_release(root):
    for split, n in (("train", 8), ("dev", 4), ("test_seen", 4), ("test_unseen", 2)):
        rows = []
        for k in range(n):
            meme = f"{split[:2]}{k:03d}"
            _picture(root / "img" / f"{meme}.png", 25 * k, mode="RGBA")
            rows.append({"id": meme, "img": f"img/{meme}.png", "label": k % 2, "text": f"meme text {k}"})
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _prepare(tmp_path, name, *extra):
    out = tmp_path / f"prepared_{name}"
    assert main(["data", "prepare", name, "--root", str(tmp_path / name), "--out", str(out), *extra]) == 0
    splits = load_splits({k: str(out / f"{k}.parquet") for k in ("train", "val", "test")} | {"schema": str(out / "schema.yaml")})
    return out, splits, json.loads((out / "summary.json").read_text())


def test_prepare_mmimdb_one_row_per_plot_summary(tmp_path, capsys):
    _mmimdb_release(tmp_path / "mmimdb")
    out, splits, summary = _prepare(tmp_path, "mmimdb")
    assert "1 row(s) left out: their image file is missing" in capsys.readouterr().out
    assert summary["splits"] == {"train": 6, "val": 3, "test": 3}  # 0003 twice, 0005 (no poster) out
    assert summary["genres_left_out"] == ["Reality-TV"] and summary["movies_without_plot"] == 1
    train = splits.train.set_index(["movie_id", "plot_number"])
    assert train.loc[("0003", 1), "plot"] == "a second plot for 3"
    assert pd.isna(train.loc[("0004", 0), "plot"])  # kept: the text is missing, the image is not
    assert list(train.loc[("0000", 0), "genres"]) == [0, 1]
    assert list(train.loc[("0004", 0), "genres"]) == [MMIMDB_GENRES.index("Action")]
    assert splits.schema.label.options["classes"] == list(MMIMDB_GENRES)
    batch, _ = Preprocessor(splits.schema).fit(splits.train).transform(splits.train)
    assert batch.target.shape == (6, 23) and batch.target[0, :2].tolist() == [1.0, 1.0]
    assert batch.present["image"].all() and batch.present["plot"].tolist() == [True] * 5 + [False]
    assert batch.inputs["image"]["pixels"].shape[1:] == (3, 224, 224)


def test_prepare_mmimdb_first_plot_only(tmp_path):
    _mmimdb_release(tmp_path / "mmimdb")
    _, splits, summary = _prepare(tmp_path, "mmimdb", "--plots", "first")
    assert summary["splits"]["train"] == 5 and splits.train["movie_id"].is_unique


def test_prepare_food101_drops_untitled_items_and_splits_off_val(tmp_path, capsys):
    _food101_release(tmp_path / "food101")
    _, splits, summary = _prepare(tmp_path, "food101")
    assert "3 item(s) without a title left out" in capsys.readouterr().out
    assert summary["items_without_text"] == 3
    # 9 titled training items per class, 10 % of them (one) to validation
    assert summary["splits"] == {"train": 24, "val": 3, "test": 9}
    assert sorted(splits.val["label"]) == ["apple_pie", "baklava", "ramen"]
    assert set(splits.train["item_id"]).isdisjoint(splits.val["item_id"])
    assert splits.schema.label.options["classes"] == ["apple_pie", "baklava", "ramen"]
    assert splits.test["image"].iloc[0].startswith("images/test/")
    batch, _ = Preprocessor(splits.schema).fit(splits.train).transform(splits.test)
    assert batch.target.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and batch.present["text"].all()


def test_prepare_hatefulmemes_picks_the_labelled_test_file(tmp_path):
    _hateful_release(tmp_path / "hatefulmemes")
    _, splits, summary = _prepare(tmp_path, "hatefulmemes", "--test-file", "test_unseen")
    assert summary["files"] == {"train": "train.jsonl", "val": "dev.jsonl", "test": "test_unseen.jsonl"}
    assert summary["splits"] == {"train": 8, "val": 4, "test": 2}
    assert splits.schema.task.value == "binary"
    batch, _ = Preprocessor(splits.schema).fit(splits.train).transform(splits.train)
    assert batch.target.tolist() == [0, 1] * 4 and batch.present["image"].all()  # RGBA memes read as RGB


def test_preparer_errors_name_the_file_and_line(tmp_path):
    from holomodal.data.image_text_preparers import prepare_hatefulmemes, prepare_mmimdb

    _hateful_release(tmp_path / "hatefulmemes")
    with (tmp_path / "hatefulmemes" / "test_seen.jsonl").open("a") as f:
        f.write(json.dumps({"id": "x", "img": "img/x.png", "text": "no label"}) + "\n")
    with pytest.raises(DataError, match=r"test_seen.jsonl, line 5: label must be 0 or 1"):
        prepare_hatefulmemes(tmp_path / "hatefulmemes", tmp_path / "out_h")
    assert not (tmp_path / "out_h").exists()  # nothing written before the input is checked
    with pytest.raises(DataError, match=r"MM-IMDb folder 'dataset' not found: .*hatefulmemes"):
        prepare_mmimdb(tmp_path / "hatefulmemes", tmp_path / "out_m")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    _mmimdb_release(tmp_path / "mmimdb")
    with pytest.raises(DataError, match="will not overwrite"):
        prepare_mmimdb(tmp_path / "mmimdb", tmp_path / "busy")


def test_paper_config_trains_on_a_prepared_folder(tmp_path):
    """`holomodal train -c hatefulmemes_dcp hatefulmemes=<prepared>` with a tiny CLIP in place of ViT-B/16."""
    _hateful_release(tmp_path / "hatefulmemes")
    out, _, _ = _prepare(tmp_path, "hatefulmemes")
    run = tmp_path / "run"
    assert main(["train", "-c", "hatefulmemes_dcp", f"hatefulmemes={out}", f"run.dir={run}",
                 "model.backbone={model_name: holomodal-tiny-clip, weights: null}", "trainer.max_epochs=1",
                 "trainer.accumulate_grad_batches=1", "trainer.enable_progress_bar=false", "run.loggers=[csv]"]) == 0
    masks = json.loads((run / "missing_masks.json").read_text())
    assert masks and (run / "checkpoints" / "last.ckpt").is_file()
