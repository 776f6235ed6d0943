"""splice.data through 🤗 datasets: Dataset / DatasetDict objects, save_to_disk folders, streaming, hostile files."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import datasets
import pytest

from splice.data import Columns, load_data
from splice.errors import DataError
from splice.train import TrainConfig

ROWS = [{"text": f"text number {i}", "label": ("pos", "neg", "neu")[i % 3]} for i in range(30)]


def by_text(records):
    return sorted(records, key=lambda record: record["text"])


def test_a_dataset_splits_like_the_same_rows_in_a_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    from_file = load_data(path, "classification")
    from_object = load_data(datasets.Dataset.from_list(ROWS), "classification")
    assert (from_object.train, from_object.validation, from_object.test) == (
        from_file.train, from_file.validation, from_file.test)
    assert from_object.labels == ("neg", "neu", "pos") and from_object.source == "a Dataset"


def test_column_options_and_missing_column_errors_apply_to_a_dataset():
    renamed = datasets.Dataset.from_dict({"sentence": [r["text"] for r in ROWS], "y": [r["label"] for r in ROWS]})
    splits = load_data(renamed, "classification", columns=Columns(text="sentence", label="y"), sizes=(1.0, 0, 0))
    assert by_text(splits.train) == by_text(ROWS)
    with pytest.raises(DataError, match=r"a Dataset has no column 'text'.*'sentence', 'y'.*--text-column"):
        load_data(renamed, "classification")


def test_a_dataset_dict_keeps_its_splits_and_cuts_the_missing_one_from_train():
    train, test = datasets.Dataset.from_list(ROWS[:24]), datasets.Dataset.from_list(ROWS[24:])
    splits = load_data(datasets.DatasetDict({"train": train, "test": test}), "classification", sizes=(0.8, 0.1, 0.1))
    assert by_text(splits.test) == by_text(ROWS[24:])  # as given, not reshuffled into train
    assert (len(splits.train), len(splits.validation)) == (21, 3)  # validation: 1/9 of train, as 0.1 is to 0.8 + 0.1
    assert by_text(splits.train + splits.validation) == by_text(ROWS[:24])
    assert any("test as the DatasetDict gives them" in note for note in splits.notes)
    whole = datasets.DatasetDict({"train": train, "dev": test, "test": test})
    given = load_data(whole, "classification")
    assert by_text(given.train) == by_text(ROWS[:24]) and given.validation == given.test == ROWS[24:]


def test_a_dataset_dict_without_train_or_with_an_unknown_label_is_refused():
    with pytest.raises(DataError, match="none called 'train'"):
        load_data(datasets.DatasetDict({"eval": datasets.Dataset.from_list(ROWS)}), "classification")
    mixed = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                                  "test": datasets.Dataset.from_list([{"text": "x", "label": "odd"}])})
    with pytest.raises(DataError, match=r"\['test'\] row 1: label 'odd' is not one of the known labels"):
        load_data(mixed, "classification", labels=["neg", "neu", "pos"])


def test_a_save_to_disk_folder_reads_as_the_dataset(tmp_path):
    dataset = datasets.Dataset.from_list(ROWS)
    dataset.save_to_disk(tmp_path / "one")
    datasets.DatasetDict({"train": dataset.select(range(24)), "test": dataset.select(range(24, 30))}).save_to_disk(
        tmp_path / "dict")
    assert load_data(tmp_path / "one", "classification").train == load_data(dataset, "classification").train
    assert by_text(load_data(tmp_path / "dict", "classification").test) == by_text(ROWS[24:])


def test_tagging_and_prompt_completion_from_datasets():
    sentences = datasets.Dataset.from_dict({"tokens": [["Paris", "is", f"nice{i}"] for i in range(5)],
                                            "tags": [["B-loc", "O", "O"]] * 5})
    assert load_data(sentences, "tagging").labels == ("O", "B-loc")
    pairs = datasets.Dataset.from_dict({"prompt": ["q1", "q2"], "completion": [" a1", " a2"]})
    train = load_data(pairs, "causal-lm", sizes=(1.0, 0, 0)).train
    assert sorted(train, key=lambda r: r["prompt"]) == [{"prompt": "q1", "completion": " a1"},
                                                        {"prompt": "q2", "completion": " a2"}]


def test_csv_cells_stay_the_strings_they_are_written_as(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nNA,007\nnull,1.0\nNone,007\n", encoding="utf-8")
    splits = load_data(path, "classification", sizes=(1.0, 0, 0))
    assert by_text(splits.train) == [{"text": "NA", "label": "007"}, {"text": "None", "label": "007"},
                                     {"text": "null", "label": "1.0"}]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_streaming_reads_the_same_rows(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    dataset = datasets.Dataset.from_list(ROWS)
    {".parquet": dataset.to_parquet, ".csv": lambda p: dataset.to_csv(p, index=False), ".jsonl": dataset.to_json}[
        suffix](path)
    streamed = load_data(path, "classification", streaming=True)
    assert sorted(map(str, streamed.split("all"))) == sorted(map(str, load_data(path, "classification").split("all")))


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "d.csv"
    os.mkfifo(fifo)
    errors = []
    reader = threading.Thread(target=lambda: errors.append(_error(fifo)), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and "not a regular file" in errors[0]


def _error(path: Path) -> str:
    try:
        load_data(path, "classification")
    except DataError as error:
        return str(error)
    return ""


def test_json_nested_deep_enough_to_crash_the_parser_is_refused_first(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": ' + "[" * 100_000 + "]" * 100_000 + ', "label": "y"}\n')
    with pytest.raises(DataError, match="line 2 nests 100,001 levels deep"):
        load_data(path, "classification")


def test_a_non_object_json_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is list, not a JSON object"):
        load_data(path, "classification")


def test_train_config_takes_a_dataset_and_names_the_run_after_it():
    config = TrainConfig(data=datasets.Dataset.from_list(ROWS), streaming=False)
    assert config.sizes == (0.8, 0.1, 0.1) and config.out_dir == Path("out/dataset-houlsby")
    assert config.to_dict()["data"] == "a Dataset"


def test_import_splice_does_not_import_datasets():
    code = "import sys, splice, splice.data, splice.train; print('datasets' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.stdout.strip() == "False"


def test_train_takes_a_dataset_dict_in_python_and_its_save_to_disk_folder_on_the_command_line(tmp_path, capsys):
    from splice.cli import main
    from splice.train import train

    from train_fixtures import save_tiny, sentiment_csv

    model = save_tiny("bert", tmp_path / "bert")
    rows = datasets.load_dataset("csv", data_files=str(sentiment_csv(tmp_path / "s.csv")), split="train")
    splits = rows.train_test_split(test_size=0.2, seed=0)
    result = train(TrainConfig(model=str(model), data=splits, method="bitfit", max_steps=2, batch_size=8,
                               out=str(tmp_path / "api")), say=lambda line: None)
    assert result.metrics["data"] == "DatasetDict 'csv'" and result.metrics["method"] == "bitfit"
    splits.save_to_disk(tmp_path / "saved")
    assert main(["train", "--model", str(model), "--data", str(tmp_path / "saved"), "--method", "bitfit",
                 "--max-steps", "2", "--batch-size", "8", "--out", str(tmp_path / "cli"), "-q"]) == 0
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["data"] == "DatasetDict 'csv'" and metrics["rows"]["test"] == 12
