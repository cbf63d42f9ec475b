"""download.sh against a local HTTP server: files land verified, bad bytes and dead servers leave nothing behind.

Every network step of download.sh takes its base URL from the environment (GLUE_BASE_URL, GLUE_ZIP_BASE_URL,
SQUAD_BASE_URL, HF_ENDPOINT), so a threaded http.server in the test plays raw.githubusercontent.com,
dl.fbaipublicfiles.com, rajpurkar.github.io and the Hugging Face hub (including the hub's hash headers and its
redirect of weights to a CDN).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "download.sh"
SHARED = Path(os.environ.get("SAGE_SHARED_DIR", ROOT.parent / "shared"))
FILE_TASKS = ["CoLA", "SST-2", "MRPC", "STS-B", "RTE", "WNLI"]
ZIP_TASKS = {"QNLI": "QNLIv2.zip", "QQP": "QQP-clean.zip", "MNLI": "MNLI.zip"}
ROBERTA_LARGE = ("FacebookAI/roberta-large", "722cf37b1afa9454edce342e7895e588b6ff1d59")
BERT_BASE = ("google-bert/bert-base-uncased", "86b5e0934494bd15c9632b12f734a8a67f723594")
SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset"
#: The official SQuAD files and their sha256, as independent public records (ParlAI, Hugging Face datasets) give them.
SQUAD_OFFICIAL = {
    "SQuAD-v1.1/train-v1.1.json": "3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955",
    "SQuAD-v1.1/dev-v1.1.json": "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9",
    "SQuAD-v2.0/train-v2.0.json": "68dcfbb971bd3e96d5b46c7177b16c1a4e7d4bdef19fb204502738552dede002",
    "SQuAD-v2.0/dev-v2.0.json": "80a5225e94905956a6446d296ca1093975c4d3b3260f1d6c8f68bc2ab77182d8",
}

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="download.sh needs curl")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_sha1(data: bytes) -> str:
    """The id git (and the hub's ETag for small files) gives a blob, computed here without download.sh's help."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ----------------------------------------------------------------------------------------------- server
@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict = field(default_factory=dict)
    fail_first: int = 0          # answer 503 to this many requests first
    stall: float = 0.0           # send half the body, then wait this long


class Server:
    """A threaded HTTP server answering GET from a path -> Route table; counts requests per path."""

    def __init__(self, routes: Optional[dict[str, Route]] = None):
        self.routes = routes or {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                n = server.hits[self.path] = server.hits.get(self.path, 0) + 1
                route = server.routes.get(self.path)
                if route is None:
                    route = Route(b"not found", 404)
                elif n <= route.fail_first:
                    route = Route(b"busy", 503)
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if route.stall:
                    self.wfile.write(route.body[: len(route.body) // 2])
                    self.wfile.flush()
                    time.sleep(route.stall)
                    return
                self.wfile.write(route.body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def dead_url() -> str:
    """A localhost URL nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def run(args, tmp_path: Path, **env_extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") and k != "GLUE_DIR"}
    env.update(DOWNLOAD_RETRIES="0", DOWNLOAD_RETRY_DELAY="0", PYTHON=sys.executable, NO_PROXY="*")
    env.update(env_extra)
    cmd = ["bash", str(SCRIPT), *args, "--data_dir", str(tmp_path / "glue"), "--model_dir", str(tmp_path / "models")]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("download.sh: error: "), lines[0]
    return lines[0]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def write_manifest(tmp_path: Path, name: str, rows: list[str]) -> str:
    path = tmp_path / name
    path.write_text("# test table\n" + "\n".join(rows) + "\n")
    return str(path)


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def list_plan(*args: str) -> list[str]:
    proc = subprocess.run(["bash", str(SCRIPT), "--list", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


# ---------------------------------------------------------------------------------------------- usage
def test_help_names_modes_sources_and_overrides():
    proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    for needle in ("data_only", "model_only", "all", "--tasks", "--models", "--force", "--list", "GLUE_BASE_URL",
                   "GLUE_ZIP_BASE_URL", "HF_ENDPOINT", "DOWNLOAD_RETRIES", "DOWNLOAD_RETRY_DELAY", "offline?",
                   "Not covered: the GLUE diagnostic set (AX)", "QNLIv2.zip", "bert-base-uncased"):
        assert needle in proc.stdout, needle


@pytest.mark.parametrize("args, env, message", [
    (["--bogus"], {}, "unknown option '--bogus'"),
    (["extra"], {}, "unknown mode 'extra'"),
    (["data_only", "all"], {}, "two modes given (data_only and all)"),
    (["--tasks", "cola,foo"], {}, "unknown task 'foo' in --tasks"),
    (["--tasks="], {}, "--tasks needs a value"),
    (["--tasks", ","], {}, "--tasks is empty"),
    (["--models", "roberta-base"], {}, "--models needs MODE model_only or all"),
    (["model_only", "--tasks", "rte"], {}, "--tasks does not apply to model_only"),
    (["model_only", "--models", "gpt2"], {}, "unknown model 'gpt2' in --models"),
    (["--force=1"], {}, "--force takes no value"),
    ([], {"DOWNLOAD_RETRIES": "many"}, "DOWNLOAD_RETRIES must be a whole number"),
    ([], {"DOWNLOAD_RETRY_DELAY": "-1"}, "DOWNLOAD_RETRY_DELAY must be a whole number"),
    ([], {"DOWNLOAD_GLUE_MANIFEST": "/nonexistent/table"}, "manifest file /nonexistent/table not found"),
    ([], {"DOWNLOAD_SQUAD_MANIFEST": "/nonexistent/squad"}, "manifest file /nonexistent/squad not found"),
])
def test_bad_usage_is_one_line_exit_2_and_touches_nothing(tmp_path, args, env, message):
    proc = run(args, tmp_path, GLUE_BASE_URL=dead_url(), **env)
    assert proc.returncode == 2
    assert message in one_error_line(proc)
    assert proc.stdout == "" and files_under(tmp_path) == []


def test_malformed_manifest_row_names_file_and_line(tmp_path):
    table = write_manifest(tmp_path, "table", ["CoLA file " + "a" * 64 + " x/train.tsv", "CoLA file abc x/dev.tsv"])
    proc = run(["--tasks", "cola"], tmp_path, DOWNLOAD_GLUE_MANIFEST=table)
    assert proc.returncode == 2
    assert f"{table} line 3: expected 'TASK file SHA256 PATH'" in one_error_line(proc)
    assert not (tmp_path / "glue").exists()


# ------------------------------------------------------------------------------------- the built-in table
def _plan_files() -> dict[str, set[str]]:
    """Task folder -> file names the default data_only plan installs, read from --list."""
    plan: dict[str, set[str]] = {}
    for line in list_plan():
        target = line.split()[0]
        task, rest = target.split("/", 1)
        names = rest.strip("{}").split(",")
        plan.setdefault(task, set()).update(names)
    return plan


def test_plan_installs_exactly_the_files_the_glue_converter_reads():
    from experiments.glue import glue_prepro as module
    # extras (GLUE's diagnostic set, scored as MNLI's ax_test) are placed by hand: download.sh says so
    expected = {t.folder: {f.name for f in t.files if not f.extra} for t in module.GLUE_TASKS.values()}
    assert _plan_files() == expected


def test_builtin_file_rows_equal_the_shared_manifest(glue_dir):
    """Every pinned file's sha256, repository, commit and path equal ../shared/glue/MANIFEST.tsv."""
    rows = [line.split("\t") for line in (glue_dir / "MANIFEST.tsv").read_text().splitlines()[1:]]
    manifest = {(r[1], r[3], f"https://raw.githubusercontent.com/{r[4]}/{r[6]}/{r[5]}")
                for r in rows if r[1].endswith(".tsv") and r[0] in FILE_TASKS}
    listed = {(line.split()[0], line.split()[2], line.split()[3]) for line in list_plan()
              if line.split()[1] == "sha256"}
    assert listed == manifest
    assert len(listed) == 18


def test_zip_rows_pin_the_glue_archives():
    zips = {line.split()[0].split("/")[0]: line.split() for line in list_plan() if line.split()[1] == "zip"}
    assert set(zips) == set(ZIP_TASKS)
    for task, archive in ZIP_TASKS.items():
        assert zips[task][4] == f"https://dl.fbaipublicfiles.com/glue/data/{archive}"
    assert zips["MNLI"][3] == "e7c1d896d26ed6caf700110645df426cc2d8ebf02a5ab743d5a5c68ac1c83633"


def test_model_plan_pins_revisions_and_known_weight_hashes():
    lines = list_plan("model_only")
    assert len(lines) == 15
    bert = next(line for line in lines if line.startswith("bert-base-uncased/model.safetensors"))
    assert "sha256 68d45e234eb4a928074dfd868cead0219ab85354cc53d20e772753c6bb9169d3" in bert
    assert bert.endswith(f"https://huggingface.co/{BERT_BASE[0]}/resolve/{BERT_BASE[1]}/model.safetensors")
    large = [line for line in lines if line.startswith("roberta-large/")]
    assert {line.split()[0] for line in large} == {f"roberta-large/{f}" for f in
                                                   ("config.json", "vocab.json", "merges.txt", "tokenizer.json",
                                                    "model.safetensors")}
    assert all(f"/resolve/{ROBERTA_LARGE[1]}/" in line for line in large)


# ------------------------------------------------------------------------------------------- GLUE files
def test_real_glue_files_land_verified_and_a_rerun_fetches_nothing(glue_dir, tmp_path):
    rows = [line.split("\t") for line in (glue_dir / "MANIFEST.tsv").read_text().splitlines()[1:]]
    routes = {f"/{r[4]}/{r[6]}/{r[5]}": Route((glue_dir / r[1]).read_bytes())
              for r in rows if r[0] in FILE_TASKS}
    with Server(routes) as srv:
        proc = run(["data_only", "--tasks", ",".join(FILE_TASKS)], tmp_path, GLUE_BASE_URL=srv.url)
        assert proc.returncode == 0, proc.stderr
        for r in rows:
            if r[0] in FILE_TASKS:
                assert (tmp_path / "glue" / r[1]).read_bytes() == (glue_dir / r[1]).read_bytes(), r[1]
        assert files_under(tmp_path / "glue") == sorted(
            [t for t in FILE_TASKS] + [r[1] for r in rows if r[0] in FILE_TASKS])
        assert not (tmp_path / "models").exists()
        hits = dict(srv.hits)
        again = run(["--tasks", "cola,rte"], tmp_path, GLUE_BASE_URL=srv.url)
        assert again.returncode == 0 and "CoLA: up to date" in again.stdout
        assert srv.hits == hits


def _two_file_table(tmp_path: Path, first: bytes, second: bytes, second_sha: Optional[str] = None):
    table = write_manifest(tmp_path, "glue_table", [
        f"CoLA file {sha256(first)} mirror/CoLA/train.tsv",
        f"CoLA file {second_sha or sha256(second)} mirror/CoLA/dev.tsv",
    ])
    return table, {"/mirror/CoLA/train.tsv": Route(first), "/mirror/CoLA/dev.tsv": Route(second)}


def test_sha256_mismatch_names_the_file_and_writes_nothing(tmp_path):
    table, routes = _two_file_table(tmp_path, b"good\n", b"tampered\n", second_sha=sha256(b"expected\n"))
    with Server(routes) as srv:
        proc = run([], tmp_path, DOWNLOAD_GLUE_MANIFEST=table, GLUE_BASE_URL=srv.url)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "CoLA/dev.tsv: sha256 mismatch" in line and sha256(b"tampered\n") in line
    assert f"{srv.url}/mirror/CoLA/dev.tsv" in line
    assert files_under(tmp_path / "glue") == []


def test_present_but_different_file_is_refused_then_replaced_with_force(tmp_path):
    table, routes = _two_file_table(tmp_path, b"train\n", b"dev\n")
    with Server(routes) as srv:
        assert run(["--tasks", "cola"], tmp_path, DOWNLOAD_GLUE_MANIFEST=table, GLUE_BASE_URL=srv.url).returncode == 0
        edited = tmp_path / "glue" / "CoLA" / "dev.tsv"
        edited.write_bytes(b"my edit\n")
        proc = run(["--tasks", "cola"], tmp_path, DOWNLOAD_GLUE_MANIFEST=table, GLUE_BASE_URL=srv.url)
        assert proc.returncode == 1
        assert f"{edited} exists but is not the pinned file" in one_error_line(proc)
        assert edited.read_bytes() == b"my edit\n"
        forced = run(["--tasks", "cola", "--force"], tmp_path, DOWNLOAD_GLUE_MANIFEST=table, GLUE_BASE_URL=srv.url)
        assert forced.returncode == 0, forced.stderr
        assert edited.read_bytes() == b"dev\n"


def test_builtin_table_rejects_bytes_that_are_not_the_pinned_file(tmp_path):
    routes = {f"/F0restL1n/BERT/0d0288be08079531c7b3a85af3d532f9adb0f13a/glue_data/RTE/{n}": Route(b"x\ty\n")
              for n in ("train.tsv", "dev.tsv", "test.tsv")}
    with Server(routes) as srv:
        proc = run(["--tasks", "rte"], tmp_path, GLUE_BASE_URL=srv.url)
    assert proc.returncode == 1
    assert "RTE/train.tsv: sha256 mismatch (expected 41e3a9b0" in one_error_line(proc)
    assert files_under(tmp_path / "glue") == []


# -------------------------------------------------------------------------------------------- GLUE zips
QNLI_FILES = {"train.tsv": b"index\tquestion\tsentence\tlabel\n0\tq?\ts.\tentailment\n",
              "dev.tsv": b"index\tquestion\tsentence\tlabel\n0\tq2?\ts2.\tnot_entailment\n",
              "test.tsv": b"index\tquestion\tsentence\n0\tq3?\ts3.\n"}


def test_zip_task_unpacks_only_the_listed_tsvs(tmp_path):
    archive = make_zip({**{f"QNLI/{n}": d for n, d in QNLI_FILES.items()}, "QNLI/original/big.txt": b"skip"})
    row = f"QNLI zip {sha256(archive)} QNLIv2.zip train.tsv,dev.tsv,test.tsv"
    table = write_manifest(tmp_path, "glue_table", [row])
    with Server({"/QNLIv2.zip": Route(archive)}) as srv:
        proc = run(["--tasks", "qnli"], tmp_path, DOWNLOAD_GLUE_MANIFEST=table, GLUE_ZIP_BASE_URL=srv.url)
    assert proc.returncode == 0, proc.stderr
    assert files_under(tmp_path / "glue") == ["QNLI", "QNLI/dev.tsv", "QNLI/test.tsv", "QNLI/train.tsv"]
    for name, data in QNLI_FILES.items():
        assert (tmp_path / "glue" / "QNLI" / name).read_bytes() == data


def test_zip_with_wrong_bytes_fails_on_the_builtin_archive_hash(tmp_path):
    archive = make_zip({f"QNLI/{n}": d for n, d in QNLI_FILES.items()})
    with Server({"/QNLIv2.zip": Route(archive)}) as srv:
        proc = run(["--tasks", "qnli"], tmp_path, GLUE_ZIP_BASE_URL=srv.url)
    assert proc.returncode == 1
    assert "QNLIv2.zip: sha256 mismatch (expected e634e786" in one_error_line(proc)
    assert files_under(tmp_path / "glue") == []


def test_zip_missing_a_member_writes_nothing(tmp_path):
    archive = make_zip({"QNLI/train.tsv": QNLI_FILES["train.tsv"]})
    table = write_manifest(tmp_path, "glue_table", [f"QNLI zip {sha256(archive)} QNLIv2.zip train.tsv,dev.tsv"])
    with Server({"/QNLIv2.zip": Route(archive)}) as srv:
        proc = run(["--tasks", "qnli"], tmp_path, DOWNLOAD_GLUE_MANIFEST=table, GLUE_ZIP_BASE_URL=srv.url)
    assert proc.returncode == 1
    assert "QNLIv2.zip has no QNLI/dev.tsv; nothing was written" in one_error_line(proc)
    assert files_under(tmp_path / "glue") == []


# ---------------------------------------------------------------------------------------------- SQuAD
def test_help_says_squad_is_fetched_and_conll_is_not():
    out = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60).stdout
    for needle in ("SQuAD-v1.1 (squad), SQuAD-v2.0 (squad_v2, squadv2)", "only when named in --tasks",
                   "train-v1.1.json", "dev-v2.0.json", "rajpurkar.github.io/SQuAD-explorer/dataset", "SQUAD_BASE_URL",
                   "DOWNLOAD_SQUAD_MANIFEST", "CoNLL-2003: it has no stable public source", "bring your own files"):
        assert needle in out, needle
    assert "no SQuAD hash" not in out


@pytest.mark.parametrize("tasks", ["squad,squad_v2", "SQuAD-v1.1,SQUADV2", "squad_v2,squad-v1.1,squad"])
def test_squad_list_pins_the_four_official_files(tasks):
    listed = {tuple(line.split("  ")) for line in list_plan("--tasks", tasks)}
    assert listed == {(target, f"sha256 {sha}", f"{SQUAD_URL}/{target.split('/')[1]}")
                      for target, sha in SQUAD_OFFICIAL.items()}


@pytest.mark.parametrize("mode", ["data_only", "all"])
def test_default_selection_is_the_nine_glue_tasks_without_squad(mode):
    lines = list_plan(mode)
    assert not [line for line in lines if "SQuAD" in line or "rajpurkar" in line]
    data = {line.split("/")[0] for line in lines if line.split("/")[0] not in
            ("bert-base-uncased", "roberta-base", "roberta-large")}
    assert data == set(FILE_TASKS) | set(ZIP_TASKS)


def squad_json(version: str, qid: str) -> bytes:
    """A small file in the official shape (the converter's checks pass on it)."""
    context = "The Normans gave their name to Normandy, a region in France."
    answer = {"text": "France", "answer_start": context.index("France")}
    qas = [{"id": qid, "question": "Where is Normandy?", "answers": [answer]}]
    if version == "v2.0":
        qas.append({"id": f"{qid}-none", "question": "Who named Denmark?", "answers": [], "is_impossible": True})
    data = {"version": version, "data": [{"title": "Normans", "paragraphs": [{"context": context, "qas": qas}]}]}
    return json.dumps(data).encode()


SQUAD_FILES = {"SQuAD-v1.1/train-v1.1.json": squad_json("1.1", "t1"),
               "SQuAD-v1.1/dev-v1.1.json": squad_json("1.1", "d1"),
               "SQuAD-v2.0/train-v2.0.json": squad_json("v2.0", "t2"),
               "SQuAD-v2.0/dev-v2.0.json": squad_json("v2.0", "d2")}


def _squad_mirror(tmp_path: Path, pins: Optional[dict[str, str]] = None):
    """A SQuAD table for SQUAD_FILES (or the given pins) and the mirror's routes under /dataset/."""
    pins = pins or {}
    table = write_manifest(tmp_path, "squad_table", [
        f"{target.split('/')[0]} file {pins.get(target, sha256(data))} {target.split('/')[1]}"
        for target, data in SQUAD_FILES.items()])
    return table, {f"/dataset/{target.split('/')[1]}": Route(data) for target, data in SQUAD_FILES.items()}


def test_builtin_squad_table_rejects_bytes_that_are_not_the_pinned_file(tmp_path):
    _, routes = _squad_mirror(tmp_path)
    with Server(routes) as srv:
        proc = run(["--tasks", "squad"], tmp_path, SQUAD_BASE_URL=f"{srv.url}/dataset")
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert line == (f"download.sh: error: SQuAD-v1.1/train-v1.1.json: sha256 mismatch (expected "
                    f"{SQUAD_OFFICIAL['SQuAD-v1.1/train-v1.1.json']}, got "
                    f"{sha256(SQUAD_FILES['SQuAD-v1.1/train-v1.1.json'])}) for {srv.url}/dataset/train-v1.1.json; "
                    "nothing was written")
    assert files_under(tmp_path / "glue") == []


def test_squad_mismatch_after_a_verified_file_leaves_nothing(tmp_path):
    table, routes = _squad_mirror(tmp_path, {"SQuAD-v2.0/dev-v2.0.json": sha256(b"the real dev-v2.0.json")})
    with Server(routes) as srv:
        proc = run(["--tasks", "squad_v2"], tmp_path, DOWNLOAD_SQUAD_MANIFEST=table,
                   SQUAD_BASE_URL=f"{srv.url}/dataset")
        assert srv.hits == {"/dataset/train-v2.0.json": 1, "/dataset/dev-v2.0.json": 1}
    assert proc.returncode == 1
    assert "SQuAD-v2.0/dev-v2.0.json: sha256 mismatch" in one_error_line(proc)
    assert files_under(tmp_path / "glue") == []


def test_malformed_squad_table_row_names_file_and_line(tmp_path):
    table = write_manifest(tmp_path, "squad_table", [f"SQuAD-v1.1 zip {'a' * 64} squad.zip train-v1.1.json"])
    proc = run(["--tasks", "squad"], tmp_path, DOWNLOAD_SQUAD_MANIFEST=table)
    assert proc.returncode == 2
    assert f"{table} line 2: expected 'TASK file SHA256 PATH'" in one_error_line(proc)
    assert not (tmp_path / "glue").exists()


def test_squad_files_land_verified_rerun_skips_and_force_replaces(tmp_path):
    table, routes = _squad_mirror(tmp_path)
    with Server(routes) as srv:
        proc = run(["--tasks", "squad,squad_v2"], tmp_path, DOWNLOAD_SQUAD_MANIFEST=table,
                   SQUAD_BASE_URL=f"{srv.url}/dataset/")
        assert proc.returncode == 0, proc.stderr
        assert "SQuAD-v1.1: 2 file(s) verified (sha256)" in proc.stdout
        assert f"SQuAD-v2.0: fetching {srv.url}/dataset/train-v2.0.json" in proc.stdout
        assert files_under(tmp_path / "glue") == sorted(["SQuAD-v1.1", "SQuAD-v2.0", *SQUAD_FILES])
        for target, data in SQUAD_FILES.items():
            assert (tmp_path / "glue" / target).read_bytes() == data, target
        hits = dict(srv.hits)
        again = run(["--tasks", "squadv2,squad"], tmp_path, DOWNLOAD_SQUAD_MANIFEST=table, SQUAD_BASE_URL=dead_url())
        assert again.returncode == 0, again.stderr
        assert "SQuAD-v1.1: up to date" in again.stdout and "SQuAD-v2.0: up to date" in again.stdout
        edited = tmp_path / "glue" / "SQuAD-v1.1" / "dev-v1.1.json"
        edited.write_bytes(b"{}")
        refused = run(["--tasks", "squad"], tmp_path, DOWNLOAD_SQUAD_MANIFEST=table,
                      SQUAD_BASE_URL=srv.url + "/dataset")
        assert refused.returncode == 1
        assert f"{edited} exists but is not the pinned file" in one_error_line(refused)
        assert edited.read_bytes() == b"{}" and srv.hits == hits
        forced = run(["--tasks", "squad", "--force"], tmp_path, DOWNLOAD_SQUAD_MANIFEST=table,
                     SQUAD_BASE_URL=srv.url + "/dataset")
        assert forced.returncode == 0, forced.stderr
    assert edited.read_bytes() == SQUAD_FILES["SQuAD-v1.1/dev-v1.1.json"]


def test_data_doc_links_the_downloaded_squad_files_where_prepro_reads_them(tmp_path):
    """docs/data.md's span section: download.sh --tasks squad,squad_v2, its `ln -s` lines, then prepro_std.py."""
    import prepro_std
    from data_utils.shards import shard_path

    section = (ROOT / "docs" / "data.md").read_text().split("## Span extraction (SQuAD)")[1].split("\n## ")[0]
    assert "./download.sh --tasks squad,squad_v2" in section
    links = re.findall(r"^ln -s (\.\./glue_data/SQuAD\S+) +(data/canonical_data/\S+)", section, re.M)
    assert len(links) == 4, section
    table, routes = _squad_mirror(tmp_path)
    with Server(routes) as srv:
        proc = run(["--tasks", "squad,squad_v2"], tmp_path, DOWNLOAD_SQUAD_MANIFEST=table,
                   SQUAD_BASE_URL=f"{srv.url}/dataset")
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "data" / "canonical_data").mkdir(parents=True)
    (tmp_path / "data" / "glue_data").symlink_to(tmp_path / "glue")   # the default --data_dir, relative to data/
    for target, link in links:
        (tmp_path / link).symlink_to(target)
    root = tmp_path / "data" / "canonical_data"
    task_def = ROOT / "experiments" / "squad" / "squad_task_def.yml"
    assert prepro_std.main(["--model", "minilm-l6", "--root_dir", str(root), "--task_def", str(task_def),
                            "--max_seq_len", "384"]) == 0
    for task in ("squad", "squadv2"):
        for split in ("train", "dev"):
            shard = shard_path(str(root), "minilm-l6", task, split).read_text().splitlines()
            linked = json.loads((root / f"{task}_{split}.json").read_text())
            assert sorted(json.loads(row)["qid"] for row in shard) == sorted(
                qa["id"] for qa in linked["data"][0]["paragraphs"][0]["qas"]), (task, split)


# ------------------------------------------------------------------------------------------- the network
def test_server_down_says_offline_after_the_retries_and_writes_nothing(tmp_path):
    url = dead_url()
    proc = run(["--tasks", "cola"], tmp_path, GLUE_BASE_URL=url, DOWNLOAD_RETRIES="2")
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert f"cannot reach {url.split('//')[1]} after 3 attempts (offline?" in line
    assert "GLUE_BASE_URL" in line
    assert files_under(tmp_path) == []


def test_transient_errors_are_retried_then_succeed(tmp_path):
    table, routes = _two_file_table(tmp_path, b"train\n", b"dev\n")
    routes["/mirror/CoLA/dev.tsv"].fail_first = 2
    with Server(routes) as srv:
        proc = run(["--tasks", "cola"], tmp_path, DOWNLOAD_GLUE_MANIFEST=table, GLUE_BASE_URL=srv.url,
                   DOWNLOAD_RETRIES="2")
        assert proc.returncode == 0, proc.stderr
        assert srv.hits["/mirror/CoLA/dev.tsv"] == 3
    assert (tmp_path / "glue" / "CoLA" / "dev.tsv").read_bytes() == b"dev\n"


def test_retries_exhausted_on_http_503(tmp_path):
    table, routes = _two_file_table(tmp_path, b"train\n", b"dev\n")
    routes["/mirror/CoLA/train.tsv"].fail_first = 5
    with Server(routes) as srv:
        proc = run(["--tasks", "cola"], tmp_path, DOWNLOAD_GLUE_MANIFEST=table, GLUE_BASE_URL=srv.url,
                   DOWNLOAD_RETRIES="1")
        assert srv.hits["/mirror/CoLA/train.tsv"] == 2
    assert proc.returncode == 1
    assert f"{srv.url}/mirror/CoLA/train.tsv: HTTP 503 after 2 attempts" in one_error_line(proc)
    assert files_under(tmp_path / "glue") == []


def test_not_found_is_final_and_not_retried(tmp_path):
    table, routes = _two_file_table(tmp_path, b"train\n", b"dev\n")
    del routes["/mirror/CoLA/dev.tsv"]
    with Server(routes) as srv:
        proc = run(["--tasks", "cola"], tmp_path, DOWNLOAD_GLUE_MANIFEST=table, GLUE_BASE_URL=srv.url,
                   DOWNLOAD_RETRIES="3")
        assert srv.hits["/mirror/CoLA/dev.tsv"] == 1
    assert proc.returncode == 1
    assert f"{srv.url}/mirror/CoLA/dev.tsv: HTTP 404 (not retried)" in one_error_line(proc)
    assert files_under(tmp_path / "glue") == []


def test_interrupt_mid_download_leaves_nothing(tmp_path):
    table, routes = _two_file_table(tmp_path, b"train\n", b"d" * 200_000)
    routes["/mirror/CoLA/dev.tsv"].stall = 30
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    with Server(routes) as srv:
        env.update(DOWNLOAD_GLUE_MANIFEST=table, GLUE_BASE_URL=srv.url, NO_PROXY="*", DOWNLOAD_RETRIES="0")
        # SIGINT back to its default in the child: a shell that starts pytest with `&` hands it on ignored, and bash
        # cannot trap a signal ignored on entry, so the script would never see the user's Ctrl-C this test sends
        proc = subprocess.Popen(["bash", str(SCRIPT), "--tasks", "cola", "--data_dir", str(tmp_path / "glue")],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 20
        while srv.hits.get("/mirror/CoLA/dev.tsv", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        staged = list((tmp_path / "glue").glob(".download.*"))
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=20)
    assert staged, "the download never reached the stalled file"
    assert proc.returncode == 130
    assert files_under(tmp_path / "glue") == []


# ---------------------------------------------------------------------------------------------- models
def hub_routes(repo: str, rev: str, files: dict[str, bytes], lfs=("model.safetensors",), commit: Optional[str] = None,
               etags: Optional[dict[str, str]] = None) -> dict[str, Route]:
    """The hub's answers for /<repo>/resolve/<rev>/<file>: small files carry their git blob id as ETag; LFS files
    redirect to a CDN and carry their sha256 in X-Linked-Etag (the CDN's own ETag is an unrelated md5)."""
    routes, etags = {}, etags or {}
    for name, data in files.items():
        path = f"/{repo}/resolve/{rev}/{name}"
        common = {"X-Repo-Commit": commit or rev}
        if name in lfs:
            cdn = f"/cdn/{sha256(data)}"
            routes[path] = Route(b"", 302, {**common, "Location": cdn,
                                            "X-Linked-Etag": f'"{etags.get(name, sha256(data))}"',
                                            "ETag": f'"{etags.get(name, sha256(data))}"'})
            routes[cdn] = Route(data, 200, {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})
        else:
            routes[path] = Route(data, 200, {**common, "ETag": f'W/"{etags.get(name, git_blob_sha1(data))}"'})
    return routes


LARGE_FILES = {"config.json": b'{"model_type": "roberta"}\n', "vocab.json": b'{"<s>": 0}\n', "merges.txt": b"#v\n",
               "tokenizer.json": b'{"version": "1.0"}\n', "model.safetensors": b"\x08\x00" + b"w" * 5000}


def test_model_only_fetches_pinned_files_verified_by_the_hub_hashes(tmp_path):
    with Server(hub_routes(*ROBERTA_LARGE, LARGE_FILES)) as srv:
        proc = run(["model_only", "--models", "roberta-large"], tmp_path, HF_ENDPOINT=srv.url,
                   GLUE_BASE_URL=dead_url())
        assert proc.returncode == 0, proc.stderr
        assert srv.hits[f"/cdn/{sha256(LARGE_FILES['model.safetensors'])}"] == 1
    for name, data in LARGE_FILES.items():
        assert (tmp_path / "models" / "roberta-large" / name).read_bytes() == data
    assert files_under(tmp_path / "models") == ["roberta-large"] + [f"roberta-large/{n}" for n in sorted(LARGE_FILES)]
    assert not (tmp_path / "glue").exists()


@pytest.mark.parametrize("tamper, message", [
    ({"etags": {"model.safetensors": sha256(b"other")}},
     "roberta-large/model.safetensors: sha256 mismatch with the hub"),
    ({"etags": {"vocab.json": git_blob_sha1(b"other")}},
     "roberta-large/vocab.json: git blob sha1 mismatch with the hub"),
    ({"commit": "0" * 40}, "not the pinned revision 722cf37b1afa9454edce342e7895e588b6ff1d59"),
])
def test_model_files_that_disagree_with_the_hub_are_refused(tmp_path, tamper, message):
    with Server(hub_routes(*ROBERTA_LARGE, LARGE_FILES, **tamper)) as srv:
        proc = run(["model_only", "--models", "roberta-large"], tmp_path, HF_ENDPOINT=srv.url)
    assert proc.returncode == 1
    assert message in one_error_line(proc)
    assert files_under(tmp_path / "models") == []


def test_model_file_without_any_hub_hash_is_refused(tmp_path):
    routes = hub_routes(*ROBERTA_LARGE, LARGE_FILES)
    routes[f"/{ROBERTA_LARGE[0]}/resolve/{ROBERTA_LARGE[1]}/config.json"].headers = {}
    with Server(routes) as srv:
        proc = run(["model_only", "--models", "roberta-large"], tmp_path, HF_ENDPOINT=srv.url)
    assert proc.returncode == 1
    assert "roberta-large/config.json" in one_error_line(proc) and "refusing an unverified file" in proc.stderr
    assert files_under(tmp_path / "models") == []


def test_weights_must_also_match_the_sha256_recorded_in_the_script(tmp_path):
    files = {"config.json": b"{}\n", "tokenizer_config.json": b"{}\n", "vocab.txt": b"[PAD]\n",
             "tokenizer.json": b"{}\n", "model.safetensors": b"not the real bert weights"}
    with Server(hub_routes(*BERT_BASE, files)) as srv:
        proc = run(["model_only", "--models", "bert-base-uncased"], tmp_path, HF_ENDPOINT=srv.url)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "bert-base-uncased/model.safetensors: sha256" in line and "differs from the one recorded" in line
    assert files_under(tmp_path / "models") == []


def test_all_mode_fetches_data_and_models(tmp_path):
    table, routes = _two_file_table(tmp_path, b"train\n", b"dev\n")
    pins = {name: sha256(data) if name == "model.safetensors" else "-" for name, data in LARGE_FILES.items()}
    model_table = write_manifest(tmp_path, "model_table", [
        f"roberta-large {ROBERTA_LARGE[0]} {ROBERTA_LARGE[1]} {name} {pin}" for name, pin in pins.items()])
    with Server({**routes, **hub_routes(*ROBERTA_LARGE, LARGE_FILES)}) as srv:
        proc = run(["all", "--tasks", "cola", "--models", "roberta-large"], tmp_path, DOWNLOAD_GLUE_MANIFEST=table,
                   DOWNLOAD_MODEL_MANIFEST=model_table, GLUE_BASE_URL=srv.url, HF_ENDPOINT=srv.url)
        assert proc.returncode == 0, proc.stderr
        again = run(["all", "--tasks", "cola", "--models", "roberta-large"], tmp_path, DOWNLOAD_GLUE_MANIFEST=table,
                    DOWNLOAD_MODEL_MANIFEST=model_table, GLUE_BASE_URL=dead_url(), HF_ENDPOINT=dead_url())
    assert again.returncode == 0, again.stderr
    assert "roberta-large: all files present" in again.stdout
    assert (tmp_path / "glue" / "CoLA" / "train.tsv").read_bytes() == b"train\n"
    weights = tmp_path / "models" / "roberta-large" / "model.safetensors"
    assert weights.read_bytes() == LARGE_FILES["model.safetensors"]
