"""Setup shared by the semi-supervised method tests that train on real av_digits rows: the
row split, a tiny method built without a trainer, and a two-epoch fit."""

from holomodal.estimator import Classifier
from holomodal.methods import create_method
from holomodal.methods.base import ModelContext
from holomodal.preprocessing import Preprocessor

ENCODERS = {"image": {"name": "lenet", "channels": 4, "blocks": 2}, "audio": {"name": "lenet", "channels": 4, "blocks": 3}}
QUIET = {"enable_progress_bar": False, "accelerator": "cpu"}


def av_digits_rows(av_digits, absent=True):
    """(labelled, unlabelled, val): 40 labelled and 160 unlabelled training rows and 60
    validation rows. With ``absent`` some unlabelled rows lose their image, some their audio,
    and a few both, so a fit meets missing modalities without a synthetic missingness spec."""
    train = av_digits.split("train").sample(200, random_state=0).reset_index(drop=True)
    labelled, unlabelled = train.iloc[:40].reset_index(drop=True), train.iloc[40:].reset_index(drop=True)
    if absent:
        unlabelled.loc[:15, "image"] = None
        unlabelled.loc[10:25, "audio"] = None
    return labelled, unlabelled, av_digits.split("val").sample(60, random_state=0)


def tiny_method(av_digits, method, **options):
    """(method, batch): the registered ``method`` with tiny encoders on the context of 24
    preprocessed training rows, and those rows as one batch, for single-step checks."""
    frame = av_digits.split("train").sample(24, random_state=1).reset_index(drop=True)
    pre = Preprocessor(av_digits.schema).fit(frame)
    types = {m: av_digits.schema.modality_type(m).value for m in pre.processors}
    context = ModelContext(pre.input_specs, types, pre.num_classes, av_digits.schema.task.value, list(pre.classes_))
    built = create_method(method, context, encoders=ENCODERS, dim=16, projection_dim=8, **options)
    return built, pre.transform(frame)[0]


def fit_semi_supervised(av_digits, method, run_dir, model=None, absent=True, **classifier):
    """(classifier, labelled, val) after two epochs of ``method`` on ``av_digits_rows``, logged
    as CSV under ``run_dir``; pseudo-labels from the first epoch on (start_epoch 0). ``model``
    adds to or overrides the tiny model options, ``classifier`` goes to ``Classifier``."""
    labelled, unlabelled, val = av_digits_rows(av_digits, absent)
    clf = Classifier(av_digits.schema, method=method, model={"encoders": ENCODERS, "dim": 32, "start_epoch": 0, **(model or {})},
                     batch_size=64, loggers=["csv"], run_dir=run_dir, trainer={**QUIET, "max_epochs": 2}, **classifier)
    clf.fit(labelled, val, unlabeled=unlabelled)
    return clf, labelled, val
