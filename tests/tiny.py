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
