"""Tiny model settings shared by the tests that train on real covid_cxr rows."""

from holomodal.schema import Schema

TINY_ENCODERS = {
    "image": {"name": "lenet", "channels": 2, "blocks": 1},
    "text": {"name": "text_transformer", "hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32},
    "tabular": {"name": "tabular_mlp", "hidden": 16, "layers": 1},
}


def small_schema(schema: Schema, drop=()) -> Schema:
    """The data set's schema with 32-pixel images and 32-token notes, so tests stay quick on
    two CPU cores; ``drop`` leaves out columns of those modalities."""
    columns = []
    for c in schema.to_dict()["columns"]:
        if c["modality"] in drop:
            continue
        shrink = {"image": {"size": 32}, "text": {"max_length": 32}}.get(c["modality"], {})
        columns.append({**c, "options": {**c["options"], **shrink}})
    return Schema.from_dict({**schema.to_dict(), "columns": columns})


def covid_csv_files(covid, folder, rows, label="outcome"):
    """covid_cxr's first ``rows[split]`` rows of each split as ``folder/<split>.csv``, the X-rays
    copied into ``folder/images`` (relative paths) and the label under the name ``label``
    holding class names: a user's own files as they arrive."""
    import shutil
    from pathlib import Path

    (folder / "images").mkdir(exist_ok=True)
    classes = covid.schema.label.options["classes"]
    paths = {}
    for split, count in rows.items():
        frame = covid.split(split).iloc[:count].copy()
        frame[label] = frame.pop("label").map(lambda code: classes[code])
        for source in frame["image"].dropna():
            shutil.copy(source, folder / "images" / Path(source).name)
        frame["image"] = frame["image"].map(lambda p: f"images/{Path(p).name}" if isinstance(p, str) else p)
        paths[split] = folder / f"{split}.csv"
        frame.to_csv(paths[split], index=False)
    return paths


def write_own_files(frame, column, folder):
    """``frame`` as a user's ``table.csv`` and a ``schema.json`` of ``column`` and a label,
    in ``folder``: what ``holomodal data cache --schema --table`` reads."""
    from holomodal.schema import Column, Modality

    table, schema = folder / "table.csv", folder / "schema.json"
    frame.to_csv(table, index=False)
    schema.write_text(Schema([column, Column("label", Modality.LABEL)]).to_json())
    return table, schema
