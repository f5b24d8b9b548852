#!/usr/bin/env bash
# Builds the Kubernetes control plane the test suite runs against, from the Go
# modules pinned in this directory:
#   kubernetes/  etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#                kubectl and helm, all on the k8s.io/* libraries of one release
#   kwok/        kwok and kwokctl, which need newer k8s.io/* libraries than that
#                release (kwokctl imports API groups it no longer has)
#
# Only missing or outdated tools are built: each binary carries a stamp of the
# go.mod/go.sum it was built from, so an already-built tree costs a few file
# reads. Output goes to a per-user cache keyed by the Kubernetes version:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/sluice/controlplane/<kubernetes-version>/
#     bin/                           the binaries
#     share/kwok/default-stages.yaml the kwok stages that make nodes and pods Ready
# Progress goes to stderr; the last line on stdout is the bin directory.
#
# Usage: build.sh [--print-bin-dir]
#   --print-bin-dir  print the bin directory and exit without building
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
    echo "controlplane/build.sh: error: $*" >&2
    exit 1
}

# Go is needed only when something has to be built.
require_go() {
    command -v go >/dev/null 2>&1 ||
        die "'go' is not on PATH; install Go 1.26 or newer (https://go.dev/dl/) to build the test control plane"
}

# The version of <module path> that <module dir>/go.mod requires.
module_version() { # <module dir> <module path>
    awk -v mod="$2" '{ for (i = 1; i < NF; i++) if ($i == mod && $(i + 1) ~ /^v/) print $(i + 1) }' \
        "$here/$1/go.mod" | head -n 1
}

# What a binary depends on: its module's pinned dependencies and its flags.
stamp_of() { # <module dir> <ldflags>
    cat "$here/$1/go.mod" "$here/$1/go.sum" <(printf '%s' "$2") | sha256sum | cut -d ' ' -f 1
}

main() {
    # The Kubernetes version is read from kubernetes/go.mod so that bumping it
    # there is the only edit needed (and moves the build to a fresh cache dir).
    local kube_version
    kube_version="$(module_version kubernetes k8s.io/kubernetes)"
    [[ "$kube_version" =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] ||
        die "cannot read the k8s.io/kubernetes version from $here/kubernetes/go.mod (got '$kube_version')"
    local kube_major="${BASH_REMATCH[1]}" kube_minor="${BASH_REMATCH[2]}"

    local cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/sluice/controlplane/$kube_version"
    local bin_dir="$cache_root/bin"
    local stages_file="$cache_root/share/kwok/default-stages.yaml"
    local stamp_dir="$cache_root/stamps"

    case "${1:-}" in
        --print-bin-dir)
            echo "$bin_dir"
            return
            ;;
        "") ;;
        *) die "unknown argument '$1' (usage: build.sh [--print-bin-dir])" ;;
    esac

    # One build at a time per version: test binaries started together would
    # otherwise build the same tools into the same files.
    mkdir -p "$cache_root"
    exec 9>"$cache_root/.build.lock"
    if ! flock --nonblock 9; then
        echo "controlplane/build.sh: waiting for another build.sh to finish ..." >&2
        flock 9
    fi

    # Kubernetes release builds stamp the version into these variables;
    # without them /version reports v0.0.0-master.
    local kube_ldflags="" package
    for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        kube_ldflags+=" -X $package.gitVersion=$kube_version -X $package.gitMajor=$kube_major"
        kube_ldflags+=" -X $package.gitMinor=$kube_minor -X $package.gitTreeState=clean"
    done
    kube_ldflags="${kube_ldflags# }"
    local helm_version
    helm_version="$(module_version kubernetes helm.sh/helm/v3)"
    [[ -n "$helm_version" ]] || die "cannot read the helm.sh/helm/v3 version from $here/kubernetes/go.mod"

    # name | module directory | main package | extra -ldflags
    local tools=(
        "etcd|kubernetes|go.etcd.io/etcd/server/v3|"
        "kube-apiserver|kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|$kube_ldflags"
        "kube-controller-manager|kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager|$kube_ldflags"
        "kube-scheduler|kubernetes|k8s.io/kubernetes/cmd/kube-scheduler|$kube_ldflags"
        "kubectl|kubernetes|k8s.io/kubernetes/cmd/kubectl|$kube_ldflags"
        "helm|kubernetes|helm.sh/helm/v3/cmd/helm|-X helm.sh/helm/v3/internal/version.version=$helm_version"
        "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok|"
        "kwokctl|kwok|sigs.k8s.io/kwok/cmd/kwokctl|"
    )

    # Never fetch a newer Go toolchain behind the user's back: fail instead.
    export GOTOOLCHAIN=local
    # Static binaries, and no C toolchain needed.
    export CGO_ENABLED=0

    local started=$SECONDS tool name module ldflags stamp tool_started built=()
    mkdir -p "$bin_dir" "$stamp_dir"
    for tool in "${tools[@]}"; do
        IFS='|' read -r name module package ldflags <<<"$tool"
        stamp="$(stamp_of "$module" "$ldflags")"
        if [[ -x "$bin_dir/$name" && "$(cat "$stamp_dir/$name" 2>/dev/null)" == "$stamp" ]]; then
            continue
        fi
        require_go
        echo "controlplane/build.sh: building $name ($package) ..." >&2
        tool_started=$SECONDS
        # Build next to the target and rename, so that an interrupted build
        # never leaves a truncated binary that looks usable.
        (cd "$here/$module" && go build -trimpath -ldflags="-s -w $ldflags" -o "$bin_dir/.$name.partial" "$package") ||
            die "building $name from $here/$module failed (see the go output above)"
        mv -f "$bin_dir/.$name.partial" "$bin_dir/$name"
        echo "$stamp" >"$stamp_dir/$name"
        echo "controlplane/build.sh: built $name in $((SECONDS - tool_started))s" >&2
        built+=("$name")
    done

    # kwok only moves fake nodes and pods through their lifecycle when it is
    # given stages; these are the defaults kwokctl installs (node-initialize,
    # node-heartbeat-with-lease, pod-ready, pod-complete, pod-delete), taken
    # from the pinned kwok module so that they always match the kwok binary.
    local stages_stamp kwok_source stage
    stages_stamp="$(stamp_of kwok "default-stages")"
    if [[ ! -s "$stages_file" || "$(cat "$stamp_dir/kwok-default-stages" 2>/dev/null)" != "$stages_stamp" ]]; then
        require_go
        kwok_source="$(cd "$here/kwok" && go mod download sigs.k8s.io/kwok && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)" ||
            die "cannot download the sigs.k8s.io/kwok module source (see the go output above)"
        mkdir -p "$(dirname "$stages_file")"
        for stage in node/fast/node-initialize.yaml \
            node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
            pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
            [[ -f "$kwok_source/kustomize/stage/$stage" ]] ||
                die "kwok stage $stage is missing from $kwok_source; did the kwok version change its layout?"
            echo "---"
            cat "$kwok_source/kustomize/stage/$stage"
        done >"$stages_file.partial"
        mv -f "$stages_file.partial" "$stages_file"
        echo "$stages_stamp" >"$stamp_dir/kwok-default-stages"
    fi

    if ((${#built[@]} > 0)); then
        echo "controlplane/build.sh: built ${built[*]} in $((SECONDS - started))s" >&2
    else
        echo "controlplane/build.sh: the control plane binaries for $kube_version are up to date ($((SECONDS - started))s)" >&2
    fi
    echo "$bin_dir"
}

# On one line, so that bash has read all of this file before main runs: editing
# or checking out the file during a long build cannot derail the build.
main "$@"; exit
