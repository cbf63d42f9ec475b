#!/usr/bin/env bash
# Fetch GLUE into data/glue_data/<TASK>/ (SQuAD too when named in --tasks) and, on request, encoder checkpoints into
# data/pretrained/<model>/.
# Every file is checked against a sha256 before it is moved into place; `./download.sh --help` says what is covered.
# Written for bash 3.2+ (macOS) with curl; Python is needed only to unpack the QNLI/QQP/MNLI zips.
set -euo pipefail

PROG="download.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  cat <<'EOF'
Usage: ./download.sh [MODE] [OPTIONS]

Downloads the GLUE data into DATA_DIR/<TASK>/ (the layout of download_glue_data.py, which
experiments/glue/prepro.sh reads), SQuAD v1.1/v2.0 when named in --tasks, and, on request, encoder
checkpoints into MODEL_DIR/<model>/.
Each file is fetched into a staging folder, verified, then moved into place: a failed or interrupted
run leaves no partial file behind. Files already present and verified are not fetched again.

MODE
  data_only    data only (the default)
  model_only   encoder checkpoints only
  all          data and encoder checkpoints

OPTIONS
  --tasks LIST      comma-separated data sets (default: the nine GLUE tasks, not SQuAD)
                    CoLA, SST-2 (sst), MRPC, STS-B (stsb), QQP, MNLI, QNLI, RTE, WNLI,
                    SQuAD-v1.1 (squad), SQuAD-v2.0 (squad_v2, squadv2); case-insensitive
  --models LIST     comma-separated encoders (default: all three)
                    bert-base-uncased, roberta-base, roberta-large
  --data_dir DIR    where the <TASK>/ folders go (default: $GLUE_DIR, else data/glue_data)
  --model_dir DIR   where the <model>/ folders go (default: data/pretrained)
  --force           fetch again and replace files that are present but differ
  --list            print every file the selection would fetch (URL and expected hash); no network
  -h, --help        this text

WHAT IS FETCHED AND HOW IT IS VERIFIED
  CoLA, SST-2, MRPC, STS-B, RTE, WNLI: the official GLUE TSVs as kept byte-for-byte in public GitHub
    repositories at pinned commits (raw.githubusercontent.com); the sha256 of every file is recorded
    in this script.
  QNLI, QQP, MNLI: the original GLUE archives QNLIv2.zip, QQP-clean.zip and MNLI.zip from
    dl.fbaipublicfiles.com; the sha256 of each archive is recorded in this script, and only the task's
    TSVs are unpacked (MNLI: train, dev_matched/mismatched, test_matched/mismatched).
  SQuAD-v1.1, SQuAD-v2.0 (only when named in --tasks): the official JSON files train-v1.1.json,
    dev-v1.1.json, train-v2.0.json and dev-v2.0.json from rajpurkar.github.io/SQuAD-explorer/dataset,
    saved under their own names in DATA_DIR/SQuAD-v1.1/ and DATA_DIR/SQuAD-v2.0/; the sha256 of every
    file is recorded in this script (as independent public records of the official files give it).
  Not covered: the GLUE diagnostic set (AX), and CoNLL-2003: it has no stable public source (the
    Reuters corpus it is built on is licensed), so bring your own files. docs/data.md, "Span extraction
    (SQuAD) and sequence labeling (NER)", says where the SQuAD downloads and CoNLL files go.
  Encoders (bert-base-uncased, roberta-base, roberta-large): config, tokenizer files and
    model.safetensors from the Hugging Face hub at a pinned commit. Each file is checked against the
    hash the hub publishes for that commit (sha256 for large files, the git blob sha1 for small text
    files); the weights of bert-base-uncased and roberta-base are also checked against a sha256
    recorded in this script. Load them with e.g. --init_checkpoint data/pretrained/bert-base-uncased.

NETWORK
  Each request is tried 1 + DOWNLOAD_RETRIES times (connection errors, HTTP 429 and 5xx; a 404 is
  final), waiting DOWNLOAD_RETRY_DELAY x attempt seconds in between. With no network the run stops
  after the retries with an "offline?" message and exit status 1. curl honours HTTPS_PROXY.

ENVIRONMENT
  GLUE_BASE_URL          base for the pinned GitHub files (default https://raw.githubusercontent.com)
  GLUE_ZIP_BASE_URL      base for the GLUE zips (default https://dl.fbaipublicfiles.com/glue/data)
  SQUAD_BASE_URL         base for the SQuAD files
                         (default https://rajpurkar.github.io/SQuAD-explorer/dataset)
  HF_ENDPOINT            Hugging Face hub or mirror (default https://huggingface.co)
  DOWNLOAD_RETRIES       retries per request (default 5)
  DOWNLOAD_RETRY_DELAY   seconds, multiplied by the attempt number (default 3)
  DOWNLOAD_GLUE_MANIFEST, DOWNLOAD_SQUAD_MANIFEST, DOWNLOAD_MODEL_MANIFEST
                         a file replacing that built-in table (same columns; for mirrors and tests)
  GLUE_DIR               default for --data_dir
  PYTHON                 interpreter that unpacks zips (default .venv/bin/python, else python3)

EXIT STATUS
  0 success, 1 a download or verification failed, 2 bad usage or configuration.
EOF
}

# Built-in tables. Columns: TASK KIND SHA256 PATH [MEMBERS]. KIND "file": PATH under GLUE_BASE_URL, saved as its
# last part. KIND "zip": PATH under GLUE_ZIP_BASE_URL; MEMBERS (comma-separated) are unpacked from <TASK>/ in the zip.
# File hashes: ../shared/glue/MANIFEST.tsv (files checked against the official GLUE files). Zip hashes: two
# independent public records of each archive (the archives themselves were not fetched to check them).
glue_manifest() {
  if [[ -n "${DOWNLOAD_GLUE_MANIFEST:-}" ]]; then
    cat -- "$DOWNLOAD_GLUE_MANIFEST"
    return
  fi
  # The two GitHub repositories (at pinned commits) that keep the GLUE files byte-for-byte.
  local fb="F0restL1n/BERT/0d0288be08079531c7b3a85af3d532f9adb0f13a/glue_data"
  local mrpc="manasvi-26/Paraphrase-Identification/40e2ad060fed1f1ca16bf5577fe44d71c4e90530/glue_data"
  local mnli="train.tsv,dev_matched.tsv,dev_mismatched.tsv,test_matched.tsv,test_mismatched.tsv"
  cat <<EOF
CoLA   file cb368ebeb9f27d7ad03720d27ddc95687a311bdb100781a2fe59a5f5b1bc0624 $fb/CoLA/train.tsv
CoLA   file 8c013e21dc39957cac37378d87bebe225b694a0d5fe13eded66c2856628833fd $fb/CoLA/dev.tsv
CoLA   file 3b4df85f7a9a0633574b38d181e18090ac961a24b18fb6bcd74999ddea8ad0b8 $fb/CoLA/test.tsv
SST-2  file 48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1 $fb/SST-2/train.tsv
SST-2  file 54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0 $fb/SST-2/dev.tsv
SST-2  file 69a938605609b3e6663b4487918fe1565eb293734e6e520d0366d1d412fd2a13 $fb/SST-2/test.tsv
MRPC   file 69abcedee3cf738c6ce58d772e43e1b7cdf5b4edee4aceda459c0d9f4e5599f3 $mrpc/MRPC/train.tsv
MRPC   file 9e8f284788040f7c9ecde2e1b3c07237c756f926bd9ef8548ef5d34b56f69f17 $fb/MRPC/dev.tsv
MRPC   file aee460ceda833926b8ab2ad952d399f5cf8bc9335cff19afcac03dc449558622 $fb/MRPC/test.tsv
STS-B  file 41c4d978b6162abdcada7e49a982211954cca5459c228db478af333124b257a2 $fb/STS-B/train.tsv
STS-B  file fe7dc0632a5033562f3cadff991f6e8d9b9b6311861660e78c3c82eb7db67f59 $fb/STS-B/dev.tsv
STS-B  file 16b4223d7d44a644fbc10f1b449472cfe81e1715fb07cf44023b0aa88ce856eb $fb/STS-B/test.tsv
QQP    zip  40e7c862c04eb26ee04b67fd900e76c45c6ba8e6d8fab4f8f1f8072a1a3fbae0 QQP-clean.zip train.tsv,dev.tsv,test.tsv
MNLI   zip  e7c1d896d26ed6caf700110645df426cc2d8ebf02a5ab743d5a5c68ac1c83633 MNLI.zip $mnli
QNLI   zip  e634e78627a29adaecd4f955359b22bf5e70f2cbd93b493f2d624138a0c0e5f5 QNLIv2.zip train.tsv,dev.tsv,test.tsv
RTE    file 41e3a9b063433392343fad9e962cf2f58b681c78d8f71592f4186f0837246c5c $fb/RTE/train.tsv
RTE    file 80230dfa1347282e7b532b06a1004a76a710087541189bf874223ddf0e3819fb $fb/RTE/dev.tsv
RTE    file 6e33f09b5c2bfd5fd5fde217070f3dd49e484e33b9752b5864cf36fc421a213f $fb/RTE/test.tsv
WNLI   file 9a88e9d54b6861cc796a088e9acf4f5f65064a9ef65ae6fa7a688b28391e5c9a $fb/WNLI/train.tsv
WNLI   file cba00490596dd14be8cf53b4f53bb744abe3a7b89f81ab210528d80225338ed5 $fb/WNLI/dev.tsv
WNLI   file ff0296817e235bf6f7a230c5f6781bd6ee228a45445f6510831fdef6f2a04766 $fb/WNLI/test.tsv
EOF
}

# Columns: TASK file SHA256 PATH, as the GLUE table's file rows; PATH is under SQUAD_BASE_URL. Hashes and sizes: the
# official files as recorded by several independent public sources (ParlAI, the Hugging Face datasets' checksums).
squad_manifest() {
  if [[ -n "${DOWNLOAD_SQUAD_MANIFEST:-}" ]]; then
    cat -- "$DOWNLOAD_SQUAD_MANIFEST"
    return
  fi
  cat <<'EOF'
# 30,288,272 and 4,854,279 bytes
SQuAD-v1.1 file 3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955 train-v1.1.json
SQuAD-v1.1 file 95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9 dev-v1.1.json
# 42,123,633 and 4,370,528 bytes
SQuAD-v2.0 file 68dcfbb971bd3e96d5b46c7177b16c1a4e7d4bdef19fb204502738552dede002 train-v2.0.json
SQuAD-v2.0 file 80a5225e94905956a6446d296ca1093975c4d3b3260f1d6c8f68bc2ab77182d8 dev-v2.0.json
EOF
}

# Columns: MODEL REPO REVISION FILE SHA256 ("-": rely on the hash the hub publishes for the pinned revision).
model_manifest() {
  if [[ -n "${DOWNLOAD_MODEL_MANIFEST:-}" ]]; then
    cat -- "$DOWNLOAD_MODEL_MANIFEST"
    return
  fi
  local bert="google-bert/bert-base-uncased 86b5e0934494bd15c9632b12f734a8a67f723594"
  local rbase="FacebookAI/roberta-base e2da8e2f811d1448a5b465c236feacd80ffbac7b"
  local rlarge="FacebookAI/roberta-large 722cf37b1afa9454edce342e7895e588b6ff1d59"
  cat <<EOF
bert-base-uncased $bert config.json -
bert-base-uncased $bert tokenizer_config.json -
bert-base-uncased $bert vocab.txt -
bert-base-uncased $bert tokenizer.json -
bert-base-uncased $bert model.safetensors 68d45e234eb4a928074dfd868cead0219ab85354cc53d20e772753c6bb9169d3
roberta-base $rbase config.json -
roberta-base $rbase vocab.json -
roberta-base $rbase merges.txt -
roberta-base $rbase tokenizer.json -
roberta-base $rbase model.safetensors 5bde1d28afb363d0103324efeb5afc8b2b397fe5e04beabb9b1ef355255ade81
roberta-large $rlarge config.json -
roberta-large $rlarge vocab.json -
roberta-large $rlarge merges.txt -
roberta-large $rlarge tokenizer.json -
roberta-large $rlarge model.safetensors -
EOF
}

ALL_TASKS="CoLA SST-2 MRPC STS-B QQP MNLI QNLI RTE WNLI"   # the default selection
SQUAD_TASKS="SQuAD-v1.1 SQuAD-v2.0"                       # fetched only when named in --tasks
ALL_MODELS="bert-base-uncased roberta-base roberta-large"

# ------------------------------------------------------------------------------------------------ messages
die() { echo "$PROG: error: $*" >&2; exit 1; }
usage_error() { echo "$PROG: error: $* (see ./download.sh --help)" >&2; exit 2; }
say() { echo "$PROG: $*"; }

# ------------------------------------------------------------------------------- cleanup on any failure
STAGING=()        # staging folders still to remove
CREATED_TOP=()    # folders this run created (removed again on failure if they stay empty)

cleanup() {
  local status=$? dir
  for dir in ${STAGING[@]+"${STAGING[@]}"}; do rm -rf -- "$dir"; done
  if [[ $status -ne 0 ]]; then
    for dir in ${CREATED_TOP[@]+"${CREATED_TOP[@]}"}; do
      [[ -d $dir ]] && find "$dir" -depth -type d -empty -delete 2>/dev/null
    done
  fi
  return "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# make_dir DIR: mkdir -p, remembering the topmost folder it creates.
make_dir() {
  local dir=$1 top=""
  while [[ ! -d $dir ]]; do top=$dir; dir=$(dirname -- "$dir"); done
  if [[ -n $top ]]; then
    mkdir -p -- "$1"
    CREATED_TOP+=("$top")
  fi
}

# new_staging PARENT: a fresh staging folder on the destination's file system (so mv is a rename).
new_staging() {
  make_dir "$1"
  STAGED=$(mktemp -d "$1/.download.XXXXXX")
  STAGING+=("$STAGED")
}

drop_staging() {
  local dir=$1 kept=() d
  rm -rf -- "$dir"
  for d in ${STAGING[@]+"${STAGING[@]}"}; do [[ $d == "$dir" ]] || kept+=("$d"); done
  STAGING=(${kept[@]+"${kept[@]}"})
}

# ------------------------------------------------------------------------------------------------- hashing
SHA256_CMD=""
SHA1_CMD=""
pick_hash_tools() {
  if command -v sha256sum >/dev/null 2>&1; then SHA256_CMD="sha256sum"
  elif command -v shasum >/dev/null 2>&1; then SHA256_CMD="shasum -a 256"
  else die "neither sha256sum nor shasum is installed"; fi
  if command -v sha1sum >/dev/null 2>&1; then SHA1_CMD="sha1sum"
  elif command -v shasum >/dev/null 2>&1; then SHA1_CMD="shasum -a 1"
  else die "neither sha1sum nor shasum is installed"; fi
}

sha256_of() { $SHA256_CMD <"$1" | cut -d' ' -f1; }

# The git blob id the hub reports for small (non-LFS) files: sha1 of "blob <size>\0<content>".
git_blob_sha1_of() {
  local size
  size=$(wc -c <"$1")
  { printf 'blob %d\0' "$((size))"; cat -- "$1"; } | $SHA1_CMD | cut -d' ' -f1
}

is_hex() { [[ $1 =~ ^[0-9a-f]+$ && ${#1} -eq $2 ]]; }

# ---------------------------------------------------------------------------------------------- fetching
# fetch URL DEST HEADERS: download with retries; on return DEST holds a 2xx body. Exits on failure.
fetch() {
  local url=$1 dest=$2 headers=$3 attempt=0 code rc err
  local host=${url#*://}
  host=${host%%/*}
  err="$dest.curl-stderr"
  while :; do
    attempt=$((attempt + 1))
    rc=0
    code=$(curl --silent --show-error --location --globoff --proto '=http,https' --proto-redir '=http,https' \
      --connect-timeout 20 --speed-limit 1024 --speed-time 60 \
      --dump-header "$headers" --output "$dest" --write-out '%{http_code}' -- "$url" 2>"$err") || rc=$?
    if [[ $rc -eq 0 && $code == 2?? ]]; then
      rm -f -- "$err"
      return 0
    fi
    if [[ $code == 4?? && $code != 408 && $code != 429 ]]; then
      die "$url: HTTP $code (not retried)"
    fi
    if [[ $attempt -gt $RETRIES ]]; then
      if [[ $code == 000 ]]; then
        die "cannot reach $host after $attempt attempts (offline? behind a proxy? curl: $(tail -n 1 -- "$err"));" \
          "set HTTPS_PROXY, or GLUE_BASE_URL / GLUE_ZIP_BASE_URL / SQUAD_BASE_URL / HF_ENDPOINT for a mirror"
      fi
      die "$url: HTTP $code after $attempt attempts"
    fi
    sleep $((RETRY_DELAY * attempt))
  done
}

# verify_sha256 FILE EXPECTED LABEL URL
verify_sha256() {
  local got
  got=$(sha256_of "$1")
  [[ $got == "$2" ]] || die "$3: sha256 mismatch (expected $2, got $got) for $4; nothing was written"
}

# ---------------------------------------------------------------------------------------- GLUE and SQuAD
# canonical_task NAME: the data set's folder name, or empty when unknown.
canonical_task() {
  case "$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')" in
    cola) echo CoLA ;;
    sst | sst-2 | sst2) echo SST-2 ;;
    mrpc) echo MRPC ;;
    sts-b | stsb) echo STS-B ;;
    qqp) echo QQP ;;
    mnli) echo MNLI ;;
    qnli) echo QNLI ;;
    rte) echo RTE ;;
    wnli) echo WNLI ;;
    squad | squad1 | squadv1 | squad_v1 | squad-v1 | squad1.1 | squadv1.1 | squad_v1.1 | squad-v1.1) echo SQuAD-v1.1 ;;
    squad2 | squadv2 | squad_v2 | squad-v2 | squad2.0 | squadv2.0 | squad_v2.0 | squad-v2.0) echo SQuAD-v2.0 ;;
    *) echo "" ;;
  esac
}

glue_row_ok() {
  { [[ $# -eq 4 && $2 == file ]] || [[ $# -eq 5 && $2 == zip ]]; } && is_hex "$3" 64
}

model_row_ok() {
  [[ $# -eq 5 ]] && { [[ $5 == - ]] || is_hex "$5" 64; }
}

squad_row_ok() { [[ $# -eq 4 && $2 == file ]] && is_hex "$3" 64; }

is_squad_task() { [[ " $SQUAD_TASKS " == *" $1 "* ]]; }

# data_table TASK: which table holds the task's rows (glue or squad).
data_table() { if is_squad_task "$1"; then echo squad; else echo glue; fi; }

# manifest_rows WHICH KEY: the rows of a table (glue, squad, model) whose first column is KEY; checks each row's shape.
manifest_rows() {
  local which=$1 key=$2 source expected line n=0 fields
  case $which in
    glue) source=${DOWNLOAD_GLUE_MANIFEST:-built-in GLUE table}
      expected="'TASK file SHA256 PATH' or 'TASK zip SHA256 PATH MEMBERS'" ;;
    squad) source=${DOWNLOAD_SQUAD_MANIFEST:-built-in SQuAD table}; expected="'TASK file SHA256 PATH'" ;;
    *) source=${DOWNLOAD_MODEL_MANIFEST:-built-in model table}; expected="'MODEL REPO REVISION FILE SHA256|-'" ;;
  esac
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    [[ -z ${line//[[:space:]]/} || $line =~ ^[[:space:]]*# ]] && continue
    read -r -a fields <<<"$line"
    if ! "${which}_row_ok" "${fields[@]}"; then
      echo "$PROG: error: $source line $n: expected $expected" >&2
      exit 2
    fi
    if [[ ${fields[0]} == "$key" ]]; then echo "$line"; fi
  done < <("${which}_manifest")
}

# data_url TASK KIND PATH: where a table row's file lives.
data_url() {
  if is_squad_task "$1"; then echo "${SQUAD_BASE_URL%/}/$3"
  elif [[ $2 == zip ]]; then echo "${GLUE_ZIP_BASE_URL%/}/$3"
  else echo "${GLUE_BASE_URL%/}/$3"; fi
}

fetch_data_task() {
  local task=$1 table rows kinds _t _k sha path members
  table=$(data_table "$task")
  rows=$(manifest_rows "$table" "$task")
  if [[ $table == squad ]]; then
    [[ -n $rows ]] || die "$task: no source in the SQuAD table"
    fetch_data_files "$task" "$rows"
    return
  fi
  [[ -n $rows ]] || die "$task: no source in the GLUE table"
  kinds=$(echo "$rows" | awk '{print $2}' | sort -u)
  if [[ $kinds == zip ]]; then
    [[ $(echo "$rows" | wc -l) -eq 1 ]] || die "$task: a zip task needs exactly one table row"
    read -r _t _k sha path members <<<"$rows"
    fetch_glue_zip "$task" "$sha" "$path" "$members"
  elif [[ $kinds == file ]]; then
    fetch_data_files "$task" "$rows"
  else
    die "$task: the GLUE table mixes file and zip rows"
  fi
}

# fetch_data_files TASK ROWS: the task's single files (GLUE TSVs, SQuAD JSON), all verified before any is moved in.
fetch_data_files() {
  local task=$1 rows=$2 dest="$DATA_DIR/$1" todo=() _t kind sha path name line url
  while read -r _t kind sha path; do
    name=${path##*/}
    if [[ -f $dest/$name && $FORCE -eq 0 ]]; then
      [[ $(sha256_of "$dest/$name") == "$sha" ]] && continue
      die "$dest/$name exists but is not the pinned file (sha256 differs); move it away or pass --force"
    fi
    todo+=("$sha $path")
  done <<<"$rows"
  if [[ ${#todo[@]} -eq 0 ]]; then say "$task: up to date in $dest"; return; fi
  new_staging "$DATA_DIR"
  local stage=$STAGED
  for line in "${todo[@]}"; do
    read -r sha path <<<"$line"
    name=${path##*/}
    url=$(data_url "$task" file "$path")
    if is_squad_task "$task"; then say "$task: fetching $url"; fi   # tens of MB: say what is going on
    fetch "$url" "$stage/$name" "$stage/$name.headers"
    verify_sha256 "$stage/$name" "$sha" "$task/$name" "$url"
  done
  make_dir "$dest"
  for line in "${todo[@]}"; do
    read -r sha path <<<"$line"
    mv -f -- "$stage/${path##*/}" "$dest/${path##*/}"
  done
  drop_staging "$stage"
  say "$task: ${#todo[@]} file(s) verified (sha256) in $dest"
}

fetch_glue_zip() {
  local task=$1 sha=$2 path=$3 dest="$DATA_DIR/$1" todo=() all member
  IFS=, read -r -a all <<<"$4"
  for member in "${all[@]}"; do
    if [[ ! -f $dest/$member || $FORCE -eq 1 ]]; then todo+=("$member"); fi
  done
  if [[ ${#todo[@]} -eq 0 ]]; then say "$task: up to date in $dest (--force fetches it again)"; return; fi
  need_python
  new_staging "$DATA_DIR"
  local stage=$STAGED zip="$STAGED/${path##*/}" url
  url=$(data_url "$task" zip "$path")
  say "$task: fetching $url"
  fetch "$url" "$zip" "$zip.headers"
  verify_sha256 "$zip" "$sha" "${path##*/}" "$url"
  mkdir -- "$stage/out"
  "$PYTHON" - "$zip" "$task" "$stage/out" "${todo[@]}" <<'PY' || exit 1
import shutil, sys, zipfile
archive, folder, out, *members = sys.argv[1:]
name = archive.rsplit("/", 1)[-1]
try:
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        for member in members:
            inner = f"{folder}/{member}"
            if inner not in names:
                sys.exit(f"download.sh: error: {name} has no {inner}; nothing was written")
            with z.open(inner) as src, open(f"{out}/{member}", "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
except (OSError, zipfile.BadZipFile) as exc:
    sys.exit(f"download.sh: error: cannot unpack {name}: {exc}; nothing was written")
PY
  make_dir "$dest"
  for member in "${todo[@]}"; do mv -f -- "$stage/out/$member" "$dest/$member"; done
  drop_staging "$stage"
  say "$task: ${#todo[@]} file(s) unpacked from ${path##*/} (archive sha256 verified) into $dest"
}

need_python() {
  if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON="$ROOT/.venv/bin/python"
    elif command -v python3 >/dev/null 2>&1; then PYTHON=python3
    else PYTHON=python; fi
  fi
  command -v "$PYTHON" >/dev/null 2>&1 || die "unpacking the GLUE zips needs Python; set PYTHON (tried '$PYTHON')"
}

# --------------------------------------------------------------------------------------------- models
# hub_hashes HEADERS: "<x-linked-etag> <etag of the last response> <x-repo-commit>", "-" where absent.
hub_hashes() {
  awk '
    { sub(/\r$/, "") }
    /^HTTP\// { etag = ""; next }
    index($0, ":") > 0 {
      name = tolower(substr($0, 1, index($0, ":") - 1))
      value = substr($0, index($0, ":") + 1)
      gsub(/^[ \t]+|[ \t]+$/, "", value); sub(/^W\//, "", value); gsub(/"/, "", value)
      if (name == "x-linked-etag" && linked == "") linked = value
      else if (name == "etag") etag = value
      else if (name == "x-repo-commit" && commit == "") commit = value
    }
    function or_dash(v) { return v == "" ? "-" : v }
    END { print or_dash(tolower(linked)), or_dash(tolower(etag)), or_dash(commit) }
  ' "$1"
}

# verify_hub FILE HEADERS LABEL URL REVISION PINNED_SHA256|-
verify_hub() {
  local file=$1 label=$3 url=$4 rev=$5 pinned=$6 linked etag commit got
  read -r linked etag commit <<<"$(hub_hashes "$2")"
  if [[ $commit != - && $commit != "$rev" ]]; then
    die "$label: the server answered for commit $commit, not the pinned revision $rev ($url)"
  fi
  if [[ $linked != - ]] || is_hex "$etag" 64; then
    [[ $linked != - ]] || linked=$etag
    is_hex "$linked" 64 || die "$label: unreadable X-Linked-Etag '$linked' from $url"
    got=$(sha256_of "$file")
    [[ $got == "$linked" ]] || die "$label: sha256 mismatch with the hub (expected $linked, got $got) for $url"
  elif is_hex "$etag" 40; then
    got=$(git_blob_sha1_of "$file")
    [[ $got == "$etag" ]] || die "$label: git blob sha1 mismatch with the hub (expected $etag, got $got) for $url"
    [[ $pinned == - ]] || got=$(sha256_of "$file")
  else
    die "$label: $url sent no X-Linked-Etag or ETag to verify against; refusing an unverified file"
  fi
  if [[ $pinned != - && $got != "$pinned" ]]; then
    die "$label: sha256 $got differs from the one recorded in download.sh ($pinned) for $url"
  fi
}

fetch_model() {
  local model=$1 rows dest="$MODEL_DIR/$1" missing=0 _m repo rev file pinned url
  rows=$(manifest_rows model "$model")
  [[ -n $rows ]] || die "$model: no source in the model table"
  while read -r _m repo rev file pinned; do
    if [[ ! -f $dest/$file ]]; then missing=1
    elif [[ $pinned != - && $FORCE -eq 0 && $(sha256_of "$dest/$file") != "$pinned" ]]; then
      die "$dest/$file exists but is not the pinned file (sha256 differs); move it away or pass --force"
    fi
  done <<<"$rows"
  if [[ $missing -eq 0 && $FORCE -eq 0 ]]; then
    say "$model: all files present in $dest (--force fetches them again)"
    return
  fi
  new_staging "$MODEL_DIR"
  local stage=$STAGED
  while read -r _m repo rev file pinned; do
    url="${HF_ENDPOINT%/}/$repo/resolve/$rev/$file"
    say "$model: fetching $file"
    fetch "$url" "$stage/$file" "$stage/$file.headers"
    verify_hub "$stage/$file" "$stage/$file.headers" "$model/$file" "$url" "$rev" "$pinned"
  done <<<"$rows"
  make_dir "$dest"
  while read -r _m repo rev file pinned; do mv -f -- "$stage/$file" "$dest/$file"; done <<<"$rows"
  drop_staging "$stage"
  say "$model: $(echo "$rows" | wc -l | tr -d ' ') file(s) verified in $dest ($repo@${rev:0:12})"
}

# ---------------------------------------------------------------------------------------------- listing
list_plan() {
  local task model rows _k kind sha path members repo rev file pinned
  if [[ $WANT_DATA -eq 1 ]]; then
    for task in $TASKS; do
      rows=$(manifest_rows "$(data_table "$task")" "$task")
      while read -r _k kind sha path members; do
        if [[ $kind == zip ]]; then
          echo "$task/{$members}  zip sha256 $sha  $(data_url "$task" zip "$path")"
        else
          echo "$task/${path##*/}  sha256 $sha  $(data_url "$task" file "$path")"
        fi
      done <<<"$rows"
    done
  fi
  if [[ $WANT_MODELS -eq 1 ]]; then
    for model in $MODELS; do
      rows=$(manifest_rows model "$model")
      while read -r _k repo rev file pinned; do
        if [[ $pinned == - ]]; then pinned="hub-published hash"; else pinned="sha256 $pinned + hub-published hash"; fi
        echo "$model/$file  $pinned  ${HF_ENDPOINT%/}/$repo/resolve/$rev/$file"
      done <<<"$rows"
    done
  fi
}

# ------------------------------------------------------------------------------------------ command line
parse_args() {
  MODE=""
  TASKS_ARG=""
  MODELS_ARG=""
  DATA_DIR="${GLUE_DIR:-$ROOT/data/glue_data}"
  MODEL_DIR="$ROOT/data/pretrained"
  FORCE=0
  LIST=0
  local opt value has_value
  while [[ $# -gt 0 ]]; do
    opt=$1
    value=""
    has_value=0
    case $opt in
      --*=*) value=${opt#*=}; opt=${opt%%=*}; has_value=1 ;;
    esac
    case $opt in
      -h | --help) usage; exit 0 ;;
      data_only | model_only | all)
        [[ -z $MODE ]] || usage_error "two modes given ($MODE and $opt)"
        MODE=$opt ;;
      --tasks | --models | --data_dir | --model_dir)
        if [[ $has_value -eq 0 ]]; then
          [[ $# -ge 2 ]] || usage_error "$opt needs a value"
          value=$2
          shift
        fi
        [[ -n $value ]] || usage_error "$opt needs a value"
        case $opt in
          --tasks) TASKS_ARG=$value ;;
          --models) MODELS_ARG=$value ;;
          --data_dir) DATA_DIR=$value ;;
          --model_dir) MODEL_DIR=$value ;;
        esac ;;
      --force | --list)
        [[ $has_value -eq 0 ]] || usage_error "$opt takes no value"
        if [[ $opt == --force ]]; then FORCE=1; else LIST=1; fi ;;
      -*) usage_error "unknown option '$opt'" ;;
      *) usage_error "unknown mode '$opt' (data_only, model_only or all)" ;;
    esac
    shift
  done
  MODE=${MODE:-data_only}
  WANT_DATA=0
  WANT_MODELS=0
  [[ $MODE == model_only ]] || WANT_DATA=1
  [[ $MODE == data_only ]] || WANT_MODELS=1
  [[ -z $TASKS_ARG || $WANT_DATA -eq 1 ]] || usage_error "--tasks does not apply to model_only"
  [[ -z $MODELS_ARG || $WANT_MODELS -eq 1 ]] || usage_error "--models needs MODE model_only or all"
  select_names task "${TASKS_ARG:-$ALL_TASKS}"
  TASKS=$SELECTED
  select_names model "${MODELS_ARG:-$ALL_MODELS}"
  MODELS=$SELECTED
  check_number DOWNLOAD_RETRIES "${DOWNLOAD_RETRIES:-5}"
  check_number DOWNLOAD_RETRY_DELAY "${DOWNLOAD_RETRY_DELAY:-3}"
  RETRIES=${DOWNLOAD_RETRIES:-5}
  RETRY_DELAY=${DOWNLOAD_RETRY_DELAY:-3}
  GLUE_BASE_URL=${GLUE_BASE_URL:-https://raw.githubusercontent.com}
  GLUE_ZIP_BASE_URL=${GLUE_ZIP_BASE_URL:-https://dl.fbaipublicfiles.com/glue/data}
  SQUAD_BASE_URL=${SQUAD_BASE_URL:-https://rajpurkar.github.io/SQuAD-explorer/dataset}
  HF_ENDPOINT=${HF_ENDPOINT:-https://huggingface.co}
  local manifest
  for manifest in "${DOWNLOAD_GLUE_MANIFEST:-}" "${DOWNLOAD_SQUAD_MANIFEST:-}" "${DOWNLOAD_MODEL_MANIFEST:-}"; do
    [[ -z $manifest || -f $manifest ]] || usage_error "manifest file $manifest not found"
  done
}

# select_names KIND LIST: sets SELECTED to the validated, de-duplicated names in canonical spelling.
select_names() {
  local kind=$1 names=() name canon
  SELECTED=" "
  IFS=', ' read -r -a names <<<"$2"
  for name in ${names[@]+"${names[@]}"}; do
    [[ -n $name ]] || continue
    if [[ $kind == task ]]; then
      canon=$(canonical_task "$name")
      [[ -n $canon ]] || usage_error "unknown task '$name' in --tasks; known: $ALL_TASKS $SQUAD_TASKS"
    else
      canon=$name
      [[ " $ALL_MODELS " == *" $name "* ]] || usage_error "unknown model '$name' in --models; known: $ALL_MODELS"
    fi
    [[ $SELECTED == *" $canon "* ]] || SELECTED="$SELECTED$canon "
  done
  [[ -n ${SELECTED// /} ]] || usage_error "--${kind}s is empty"
}

check_number() {
  [[ $2 =~ ^[0-9]+$ ]] || usage_error "$1 must be a whole number of retries/seconds (got '$2')"
}

main() {
  parse_args "$@"
  if [[ $LIST -eq 1 ]]; then list_plan; return; fi
  command -v curl >/dev/null 2>&1 || die "curl is not installed"
  pick_hash_tools
  local task model
  if [[ $WANT_DATA -eq 1 ]]; then
    for task in $TASKS; do fetch_data_task "$task"; done
  fi
  if [[ $WANT_MODELS -eq 1 ]]; then
    for model in $MODELS; do fetch_model "$model"; done
  fi
  say "done"
}

main "$@"
