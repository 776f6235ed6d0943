"""The pieces of splice serve on their own: aliases, metrics text, per-row sampling and stopping, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import httpx
import pytest
import torch

from splice.cli import main
from splice.serve.aliases import AliasTable, make_alias
from splice.serve.errors import BadRequest
from splice.serve.generation import Row, RowSampling, RowTracker
from splice.serve.metrics import Counter as PromCounter
from splice.serve.metrics import Histogram

from serving import char_tokenizer, encoder, save_adapters
from tiny_models import tiny_model


def test_alias_split_follows_the_weights_and_is_stable():
    alias = make_alias("s", {"v2": 9, "v3": 1, "off": 0})
    assert alias.split == {"v2": 0.9, "v3": 0.1}  # normalised, zero weights dropped
    picks = Counter(alias.pick(f"request-{i}") for i in range(2000))
    assert 0.86 < picks["v2"] / 2000 < 0.94
    assert all(alias.pick(f"request-{i}") == alias.pick(f"request-{i}") for i in range(50))
    with pytest.raises(BadRequest, match="finite"):
        make_alias("s", {"v2": float("nan")})


def test_alias_repoint_is_one_swap():
    table = AliasTable()
    assert table.set(make_alias("s", {"a": 1})) is None
    old = table.set(make_alias("s", {"b": 1}))
    assert old.split == {"a": 1.0} and table.get("s").pick("x") == "b"
    assert table.pointing_at("b") == ["s"] and table.pointing_at("a") == []


def test_metrics_text_format():
    counter = PromCounter("x_total", "Things.", ("kind",))
    counter.inc(kind='a"b')
    counter.inc(2, kind="c")
    histogram = Histogram("h_seconds", "Times.", (0.1, 1.0))
    for value in (0.05, 0.5, 5.0):
        histogram.observe(value)
    lines = counter.render() + histogram.render()
    # prometheus_client writes every number as a float (1.0, le="1.0")
    assert lines[:4] == ["# HELP x_total Things.", "# TYPE x_total counter", 'x_total{kind="a\\"b"} 1.0',
                         'x_total{kind="c"} 2.0']
    assert 'h_seconds_bucket{le="0.1"} 1.0' in lines and 'h_seconds_bucket{le="1.0"} 2.0' in lines
    assert 'h_seconds_bucket{le="+Inf"} 3.0' in lines and "h_seconds_count 3.0" in lines
    assert "h_seconds_sum 5.55" in lines and counter.value(kind="c") == 2 and histogram.count() == 3


def test_row_sampling_greedy_rows_keep_only_the_argmax_and_top_p_cuts_the_tail():
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0], [1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    rows = [Row([1], "x", 4, temperature=0), Row([1], "x", 4, temperature=2.0, top_p=0.7),
            Row([1], "x", 4, temperature=1.0)]
    out = RowSampling(rows)(torch.zeros(3, 1, dtype=torch.long), scores)
    assert out[0].tolist() == [float("-inf"), 0.0, float("-inf"), float("-inf")]
    kept = torch.isfinite(out[1])
    assert kept.tolist() == [False, True, True, False]  # the two best carry 0.73 >= 0.7 of the mass at temperature 2
    assert torch.equal(out[2], scores[2])


def test_row_sampling_never_leaves_a_row_nothing_to_sample():
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0], [60.0, 59.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).half()
    rows = [Row([1], "x", 4, top_p=1e-46),  # 0 in float32: used to drop every token, so the row sampled NaN
            Row([1], "x", 4, temperature=1e-6),  # logits / 1e-6 overflow half precision
            Row([1], "x", 4, top_p=0.5)]
    out = RowSampling(rows)(torch.zeros(3, 1, dtype=torch.long), scores)
    assert torch.isfinite(out[0]).tolist() == [False, True, False, False]  # the most likely token stays
    assert not out.isnan().any() and out[1].argmax() == 0
    probs = out.softmax(-1)
    assert not probs.isnan().any()
    torch.multinomial(probs, 1)  # what generate does next: it raised for the whole batch before


def test_row_tracker_streams_stops_and_holds_back_partial_stop_strings():
    tokenizer = char_tokenizer()
    ids = {c: tokenizer.convert_tokens_to_ids(c) for c in "abc#!"}
    pieces = []
    rows = [Row([1], "x", 10, stop=("#!",), sink=pieces.append), Row([1], "x", 2)]
    tracker = RowTracker(rows, lambda t: tokenizer.decode(t, skip_special_tokens=True), {2})
    tracker.put(torch.tensor([[1], [1]]))  # the prompts
    for a, b in (("a", "a"), ("b", "b"), ("#", "c")):
        tracker.put(torch.tensor([ids[a], ids[b]]))
    assert pieces == ["a", "b"]  # "#" may start the stop string: held back
    assert rows[1].finish_reason == "length" and rows[1].text == "ab"
    tracker.put(torch.tensor([ids["!"], 0]))
    assert rows[0].finish_reason == "stop" and rows[0].text == "ab" and pieces == ["a", "b"]
    assert tracker(torch.zeros(2, 1, dtype=torch.long), None).tolist() == [True, True]


def test_import_splice_does_not_import_the_server():
    code = "import sys, splice, splice.cli; splice.cli.build_parser(); print(sorted(m for m in sys.modules " \
           "if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette')))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_serve_command_refuses_bad_arguments(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "none"), "--quiet"]) == 2
    assert "neither a local folder nor a built-in" in capsys.readouterr().err


def test_serve_command_starts_prints_and_answers(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model("bert").save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    save_adapters(encoder(2), tmp_path / "adapters")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "splice", "serve", "--model", str(model_dir), "--adapters",
               str(tmp_path / "adapters"), "--port", "0", "--device", "cpu", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = process.stdout.readline()
        assert first.startswith("splice serve: http://127.0.0.1:"), first + process.stderr.read()
        url = first.split()[2]
        assert process.stdout.readline().strip() == "base model: model"
        assert process.stdout.readline().strip() == "adapters found: 2"
        body = httpx.post(f"{url}/v1/classify", json={"adapter": "a1", "inputs": ["hi"]}, timeout=30).json()
        assert body["results"][0]["label"] in ("neg", "neu", "pos")
    finally:
        process.terminate()
        assert process.wait(timeout=30) is not None


def test_discover_serves_splice_train_runs_under_their_folder_names(tmp_path):
    from splice.serve.sources import discover

    (tmp_path / "tweets-lora" / "adapter").mkdir(parents=True)
    (tmp_path / "tweets-lora" / "adapter" / "adapter.json").write_text('{"name": "tweets"}')
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "adapter.json").write_text('{"name": "saved-name"}')
    (tmp_path / "notes").mkdir()
    found, hub = discover(str(tmp_path))
    assert hub is None
    assert {name: where() for name, where in found} == {
        "saved-name": tmp_path / "plain", "tweets-lora": tmp_path / "tweets-lora" / "adapter"}
