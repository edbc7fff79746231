"""Publishing a submission: validated, written atomically as new files, submission.csv updated, registered."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pandas as pd
import pytest

from src import publish, registry
from src.errors import DigitsError


def test_validator_accepts_a_good_submission_and_names_what_is_wrong():
    good = publish.make_submission(np.array([3, 1, 4]))
    publish.validate_submission(good, 3)
    with pytest.raises(DigitsError, match="3 rows, but the test set has 4"):
        publish.validate_submission(good, 4)
    with pytest.raises(DigitsError, match="line 3: ImageId must be 2"):
        publish.validate_submission(good.assign(ImageId=[1, 3, 2]), 3)
    with pytest.raises(DigitsError, match="line 4: Label 10 is outside 0-9"):
        publish.validate_submission(good.assign(Label=[1, 2, 10]), 3)
    with pytest.raises(DigitsError, match="columns must be ImageId,Label"):
        publish.validate_submission(good.rename(columns={"Label": "label"}), 3)


def test_publish_writes_new_files_updates_submission_csv_and_registers(tmp_path):
    labels = np.arange(10) % 10
    path = publish.publish(labels, tmp_path, "first", {"cv": 0.5}, preset="fast", cv="0.50000")
    assert pd.read_csv(path).equals(publish.make_submission(labels))
    assert (tmp_path / "submission.csv").read_text() == path.read_text()
    assert json.loads((tmp_path / "first.json").read_text()) == {"cv": 0.5}
    again = publish.publish(np.zeros(10, int), tmp_path, "first", {}, preset="fast")
    assert again.name == "first_2.csv" and pd.read_csv(path).equals(publish.make_submission(labels))  # untouched
    assert [r["file"] for r in registry.read(tmp_path / registry.INDEX_NAME)] == ["first.csv", "first_2.csv"]
    with pytest.raises(DigitsError, match="rows"):  # invalid: nothing is written at all
        publish.publish(labels, tmp_path, "second", {"test_rows": 11})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "first.csv", "first.json", "first_2.csv", "first_2.json", "index.csv", "submission.csv",
    ]  # fmt: skip


def publish_many(args):
    folder, worker = args
    return [publish.publish(np.full(5, worker), folder, "same-second", {"worker": worker}).name for _ in range(5)]


def test_two_processes_finishing_in_the_same_second_never_share_a_name(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        names = [n for names in pool.map(publish_many, [(tmp_path, 1), (tmp_path, 2)]) for n in names]
    assert len(set(names)) == 10
    for name in names:  # each file holds one worker's labels and its own metadata
        worker = json.loads((tmp_path / name).with_suffix(".json").read_text())["worker"]
        assert set(pd.read_csv(tmp_path / name)["Label"]) == {worker}
    assert sorted(r["file"] for r in registry.read(tmp_path / registry.INDEX_NAME)) == sorted(names)
