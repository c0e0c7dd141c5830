# Sourced by the bench scripts: llama.cpp from the pinned sources every comparison
# uses, the sources vendored in the PyPI sdist of llama-cpp-python (fetched with pip
# once, sha256-checked), built static with cmake and ninja from pip.
#
#   llamacpp_sources [FILE]   fetch/check the sdist; extract it unless FILE (a path in
#                             the llama.cpp tree) is already there
#   llamacpp_build DIR "CMAKE FLAGS" TARGET...
#                             configure and build TARGETs in $LLAMACPP_SRC/DIR
#
# Callers run from the project root. JOBS (default 2) sets the build's parallelism.
# Nothing here touches the network once the sdist and the venv exist.

LLAMACPP_VERSION=0.3.16
LLAMACPP_SHA256=34ed0f9bd9431af045bb63d9324ae620ad0536653740e9bb163a2e1fcb973be6
LLAMACPP_DIR=target/llamacpp
LLAMACPP_SRC="$LLAMACPP_DIR/src/vendor/llama.cpp"

llamacpp_sources() {
    local sdist="$LLAMACPP_DIR/llama_cpp_python-$LLAMACPP_VERSION.tar.gz"
    mkdir -p "$LLAMACPP_DIR"
    if [ ! -f "$sdist" ]; then
        python3 -m pip download --no-deps "llama-cpp-python==$LLAMACPP_VERSION" -d "$LLAMACPP_DIR"
    fi
    echo "$LLAMACPP_SHA256  $sdist" | sha256sum -c - >&2
    if [ ! -f "$LLAMACPP_SRC/${1:-CMakeLists.txt}" ]; then
        rm -rf "$LLAMACPP_DIR/src" && mkdir -p "$LLAMACPP_DIR/src"
        tar xzf "$sdist" -C "$LLAMACPP_DIR/src" --strip-components=1
    fi
}

# cmake and ninja from pip, in target/llamacpp/venv.
llamacpp_venv() {
    if [ ! -x "$LLAMACPP_DIR/venv/bin/cmake" ] || [ ! -x "$LLAMACPP_DIR/venv/bin/ninja" ]; then
        python3 -m venv "$LLAMACPP_DIR/venv" && "$LLAMACPP_DIR/venv/bin/pip" install -q cmake ninja
    fi
}

llamacpp_build() {
    local build=$1 flags=$2
    shift 2
    llamacpp_sources
    llamacpp_venv
    local venv
    venv="$(cd "$LLAMACPP_DIR/venv/bin" && pwd)"
    (
        cd "$LLAMACPP_SRC"
        # The Vulkan backend's shader generator is a subproject that looks for ninja
        # on PATH.
        export PATH="$venv:$PATH"
        # shellcheck disable=SC2086  # the flags are words
        "$venv/cmake" -S . -B "$build" -G Ninja -DCMAKE_MAKE_PROGRAM="$venv/ninja" \
            -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
            -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF $flags
        "$venv/cmake" --build "$build" -j "${JOBS:-2}" --target "$@"
    )
}
