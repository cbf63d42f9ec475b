"""experiments/demo/get_data.py: strict parsing, the fixed split, labels, sanitizing, atomic outputs.

Synthetic archives are built in tmp_path with the real member paths; no test needs the network. One test uses
the real sdist when a previous `get_data.py` run cached it under data/demo/download.
"""
from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from experiments.demo import get_data as gd

ROOT = Path(__file__).resolve().parents[1]
TASK_DEF = ROOT / "experiments" / "demo" / "demo_task_def.yml"
REAL_SDIST = ROOT / "data" / "demo" / "download" / "vaderSentiment-3.3.2.tar.gz"


GOOD_LINES = [
    "1\t2.26666666667\tThe Rock is destined to be the 21st Century's new ''Conan''.",
    "2\t-0.6\tEffective but too tepid biopic",
    "3\t0.0\tIt is a film.",
    "4\t3.9\tClich\u00e9s disappear \u2013 a gem.",
    "5\t-3.875\tA pretentious mess.",
    "6\t1\t\"Quoted\" praise, with    spaces.",
]


def _tar_bytes(members: dict[str, bytes], extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or ():
            tar.addfile(info)
    return buf.getvalue()


def make_sdist(tmp_path: Path, text: bytes, name: str = "sdist.tar.gz") -> Path:
    """An sdist shaped like the real one: outer tar.gz -> inner tar.gz -> the ground-truth file."""
    inner = _tar_bytes({gd.DATA_MEMBER: text})
    path = tmp_path / name
    path.write_bytes(_tar_bytes({gd.INNER_MEMBER: inner, "vaderSentiment-3.3.2/setup.py": b""}))
    return path


def crlf(lines) -> bytes:
    return "\r\n".join(lines).encode("utf-8")  # the real file: CRLF, no newline after the last line


@pytest.fixture
def trusted(monkeypatch):
    """Make the module trust a synthetic sdist by recording its sha256 as the expected one."""
    def trust(path: Path) -> Path:
        monkeypatch.setattr(gd, "SDIST_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
        return path
    return trust


# ------------------------------------------------------------------------------------------ parsing
def test_parse_real_format_crlf_utf8():
    snippets = gd.parse_ground_truth(crlf(GOOD_LINES), "gt.txt")
    assert [s.uid for s in snippets] == ["1", "2", "3", "4", "5", "6"]
    assert [s.valence for s in snippets] == [2.26666666667, -0.6, 0.0, 3.9, -3.875, 1.0]
    assert snippets[3].text == "Clich\u00e9s disappear \u2013 a gem."
    assert snippets[5].text == '"Quoted" praise, with spaces.'
    assert all("\r" not in s.text for s in snippets)


def test_parse_accepts_bom_and_trailing_newline():
    raw = b"\xef\xbb\xbf" + crlf(GOOD_LINES[:2]) + b"\r\n"
    assert [s.uid for s in gd.parse_ground_truth(raw, "gt.txt")] == ["1", "2"]


@pytest.mark.parametrize("bad_line, message", [
    ("7\t1.5", "gt.txt:3: expected id<TAB>valence<TAB>text, got 2 field(s)"),
    ("7\tgood\tnice", "gt.txt:3: valence 'good' is not a number"),
    ("7\t4.5\tnice", "gt.txt:3: valence 4.5 outside [-4, 4]"),
    ("7\tnan\tnice", "gt.txt:3: valence nan outside [-4, 4]"),
    ("x7\t1.0\tnice", "gt.txt:3: id 'x7' is not a non-negative integer"),
    ("7\t1.0\t \t ", "gt.txt:3: empty text"),
    ("1\t1.0\tagain", "gt.txt:3: duplicate id 1 (first on line 1)"),
])
def test_bad_line_names_file_and_line(bad_line, message):
    raw = crlf(GOOD_LINES[:2] + [bad_line] + GOOD_LINES[3:])
    with pytest.raises(gd.DemoDataError) as err:
        gd.parse_ground_truth(raw, "gt.txt")
    assert str(err.value) == message


def test_invalid_utf8_names_line():
    raw = crlf(GOOD_LINES[:4]) + b"\r\n9\t1.0\tcaf\xe9 au lait"  # a latin-1 byte on line 5
    with pytest.raises(gd.DemoDataError) as err:
        gd.parse_ground_truth(raw, "gt.txt")
    assert str(err.value) == "gt.txt:5: not valid UTF-8 (invalid continuation byte at byte 9)"


def test_empty_file_rejected():
    with pytest.raises(gd.DemoDataError, match=r"^gt.txt: no data lines$"):
        gd.parse_ground_truth(b"", "gt.txt")


# ------------------------------------------------------------------------------------------ sanitizing
def test_sanitize_collapses_every_line_and_cell_breaker():
    nasty = " a\tb\r\nc\x0bd\x0ce\x1cf\x85g\u2028h\u2029i\u00a0j  k\x00l "
    assert gd.sanitize(nasty) == "a b c d e f g h i j k l"


def test_tab_inside_text_stays_text_and_rows_stay_one_per_line(tmp_path):
    raw = crlf(["1\t1.0\tleft\tright", "2\t-1.0\tup\u2028down\x1ethere\rback"])
    snippets = gd.parse_ground_truth(raw, "gt.txt")
    assert [s.text for s in snippets] == ["left right", "up down there back"]
    out = tmp_path / "t.tsv"
    gd.write_tsv(out, gd.task_rows("vaderpol", snippets))
    text = out.read_text(encoding="utf-8")
    assert text.splitlines() == ["1\tpositive\tleft right", "2\tnegative\tup down there back"]


# ------------------------------------------------------------------------------------------ labels
def test_label_mapping_by_hand():
    snippets = gd.parse_ground_truth(crlf(GOOD_LINES), "gt.txt")
    assert gd.task_rows("vaderpol", snippets) == [
        ("1", "positive", snippets[0].text), ("2", "negative", snippets[1].text),
        ("4", "positive", snippets[3].text), ("5", "negative", snippets[4].text),
        ("6", "positive", snippets[5].text)]  # uid 3 (valence exactly 0) is left out
    assert [row[:2] for row in gd.task_rows("vaderval", snippets)] == [
        ("1", "2.26666666667"), ("2", "-0.6"), ("3", "0.0"), ("4", "3.9"), ("5", "-3.875"), ("6", "1.0")]
    with pytest.raises(ValueError, match="unknown demo task 'vader_pol'"):
        gd.task_rows("vader_pol", snippets)


def test_task_def_matches_the_data():
    defs = yaml.safe_load(TASK_DEF.read_text())
    assert sorted(defs) == sorted(gd.TASKS)
    assert all("_" not in name for name in defs)
    assert defs["vaderpol"]["labels"] == sorted({gd.polarity(v) for v in (-1.0, 1.0)})
    assert defs["vaderpol"]["n_class"] == len(defs["vaderpol"]["labels"])
    assert defs["vaderval"]["task_type"] == "Regression" and defs["vaderval"]["loss"] == "MseCriterion"
    for d in defs.values():
        assert d["data_format"] == "PremiseOnly" and d["split_names"] == list(gd.SPLITS)


def test_task_def_loads_with_project_loader():
    task_def = pytest.importorskip("data_utils.task_def", reason="data_utils/task_def.py not in this checkout yet")
    defs = task_def.load_task_defs(str(TASK_DEF))
    assert set(defs) == set(gd.TASKS)


# ------------------------------------------------------------------------------------------ split
def _independent_is_dev(text: str) -> bool:
    digest = hashlib.sha256(("vader-demo-split:" + text).encode("utf-8")).hexdigest()
    return int(digest[:16], 16) % 1000 < 150


def _many(n: int) -> list:
    return [gd.Snippet(str(i), (i % 9 - 4) * 0.5, f"sentence number {i} is fine") for i in range(1, n + 1)]


def test_split_matches_independent_hash_and_ignores_other_rows():
    snippets = _many(400)
    full = gd.build_tables(snippets)
    dev_uids = {row[0] for row in full["vaderval_dev"]}
    assert dev_uids == {s.uid for s in snippets if _independent_is_dev(s.text)}
    assert 30 <= len(dev_uids) <= 90  # ~15% of 400
    half = gd.build_tables(snippets[::2])  # dropping rows never moves the remaining ones
    assert {row[0] for row in half["vaderval_dev"]} == dev_uids & {s.uid for s in snippets[::2]}
    assert gd.build_tables(list(reversed(snippets)))["vaderval_dev"] == full["vaderval_dev"][::-1]


def test_duplicate_sentences_share_a_side():
    base = _many(200)
    twins = [gd.Snippet(str(1000 + i), 1.0, s.text) for i, s in enumerate(base)]
    tables = gd.build_tables(base + twins)
    dev_texts = [row[2] for row in tables["vaderval_dev"]]
    train_texts = {row[2] for row in tables["vaderval_train"]}
    assert dev_texts and not set(dev_texts) & train_texts
    assert len(dev_texts) == 2 * len(set(dev_texts))


def test_max_train_is_a_fixed_growing_subset():
    snippets = _many(300)
    full = gd.build_tables(snippets)
    small, large = gd.build_tables(snippets, max_train=20), gd.build_tables(snippets, max_train=60)
    for task in gd.TASKS:
        assert len(small[f"{task}_train"]) == 20 and len(large[f"{task}_train"]) == 60
        assert set(small[f"{task}_train"]) <= set(large[f"{task}_train"]) <= set(full[f"{task}_train"])
        assert small[f"{task}_dev"] == full[f"{task}_dev"]  # dev is never capped
        uids = [int(r[0]) for r in small[f"{task}_train"]]
        assert uids == sorted(uids)  # original order kept
    assert gd.build_tables(snippets, max_train=20) == small


# ------------------------------------------------------------------------------------------ archives
def test_extract_reads_only_the_named_member(tmp_path):
    sdist = make_sdist(tmp_path, crlf(GOOD_LINES))
    assert gd.extract_ground_truth(sdist) == crlf(GOOD_LINES)


def test_extract_refuses_missing_and_non_regular_members(tmp_path):
    outer = tmp_path / "no_inner.tar.gz"
    outer.write_bytes(_tar_bytes({"vaderSentiment-3.3.2/setup.py": b""}))
    with pytest.raises(gd.DemoDataError, match=f"^{outer}: member {gd.INNER_MEMBER} not found$"):
        gd.extract_ground_truth(outer)
    link = tarfile.TarInfo(gd.DATA_MEMBER)
    link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    evil_inner = _tar_bytes({}, extra=[link])
    evil = tmp_path / "evil.tar.gz"
    evil.write_bytes(_tar_bytes({gd.INNER_MEMBER: evil_inner}))
    with pytest.raises(gd.DemoDataError, match="is not a regular file$"):
        gd.extract_ground_truth(evil)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not a tarball")
    with pytest.raises(gd.DemoDataError, match=f"^{garbage}: not a readable tar archive"):
        gd.extract_ground_truth(garbage)


# ------------------------------------------------------------------------------------------ fetching
def _copy_command(src: Path):
    return lambda dest: [sys.executable, "-c", "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])",
                         str(src), str(dest / gd.SDIST_NAME)]


def test_fetch_downloads_verifies_and_caches(tmp_path, trusted):
    src = trusted(make_sdist(tmp_path, crlf(GOOD_LINES)))
    cache = tmp_path / "cache"
    got = gd.fetch_sdist(cache, _copy_command(src))
    assert got == cache / gd.SDIST_NAME and got.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [gd.SDIST_NAME]  # temp folder gone
    fail = lambda dest: [sys.executable, "-c", "raise SystemExit(3)"]  # noqa: E731
    assert gd.fetch_sdist(cache, fail) == got  # present: no download attempted


def test_fetch_offline_is_one_clear_line_and_leaves_nothing(tmp_path):
    offline = lambda dest: [sys.executable, "-c",  # noqa: E731
                            "import sys; sys.stderr.write('Looking in indexes\\nERROR: No matching distribution"
                            " found for vaderSentiment==3.3.2\\n'); sys.exit(1)"]
    cache = tmp_path / "cache"
    with pytest.raises(gd.DemoDataError) as err:
        gd.fetch_sdist(cache, offline)
    assert str(err.value) == ("could not download vaderSentiment==3.3.2 from the package index (offline? pass "
                              "--sdist FILE to use a copy): ERROR: No matching distribution found for "
                              "vaderSentiment==3.3.2")
    assert list(cache.iterdir()) == []


def test_fetch_rejects_wrong_checksum_without_caching(tmp_path):
    src = make_sdist(tmp_path, crlf(GOOD_LINES))
    cache = tmp_path / "cache"
    with pytest.raises(gd.DemoDataError, match=r"sha256 [0-9a-f]{64} differs from the recorded " + gd.SDIST_SHA256):
        gd.fetch_sdist(cache, _copy_command(src))
    assert list(cache.iterdir()) == []


# ------------------------------------------------------------------------------------------ CLI
def test_main_writes_four_canonical_tsvs(tmp_path, trusted, capsys):
    lines = [f"{i}\t{(i % 17 - 8) / 2}\tmovie sentence {i}\twith a tab" for i in range(1, 121)]
    sdist = trusted(make_sdist(tmp_path, crlf(lines)))
    out = tmp_path / "canonical"
    assert gd.main(["--sdist", str(sdist), "--out_dir", str(out), "--max_train", "50"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["vaderpol_dev.tsv", "vaderpol_train.tsv", "vaderval_dev.tsv", "vaderval_train.tsv"]
    val = [ln.split("\t") for ln in (out / "vaderval_train.tsv").read_text(encoding="utf-8").splitlines()]
    assert len(val) == 50 and all(len(r) == 3 and r[2] == f"movie sentence {r[0]} with a tab" for r in val)
    assert all(float(r[1]) == (int(r[0]) % 17 - 8) / 2 for r in val)
    pol = [ln.split("\t") for ln in (out / "vaderpol_dev.tsv").read_text(encoding="utf-8").splitlines()]
    assert pol and all(r[1] == ("positive" if int(r[0]) % 17 > 8 else "negative") for r in pol)
    assert all(int(r[0]) % 17 != 8 for r in pol)  # valence 0 rows are not in vaderpol
    assert "vaderval_train.tsv\t50 rows" in capsys.readouterr().out


def test_main_bad_input_exits_nonzero_with_one_line_and_writes_nothing(tmp_path, trusted, capsys):
    lines = GOOD_LINES[:3] + ["4\tpositive\toops"]
    sdist = trusted(make_sdist(tmp_path, crlf(lines)))
    out = tmp_path / "canonical"
    assert gd.main(["--sdist", str(sdist), "--out_dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == (f"get_data.py: error: {sdist}:{gd.DATA_MEMBER}:4: valence 'positive' is not a number\n")
    assert not out.exists()
    assert gd.main(["--sdist", str(sdist), "--out_dir", str(out), "--max_train", "0"]) == 1
    assert capsys.readouterr().err == "get_data.py: error: --max_train must be a positive integer, got 0\n"


def test_main_untrusted_sdist_is_refused(tmp_path, capsys):
    sdist = make_sdist(tmp_path, crlf(GOOD_LINES))
    assert gd.main(["--sdist", str(sdist), "--out_dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"get_data.py: error: {sdist}: sha256 ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_write_is_atomic_on_failure(tmp_path):
    target = tmp_path / "t.tsv"
    target.write_text("old\n")

    def rows():
        yield ("1", "positive", "fine")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        gd.write_tsv(target, rows())
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["t.tsv"]


# ------------------------------------------------------------------------------------------ real data
@pytest.mark.skipif(not REAL_SDIST.is_file(),
                    reason=f"real sdist not cached at {REAL_SDIST} (run experiments/demo/get_data.py once)")
def test_real_sdist_counts(tmp_path):
    gd.verify_sdist(REAL_SDIST)
    snippets = gd.parse_ground_truth(gd.extract_ground_truth(REAL_SDIST), "real")
    assert len(snippets) == 10605 and sum(s.valence == 0 for s in snippets) == 37
    tables = gd.build_tables(snippets)
    assert {k: len(v) for k, v in tables.items()} == {
        "vaderpol_train": 8913, "vaderpol_dev": 1655, "vaderval_train": 8941, "vaderval_dev": 1664}
    assert tables["vaderval_dev"][0] == ("1", "2.26666666667", snippets[0].text)
