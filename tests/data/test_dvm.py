"""The DVM-Car preparer on a tiny copy of the release written in its real layout."""

import json

import numpy as np
import pandas as pd
from PIL import Image

from holomodal.cli import main
from holomodal.experiment import load_splits
from holomodal.preprocessing import Preprocessor

MODELS = [("Abarth", "124 Spider", "2_1", 12), ("Volvo", "V50", "96_9", 10), ("Zenos", "E10", "99_1", 3)]
COLOURS = ["Blue", "Grey", "Red"]


def _write_release(root):
    """Ad, price, image and extra tables with the release's stray header spaces, and JPEGs in
    resized_DVM/<maker>/<model>/<year>/<colour>/."""
    tables = root / "tables_V2.0"
    tables.mkdir(parents=True)
    ads, extra, images, prices = [], [], [], []
    for maker, model, gid, n in MODELS:
        prices.append({"Maker": maker, " Genmodel": model, " Genmodel_ID": gid, " Year": 2015, " Entry_price": 20000 + n})
        for i in range(1, n + 1):
            adv = f"{gid}$${i}"
            colour = COLOURS[i % 3]
            reg_year = 2015 if i != 2 else 1999  # advert 2 has no entry price for its year
            ads.append({
                "Maker": maker, " Genmodel": model, " Genmodel_ID": gid, "Adv_ID": adv, "Adv_year": 2018,
                "Adv_month": i % 12 + 1, "Color": colour, "Reg_year": float(reg_year), "Bodytype": "Saloon",
                "Runned_Miles": str(1000 * i) if i != 3 else "", "Engin_size": "1.6L", "Gearbox": "Manual",
                "Fuel_type": "Petrol", "Price": 5000 + i, "Seat_num": 5.0, "Door_num": 4.0,
            })
            extra.append({"Adv_ID": adv, "Wheelbase": "0" if i == 4 else f"{2500 + (gid == '96_9') * 100}",
                          "Height": "1400", "Width": "1700", "Length": "4000"})
            for view in (0, 1):  # two images per advert: only the first is kept
                name = f"{maker}$${model}$$2015$${colour}$${gid}$${i}$$image_{view}.jpg"
                images.append({"Genmodel_ID": gid, " Image_ID": f"{gid}$${i}$${view}", " Image_name": name,
                               " Predicted_viewpoint": 45 * view, " Quality_check": "P"})
                folder = root / "resized_DVM" / maker / model / "2015" / colour
                folder.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (16, 16), (10 * i, 100, 50 * view)).save(folder / name)
    pd.DataFrame(ads).to_csv(tables / "Ad_table.csv", index=False)
    pd.DataFrame(extra).to_csv(tables / "Ad_table (extra).csv", index=False)
    pd.DataFrame(images).to_csv(tables / "Image_table.csv", index=False)
    pd.DataFrame(prices).to_csv(tables / "Price_table.csv", index=False)


def test_prepare_dvm_writes_tip_features_label_and_splits(tmp_path, capsys):
    _write_release(tmp_path / "dvm")
    out = tmp_path / "prepared"
    code = main(["data", "prepare", "dvm", "--root", str(tmp_path / "dvm"), "--out", str(out), "--min-adverts", "5"])
    assert code == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    # adverts 2 (no price) and 3 (blank mileage) drop out; Zenos has too few adverts left
    assert summary["kept"] == (12 - 2) + (10 - 2) and summary["classes"] == 2
    assert summary["features"] == ["Color", "Bodytype", "Gearbox", "Fuel_type", "Wheelbase", "Height", "Width", "Length",
                                   "Adv_year", "Adv_month", "Reg_year", "Runned_Miles", "Price", "Seat_num", "Door_num",
                                   "Entry_price", "Engine_size"]
    assert summary["missing_image_files"] == 0
    splits = load_splits({"train": str(out / "train.parquet"), "val": str(out / "val.parquet"),
                          "test": str(out / "test.parquet"), "schema": str(out / "schema.yaml")})
    frames = [splits.train, splits.val, splits.test]
    assert sum(map(len, frames)) == 18 and len(splits.test) == 9
    everything = pd.concat(frames)
    assert everything["Adv_ID"].is_unique and set(everything["model"]) == {"2_1", "96_9"}
    assert splits.schema.label.options["classes"] == ["2_1", "96_9"]  # first appearance
    assert (everything["Engine_size"] == 1.6).all()
    assert everything["image"].str.endswith("image_0.jpg").all()
    # physical dimensions: advert 4's zero wheelbase comes from its model, all jittered by at most 50 mm
    base = np.where(everything["model"] == "96_9", 2600, 2500)
    assert (np.abs(everything["Wheelbase"] - base) <= 50).all() and everything["Wheelbase"].notna().all()
    assert everything["Wheelbase"].nunique() > 2
    pre = Preprocessor(splits.schema).fit(splits.train)
    batch, _ = pre.transform(splits.test)
    assert batch.present["image"].all() and batch.inputs["image"]["pixels"].shape[1:] == (3, 128, 128)
    assert batch.cell_missing.shape == (9, 17) and not batch.cell_missing.any()


def test_tip_workflow_from_the_command_line(tmp_path, capsys):
    """README's three commands on the prepared fixture: pretrain, fine-tune under RVM, evaluate."""
    _write_release(tmp_path / "dvm")
    out = tmp_path / "prepared"
    assert main(["data", "prepare", "dvm", "--root", str(tmp_path / "dvm"), "--out", str(out), "--min-adverts", "5",
                 "--image-size", "32"]) == 0
    tiny = ["model.encoders.image.model_name=test_resnet", "model.encoders.tabular.dim=16", "model.encoders.tabular.depth=1",
            "model.encoders.tabular.heads=2", "model.interaction={dim: 16, depth: 1, heads: 2}", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "batch_size=4", "run.loggers=[csv]"]
    pre = tmp_path / "pre"
    assert main(["pretrain", "-c", "dvm_tip_pretrain", f"dvm={out}", f"run.dir={pre}", *tiny]) == 0
    assert (pre / "checkpoints" / "last.ckpt").is_file() and (pre / "config.yaml").is_file()
    fine = tmp_path / "fine"
    assert main(["train", "-c", "dvm_tip_finetune", f"dvm={out}", f"model.checkpoint={pre}", f"run.dir={fine}",
                 "missing=[rvm:0.5]", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "batch_size=4",
                 "run.loggers=[csv]"]) == 0
    assert main(["evaluate", str(fine), "--missing", "rvm,rfm", "--rates", "0,0.5", "--n-boot", "5"]) == 0
    printed = capsys.readouterr().out
    assert "rvm" in printed and "rfm" in printed and "fine-tune with" in printed
