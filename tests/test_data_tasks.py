"""Task loading: local files and directories, built-in loaders on tiny stand-in assets, hub logic offline."""

from __future__ import annotations

import bz2
import csv
import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from prunebert.data import builtin, hub, load_task, tokenize_task
from prunebert.data.schema import encode_labels
from prunebert.data.splits import carve, group_split, split_three, subsample
from prunebert.errors import PrunebertError


def _write_csv(path: Path, rows: list[dict[str, Any]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(n: int, labels: list[Any]) -> list[dict[str, Any]]:
    return [{"text": f"doc {i}", "label": labels[i % len(labels)]} for i in range(n)]


def _texts(ds: datasets.Dataset) -> list[str]:
    return list(ds["text"])


# --- splits -----------------------------------------------------------------------------------------------


def test_split_helpers_are_seeded_disjoint_and_complete() -> None:
    train, dev, test = split_three(100, seed=0)
    assert (len(train), len(dev), len(test)) == (80, 10, 10)
    assert sorted(train + dev + test) == list(range(100))
    assert split_three(100, seed=0) == (train, dev, test) != split_three(100, seed=1)
    keep, carved = carve(50, 0.1, seed=3)
    assert len(carved) == 5 and sorted(keep + carved) == list(range(50))
    assert subsample(10, None, 0) == list(range(10)) and len(subsample(10, 4, 0)) == 4


def test_group_split_keeps_groups_whole_and_fills_test_then_dev() -> None:
    groups = [f"g{i % 20}" for i in range(200)]  # 20 groups of 10 rows
    train, dev, test = group_split(groups, seed=0)
    assert (len(train), len(dev), len(test)) == (160, 20, 20)  # test until >= 10%, then dev
    for a, b in [(train, dev), (train, test), (dev, test)]:
        assert not {groups[i] for i in a} & {groups[i] for i in b}
    assert group_split(groups, seed=0) == (train, dev, test) != group_split(groups, seed=1)


# --- local files ------------------------------------------------------------------------------------------


def test_single_csv_is_split_80_10_10_with_sorted_string_labels(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "reviews.csv", _rows(20, ["pos", "neg"]))
    task = load_task(str(path))
    assert (len(task.train), len(task.dev), len(task.test)) == (16, 2, 2)
    assert task.label_names == ["neg", "pos"] and task.num_labels == 2 and task.metric == "accuracy"
    assert not task.is_pair and task.name == "reviews"
    assert sorted(_texts(task.train) + _texts(task.dev) + _texts(task.test)) == sorted(
        f"doc {i}" for i in range(20)
    )
    row = task.train[0]
    assert row["label"] == (0 if row["text"].endswith(("1", "3", "5", "7", "9")) else 1)
    assert _texts(load_task(str(path)).test) == _texts(task.test) != _texts(load_task(str(path), seed=1).test)


def test_tsv_and_pair_columns(tmp_path: Path) -> None:
    rows = [{"q": f"q{i}", "a": f"a{i}", "y": i % 3} for i in range(30)]
    path = _write_csv(tmp_path / "qa.tsv", rows, delimiter="\t")
    task = load_task(str(path), text_column="q", text_pair_column="a", label_column="y")
    assert task.is_pair and task.label_names == ["0", "1", "2"] and task.num_labels == 3
    assert set(task.train.column_names) == {"text", "text_pair", "label"}
    assert task.train.features["label"].dtype == "int64"


def test_jsonl_int_labels_kept_or_mapped_in_sorted_order(tmp_path: Path) -> None:
    kept = load_task(str(_write_jsonl(tmp_path / "a.jsonl", _rows(20, [0, 1, 2]))))
    assert kept.label_names == ["0", "1", "2"]
    assert all(int(r["text"].split()[1]) % 3 == r["label"] for r in kept.train)
    mapped = load_task(str(_write_jsonl(tmp_path / "b.jsonl", _rows(20, [5, 1]))))
    assert mapped.label_names == ["1", "5"]
    assert all((r["label"] == 1) == (int(r["text"].split()[1]) % 2 == 0) for r in mapped.train)


def test_float_labels_mean_regression(tmp_path: Path) -> None:
    task = load_task(str(_write_jsonl(tmp_path / "sts.jsonl", _rows(20, [0.5, 1, 4.25]))))
    assert task.label_names is None and task.num_labels == 1 and task.metric == "pearson_spearman"
    assert task.train.features["label"].dtype == "float32"
    csv_task = load_task(str(_write_csv(tmp_path / "sts.csv", _rows(20, ["0.5", "3", "1e-1"]))))
    assert csv_task.label_names is None


def test_json_list_file(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_rows(10, ["x", "y"])), encoding="utf-8")
    assert load_task(str(path)).label_names == ["x", "y"]


def test_directory_with_train_test_carves_dev(tmp_path: Path) -> None:
    _write_csv(tmp_path / "train.csv", _rows(50, ["a", "b"]))
    _write_jsonl(tmp_path / "test.jsonl", _rows(7, ["b", "c"]))
    task = load_task(str(tmp_path))
    assert (len(task.train), len(task.dev), len(task.test)) == (45, 5, 7)
    assert task.label_names == ["a", "b", "c"]  # classes of all splits


def test_directory_with_validation_file(tmp_path: Path) -> None:
    _write_csv(tmp_path / "train.csv", _rows(12, ["a", "b"]))
    _write_csv(tmp_path / "validation.csv", _rows(3, ["a", "b"]))
    _write_csv(tmp_path / "test.csv", _rows(4, ["a", "b"]))
    task = load_task(str(tmp_path))
    assert (len(task.train), len(task.dev), len(task.test)) == (12, 3, 4)


def test_max_train_examples_subsamples_train_only(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", _rows(100, ["a", "b"]))
    full, small = load_task(str(path)), load_task(str(path), max_train_examples=10)
    assert len(small.train) == 10 and set(_texts(small.train)) <= set(_texts(full.train))
    assert _texts(small.dev) == _texts(full.dev) and _texts(small.test) == _texts(full.test)
    assert _texts(load_task(str(path), max_train_examples=10).train) == _texts(small.train)
    with pytest.raises(PrunebertError, match="max_train_examples must be >= 1"):
        load_task(str(path), max_train_examples=0)


# --- validation errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"text_column": "txt"},
            r"text column 'txt' not in .*d\.csv \(columns: text, label\); pass --text_column",
        ),
        ({"text_pair_column": "b"}, r"text pair column 'b' not in .*; pass --text_pair_column NAME"),
        (
            {"label_column": "y"},
            r"label column 'y' not in .*\(columns: text, label\); pass --label_column",
        ),
    ],
)
def test_missing_columns_name_the_option(tmp_path: Path, kwargs: dict[str, str], message: str) -> None:
    path = _write_csv(tmp_path / "d.csv", _rows(10, ["a", "b"]))
    with pytest.raises(PrunebertError, match=message):
        load_task(str(path), **kwargs)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["a", 1], r"must be all strings or all integers .*found int, str"),
        ([True, False], r"must be all strings or all integers .*found other"),
        ([0, None], r"line 2 of .* has an empty label"),
        ([0, -1], r"include -1 \(hidden test labels\?\)"),
    ],
)
def test_bad_labels(tmp_path: Path, labels: list[Any], message: str) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", _rows(10, labels))
    with pytest.raises(PrunebertError, match=message):
        load_task(str(path))


def test_known_class_ids_are_kept_even_when_a_class_is_absent() -> None:
    labels, names = encode_labels({"train": [1, 1], "dev": [1], "test": [1]}, "x", ["neg", "pos"])
    assert names == ["neg", "pos"] and labels == {"train": [1, 1], "dev": [1], "test": [1]}
    with pytest.raises(PrunebertError, match=r"label 2 in x is not an id of the classes \['a', 'b'\]"):
        encode_labels({"train": [0, 2]}, "x", ["a", "b"])
    with pytest.raises(PrunebertError, match=r"labels \['c'\] in x are not in \['b', 'a'\]"):
        encode_labels({"train": ["a", "c"]}, "x", ["b", "a"])


def test_file_and_split_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("text,label\n", encoding="utf-8")
    with pytest.raises(PrunebertError, match=r"empty\.csv has no rows"):
        load_task(str(tmp_path / "empty.csv"))
    with pytest.raises(PrunebertError, match="does not exist"):
        load_task(str(tmp_path / "missing.csv"))
    _write_csv(tmp_path / "two.csv", _rows(2, ["a", "b"]))
    with pytest.raises(PrunebertError, match=r"the dev split of .* is empty"):
        load_task(str(tmp_path / "two.csv"))
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(PrunebertError, match=r"unsupported data file .*x\.parquet"):
        load_task(str(tmp_path / "x.parquet"))
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(PrunebertError, match=r"line 2 of .*bad\.jsonl is not valid JSON"):
        load_task(str(tmp_path / "bad.jsonl"))


def test_directory_errors(tmp_path: Path) -> None:
    with pytest.raises(PrunebertError, match=r"no train\.\{csv,tsv,jsonl,json\} in"):
        load_task(str(tmp_path))
    _write_csv(tmp_path / "train.csv", _rows(10, ["a", "b"]))
    with pytest.raises(PrunebertError, match=r"no test\.\{csv,tsv,jsonl,json\} in .*; add a test file"):
        load_task(str(tmp_path))


# --- built-in loaders on tiny stand-ins for the cached assets ----------------------------------------------


def test_rotten_tomatoes_drops_plot_rows_and_splits_by_movie(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"category": "plot", "text": "synopsis", "movie_name": "m0", "has_plot_and_reviews": "True"}]
    rows += [
        {
            "category": ["fresh", "rotten"][i % 2],
            "text": f"r{i}",
            "movie_name": f"m{i % 10}",
            "has_plot_and_reviews": "",
        }
        for i in range(100)
    ]
    path = tmp_path / "rt.csv.bz2"
    path.write_bytes(bz2.compress(_write_csv(tmp_path / "rt.csv", rows).read_bytes()))
    monkeypatch.setattr(builtin, "fetch", lambda name: path)
    task = load_task("rotten-tomatoes")
    assert task.label_names == ["rotten", "fresh"] and task.metric == "accuracy"
    assert (len(task.train), len(task.dev), len(task.test)) == (80, 10, 10)
    movie = {f"r{i}": i % 10 for i in range(100)}
    splits = [{movie[t] for t in _texts(s)} for s in (task.train, task.dev, task.test)]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert all(r["label"] == int(r["text"][1:]) % 2 ^ 1 for r in task.train)  # even rows fresh (1)


def _write_tab(path: Path, rows: list[tuple[str, str]]) -> None:
    header = "Category\tText\nd\tstring\nclass\t\n"
    path.write_text(header + "".join(f"{c}\t{t} \n" for c, t in rows), encoding="utf-8")


def test_reuters_reads_orange_tab_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_tab(
        tmp_path / "reuters-r8-train.tab", [(c, f"news {i}") for i, c in enumerate(["earn", "acq"] * 10)]
    )
    _write_tab(tmp_path / "reuters-r8-test.tab", [("trade", "t1"), ("earn", "t2")])
    monkeypatch.setattr(builtin, "fetch", lambda name: tmp_path)
    task = load_task("reuters-r8")
    assert task.label_names == ["acq", "earn", "trade"]
    assert (len(task.train), len(task.dev), len(task.test)) == (18, 2, 2)
    assert _texts(task.test) == ["t1", "t2"] and list(task.test["label"]) == [2, 1]


# --- hub (offline: the loader is replaced) -----------------------------------------------------------------


def _glue_like(n_train: int, pair: bool, regression: bool = False) -> datasets.DatasetDict:
    label: Any = datasets.Value("float32") if regression else datasets.ClassLabel(names=["no", "yes"])
    feats = {"sentence1": datasets.Value("string"), "label": label, "idx": datasets.Value("int32")}
    if pair:
        feats["sentence2"] = datasets.Value("string")

    def split(n: int, hidden: bool) -> datasets.Dataset:
        data: dict[str, list[Any]] = {"sentence1": [f"s{i}" for i in range(n)], "idx": list(range(n))}
        data["label"] = [-1] * n if hidden else [(i % 2) * (1.5 if regression else 1) for i in range(n)]
        if pair:
            data["sentence2"] = [f"t{i}" for i in range(n)]
        return datasets.Dataset.from_dict(data, features=datasets.Features(feats))

    return datasets.DatasetDict(
        {"train": split(n_train, False), "validation": split(6, False), "test": split(5, True)}
    )


def test_glue_uses_validation_as_test_and_carves_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str | None]] = []
    monkeypatch.setattr(hub, "hub_load", lambda n, c: calls.append((n, c)) or _glue_like(40, pair=True))
    task = load_task("glue/mrpc")
    assert calls == [("glue", "mrpc")]
    assert (len(task.train), len(task.dev), len(task.test)) == (36, 4, 6)
    assert task.is_pair and task.metric == "f1" and task.label_names == ["no", "yes"]
    assert set(task.train.column_names) == {"text", "text_pair", "label"}


def test_glue_stsb_is_regression(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "hub_load", lambda n, c: _glue_like(20, pair=True, regression=True))
    task = load_task("glue/stsb")
    assert task.label_names is None and task.metric == "pearson_spearman" and task.num_labels == 1


def test_hub_with_labelled_test_and_no_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    dd = datasets.DatasetDict(
        {
            k: datasets.Dataset.from_dict({"text": ["x"] * n, "label": [0, 1] * (n // 2)})
            for k, n in [("train", 20), ("test", 4)]
        }
    )
    monkeypatch.setattr(hub, "hub_load", lambda n, c: dd)
    task = load_task("imdb")
    assert (len(task.train), len(task.dev), len(task.test)) == (18, 2, 4) and task.metric == "accuracy"


def test_hub_failure_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str, config: str | None) -> datasets.DatasetDict:
        raise ConnectionError("Couldn't reach 'someone/thing' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(hub, "hub_load", offline)
    with pytest.raises(PrunebertError) as err:
        load_task("someone/thing")
    msg = str(err.value)
    assert msg.startswith(
        "dataset 'someone/thing' is not built-in (built-ins: reuters-r8, rotten-tomatoes), not a"
    )
    assert "(ConnectionError: Couldn't reach" in msg and msg.endswith(
        "a local csv/tsv/jsonl path or a built-in name"
    )
    assert "\n" not in msg


def test_parse_hub_spec() -> None:
    assert hub.parse_hub_spec("glue/sst2") == ("glue", "sst2")
    assert hub.parse_hub_spec("nyu-mll/glue/cola") == ("nyu-mll/glue", "cola")
    assert hub.parse_hub_spec("super_glue:boolq") == ("super_glue", "boolq")
    assert hub.parse_hub_spec("imdb") == ("imdb", None)


# --- tokenization -----------------------------------------------------------------------------------------


def test_tokenize_task_single_and_pair(tmp_path: Path, tiny_tokenizer: Any) -> None:
    rows = [{"a": "the cat sat on the mat " * (i + 1), "b": "a dog ran", "y": i % 2} for i in range(20)]
    task = load_task(str(_write_jsonl(tmp_path / "d.jsonl", rows)), text_column="a", label_column="y")
    out = tokenize_task(task, tiny_tokenizer, max_length=16)
    assert set(out) == {"train", "dev", "test"}
    assert set(out["train"].column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    lengths = [len(ids) for ids in out["train"]["input_ids"]]
    assert max(lengths) == 16 and len(set(lengths)) > 1  # truncated, not padded
    assert list(out["test"]["labels"]) == list(task.test["label"])
    pair = load_task(str(tmp_path / "d.jsonl"), text_column="a", text_pair_column="b", label_column="y")
    ids = tokenize_task(pair, tiny_tokenizer, max_length=64)["train"][0]
    assert 1 in ids["token_type_ids"] and ids["input_ids"].count(tiny_tokenizer.sep_token_id) == 2


def test_tokenize_regression_labels_are_float32(tmp_path: Path, tiny_tokenizer: Any) -> None:
    task = load_task(str(_write_jsonl(tmp_path / "r.jsonl", _rows(20, [0.5, 2.0]))))
    assert tokenize_task(task, tiny_tokenizer, 8)["dev"].features["labels"].dtype == "float32"
