#!/usr/bin/env bash
# A Kubernetes control plane on loopback for trying and testing corra's kubernetes backend:
# etcd, kube-apiserver, kube-scheduler and kube-controller-manager 1.20.2, built from
# Debian's `kubernetes` source package with Debian's Go (no kube-apiserver is packaged
# anywhere these machines reach; there is no container runtime either, so the node is a
# stand-in: see docs/kubernetes-test-cluster.md).
#
#   scripts/kube-test-cluster.sh build        build the binaries once per machine, into
#                                             $CORRA_KUBE_CACHE (~/.cache/corra/kube-1.20.2)
#   scripts/kube-test-cluster.sh start DIR    start the cluster with its state in DIR
#   scripts/kube-test-cluster.sh env DIR      print the KUBECONFIG=... line of that cluster
#   scripts/kube-test-cluster.sh stop DIR     stop it (by the pids in DIR)
#
# Ports: CORRA_KUBE_PORT (the apiserver; default a free one, as for etcd, the scheduler
# and the controller-manager). Prints nothing but errors.
#
# `start` also starts the stand-in node (corra.testing.kubenode: it plays the kubelet and
# runs pods' commands as local programs), named CORRA_KUBE_NODE (default corra-test-node;
# empty: no node), its log in DIR/node.log, with CORRA_PYTHON (default: the work tree's
# .venv/bin/python if there is one, else python3), which must have corra installed with
# its test extra (pip install -e '.[test]'). CORRA_KUBE_NODE_GRACE (default 20s) is how
# long a node may miss heartbeats before the controller-manager marks it unreachable.
set -euo pipefail

VERSION=1.20.2
CACHE=${CORRA_KUBE_CACHE:-${HOME}/.cache/corra/kube-${VERSION}}
BIN=${CACHE}/bin
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
    echo "kube-test-cluster: $*" >&2
    exit 1
}

built() {
    local binary
    for binary in "${BINARIES[@]}"; do
        [[ -x ${BIN}/${binary} ]] || return 1
    done
}

# -- build ---------------------------------------------------------------------------------

need_packages() {
    # Debian's Go (1.19), etcd, and the reflect2 that Go >= 1.18 needs (the source vendors
    # v1.0.1, with which the apiserver panics at start-up).
    local missing=()
    command -v go >/dev/null || missing+=(golang-go)
    command -v etcd >/dev/null || missing+=(etcd-server etcd-client)
    command -v rsync >/dev/null || missing+=(rsync)
    [[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]] ||
        missing+=(golang-github-modern-go-reflect2-dev)
    if ((${#missing[@]})); then
        [[ $(id -u) == 0 ]] || die "build needs these Debian packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    fi
}

need_source_list() {
    # apt-get source needs a deb-src entry for the Debian mirror the machine uses.
    if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ &&
        ! grep -qs '^deb-src' /etc/apt/sources.list; then
        [[ $(id -u) == 0 ]] || die "build needs a deb-src entry in /etc/apt/sources.list.d/"
        local uris
        uris=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
        cat >/etc/apt/sources.list.d/corra-deb-src.sources <<EOF
Types: deb-src
URIs: ${uris:-http://deb.debian.org/debian}
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        apt-get update -q >/dev/null
    fi
}

build() {
    built && return 0
    need_packages
    need_source_list
    local work
    work=$(mktemp -d "${TMPDIR:-/tmp}/corra-kube-build.XXXXXX")
    trap 'rm -rf "${work}"' RETURN
    (
        cd "${work}"
        apt-get source --download-only kubernetes >/dev/null 2>&1 ||
            die "apt-get source --download-only kubernetes failed"
        tar xzf kubernetes_*.orig.tar.gz
        cd "kubernetes-${VERSION}"
        local reflect2=vendor/github.com/modern-go/reflect2
        rm -f "${reflect2}"/*.go "${reflect2}"/*.s
        cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go \
            /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "${reflect2}/"
        mkdir -p .go/src/k8s.io
        ln -sfn ../../.. .go/src/k8s.io/kubernetes
        local what
        what=$(printf 'cmd/%s ' "${BINARIES[@]}")
        GOPATH=${PWD}/.go CGO_ENABLED=0 HOME=${work}/home GOCACHE=${work}/go-build \
            GOPROXY=off make WHAT="${what% }" >"${work}/make.log" 2>&1 || {
            tail -20 "${work}/make.log" >&2
            die "make WHAT=${what% } failed"
        }
        mkdir -p "${BIN}.new"
        for binary in "${BINARIES[@]}"; do
            cp "_output/bin/${binary}" "${BIN}.new/"
        done
    )
    rm -rf "${BIN}"
    mv "${BIN}.new" "${BIN}"
    chmod -R go-rwx "${CACHE}"
}

# -- start, env, stop ----------------------------------------------------------------------

free_ports() { # N: N ports free on 127.0.0.1 now
    python3 - "$1" <<'PY'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
PY
}

wait_until() { # SECONDS WHAT COMMAND...: run COMMAND until it succeeds
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "${what} did not come up (see ${DIR}/${what}.log)"
        sleep 0.2
    done
}

spawn() { # NAME COMMAND...: run COMMAND in the background, its output in DIR/NAME.log
    local name=$1
    shift
    setsid "$@" >"${DIR}/${name}.log" 2>&1 </dev/null &
    echo "$! ${name}" >>"${DIR}/pids"
}

make_certificates() {
    # A CA of the cluster's own, the apiserver's serving certificate (127.0.0.1, localhost)
    # and a client certificate of the group system:masters, all signed by it (P-256 keys:
    # made at once, where RSA takes a while).
    local pki=${DIR}/pki name subject
    mkdir -p "${pki}"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj /CN=corra-test-ca -keyout "${pki}/ca.key" -out "${pki}/ca.crt" 2>/dev/null
    for name in server admin; do
        subject=/CN=kube-apiserver
        [[ ${name} == admin ]] && subject=/O=system:masters/CN=corra-admin
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "${subject}" \
            -keyout "${pki}/${name}.key" -out "${pki}/${name}.csr" 2>/dev/null
    done
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"${pki}/server.ext"
    printf 'extendedKeyUsage=clientAuth\n' >"${pki}/admin.ext"
    for name in server admin; do
        openssl x509 -req -in "${pki}/${name}.csr" -CA "${pki}/ca.crt" -CAkey "${pki}/ca.key" \
            -CAcreateserial -days 3650 -extfile "${pki}/${name}.ext" \
            -out "${pki}/${name}.crt" 2>/dev/null
    done
}

write_kubeconfig() { # PORT TOKEN
    # Two contexts: corra-test (the current one: the admin token, no TLS check) and
    # corra-test-cert (the client certificate, the server checked against the cluster's CA).
    cat >"${DIR}/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: corra-test
  cluster:
    server: https://127.0.0.1:$1
    insecure-skip-tls-verify: true
- name: corra-test-verified
  cluster:
    server: https://127.0.0.1:$1
    certificate-authority: pki/ca.crt
users:
- name: admin
  user:
    token: $2
- name: admin-cert
  user:
    client-certificate: pki/admin.crt
    client-key: pki/admin.key
contexts:
- name: corra-test
  context:
    cluster: corra-test
    user: admin
    namespace: default
- name: corra-test-cert
  context:
    cluster: corra-test-verified
    user: admin-cert
    namespace: default
current-context: corra-test
EOF
}

start() {
    built || die "not built: run $0 build first"
    [[ -e ${DIR}/pids ]] && die "${DIR} has a cluster already (stop it first)"
    mkdir -p "${DIR}"
    chmod 700 "${DIR}"
    umask 077
    local etcd_client etcd_peer scheduler controllers api token
    read -r etcd_client etcd_peer scheduler controllers api < <(free_ports 5)
    api=${CORRA_KUBE_PORT:-${api}}
    token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    # admin may do anything; nobody is authenticated and may do nothing (RBAC refusals).
    {
        echo "${token},admin,admin,system:masters"
        echo "$(python3 -c 'import secrets; print(secrets.token_hex(16))'),nobody,nobody"
    } >"${DIR}/tokens.csv"
    openssl genrsa -out "${DIR}/sa.key" 2048 2>/dev/null
    make_certificates

    spawn etcd etcd --name corra-test --data-dir "${DIR}/etcd" \
        --listen-client-urls "http://127.0.0.1:${etcd_client}" \
        --advertise-client-urls "http://127.0.0.1:${etcd_client}" \
        --listen-peer-urls "http://127.0.0.1:${etcd_peer}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${etcd_peer}" \
        --initial-cluster "corra-test=http://127.0.0.1:${etcd_peer}"
    wait_until 30 etcd curl -sf "http://127.0.0.1:${etcd_client}/health"
    echo "${etcd_client}" >"${DIR}/etcd.port"

    # No ServiceAccount admission (pods need no token) nor default tolerations (a pod of
    # an unreachable node is evicted at once); the kubelet is reached at the node's
    # InternalIP, without checking its certificate (the stand-in node's is its own). Jobs
    # and pods are watched from etcd, not the apiserver's cache, so that compacting etcd
    # makes an old watch position gone (410), as a busy cluster's cache window does.
    spawn kube-apiserver "${BIN}/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:${etcd_client}" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "${api}" \
        --insecure-port 0 --tls-cert-file "${DIR}/pki/server.crt" \
        --tls-private-key-file "${DIR}/pki/server.key" --client-ca-file "${DIR}/pki/ca.crt" \
        --token-auth-file "${DIR}/tokens.csv" \
        --authorization-mode RBAC --service-cluster-ip-range 10.0.0.0/24 \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "${DIR}/sa.key" \
        --service-account-signing-key-file "${DIR}/sa.key" \
        --disable-admission-plugins ServiceAccount,DefaultTolerationSeconds \
        --kubelet-preferred-address-types InternalIP \
        --watch-cache-sizes 'jobs.batch#0,pods#0'
    wait_until 60 kube-apiserver curl -sfk -H "Authorization: Bearer ${token}" \
        "https://127.0.0.1:${api}/readyz"
    write_kubeconfig "${api}" "${token}"

    # A node that stops heartbeating is unreachable after CORRA_KUBE_NODE_GRACE.
    spawn kube-controller-manager "${BIN}/kube-controller-manager" \
        --kubeconfig "${DIR}/kubeconfig" --leader-elect=false --port 0 \
        --secure-port "${controllers}" --bind-address 127.0.0.1 \
        --service-account-private-key-file "${DIR}/sa.key" \
        --root-ca-file "${DIR}/pki/ca.crt" --controllers '*' \
        --node-monitor-grace-period "${CORRA_KUBE_NODE_GRACE:-20s}"
    spawn kube-scheduler "${BIN}/kube-scheduler" --kubeconfig "${DIR}/kubeconfig" \
        --leader-elect=false --port 0 --secure-port "${scheduler}" --bind-address 127.0.0.1
    wait_until 60 kube-controller-manager curl -sfk "https://127.0.0.1:${controllers}/healthz"
    wait_until 60 kube-scheduler curl -sfk "https://127.0.0.1:${scheduler}/healthz"
    start_node
}

start_node() {
    local name=${CORRA_KUBE_NODE-corra-test-node} python=${CORRA_PYTHON:-}
    [[ -n ${name} ]] || return 0
    if [[ -z ${python} ]]; then
        python=python3
        [[ -x ${ROOT}/.venv/bin/python ]] && python=${ROOT}/.venv/bin/python
    fi
    "${python}" -c 'import corra.testing.kubenode' 2>/dev/null ||
        die "${python} cannot import corra.testing.kubenode: install corra with its test extra" \
            "(pip install -e '.[test]') or set CORRA_PYTHON"
    spawn node "${python}" -m corra.testing.kubenode --kubeconfig "${DIR}/kubeconfig" \
        --name "${name}" --ready-file "${DIR}/node.ready"
    wait_until 30 node test -s "${DIR}/node.ready"
}

stop() {
    [[ -e ${DIR}/pids ]] || return 0
    # All but etcd at once (each takes 1.5-3 s to stop: one by one took 10 s), then etcd
    # (stopped with them, the apiserver retries it until killed).
    stop_pids $(awk '$2 != "etcd" {print $1}' "${DIR}/pids")
    stop_pids $(awk '$2 == "etcd" {print $1}' "${DIR}/pids")
    rm -f "${DIR}/pids"
}

stop_pids() { # PID...: SIGTERM them, SIGKILL those left after 10 s
    local pid pids=() waiting
    for pid in "$@"; do
        kill -TERM "${pid}" 2>/dev/null && pids+=("${pid}")
    done
    for _ in $(seq 100); do
        waiting=0
        for pid in "${pids[@]}"; do
            kill -0 "${pid}" 2>/dev/null && waiting=1
        done
        ((waiting)) || return 0
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -KILL "${pid}" 2>/dev/null || true
    done
}

case ${1:-} in
build) build ;;
start | stop | env)
    [[ -n ${2:-} ]] || die "usage: $0 $1 DIR"
    DIR=$(realpath -m "$2")
    case $1 in
    start) start ;;
    stop) stop ;;
    env)
        [[ -e ${DIR}/kubeconfig ]] || die "${DIR} has no cluster"
        echo "KUBECONFIG=${DIR}/kubeconfig"
        ;;
    esac
    ;;
*)
    echo "usage: $0 build | start DIR | env DIR | stop DIR" >&2
    exit 2
    ;;
esac
