#!/usr/bin/env bash
# The two set-up commands of the README, for a fresh Debian 12 machine where you are root:
#   scripts/lab.sh demo   install everything, make this machine the lab KVM host
#                         (playbooks/site.yml: the kvm_host role), build the tiny guest image
#                         and apply the demo tenant (a network, two VMs with disks, started)
#   scripts/lab.sh test   install everything, and the browser tools (chromium, axe-core,
#                         Lighthouse), and run the whole test suite (what CI runs):
#                         the README's install and demo in a pristine Debian 12 root
#                         (tools/pristine_root.py), ruff, ansible-doc, playbook syntax,
#                         ansible-lint, ansible-test sanity,
#                         pytest (the unit tier with its coverage gate first), every
#                         benchmark's quick mode, and `molecule test` (the roles converged here)
#   scripts/lab.sh zones  start the zone lab (two KVM hosts in network namespaces, two zones,
#                         each with its own sshd) and apply playbooks/zones.yml over SSH:
#                         public IPs and a cross-zone link
#   scripts/lab.sh zones-down   stop the zone lab
# Both start libvirtd/virtlogd themselves when none is running (no systemd needed).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
  qemu-system-x86 qemu-utils dnsmasq-base iptables nftables iproute2 iputils-ping procps
  python3 python3-venv python3-dev gcc pkg-config
  syslinux syslinux-common mtools dosfstools fdisk busybox-static kmod
  systemd  # the kvm_host role wants it (systemd-analyze verify); minbase roots lack it
  shellcheck  # for ansible-test sanity's shellcheck test (it skips the test without it)
  debootstrap  # tools.pristine_root builds the pristine Debian 12 root of its check
  postgresql  # the ledger's tests run against a private PostgreSQL server too
  iperf3  # bench/firewall_throughput.py measures tenant traffic with and without the firewall
  curl jq  # tests/server/test_api_doc.py runs docs/api.md's examples as a customer would
)
# For `test` only (install and demo, and so the pristine root's check of them, need none):
# the browser tier and the browser benches drive Debian's chromium (Playwright and Lighthouse
# never download a browser of their own); a font for the text of its screenshots.
BROWSER_DEBIAN_PACKAGES=(chromium fonts-dejavu-core)
# Their JavaScript, pinned by each directory's package-lock.json: axe-core, Lighthouse; and
# xterm.js, whose files the server serves from copies the unit tier checks against its tarball.
NPM_DIRECTORIES=(tests/browser bench/browser server/vce_server/panel)
# For `zones` and `test`: every host of the zone lab runs its own sshd in its network namespace
# (tools/multihost.py); the machine's own sshd is not needed and not started by the lab.
# netcat-openbsd: a `qemu+ssh://...?socket=` URI (each lab host's) runs `nc -U <socket>` on the
# host; virt-ssh-helper cannot take a socket path (a fresh machine failed: "nc: not found").
LAB_DEBIAN_PACKAGES=(openssh-server netcat-openbsd)
VENV=.venv

install_debian_packages() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$package")
  done
  if ((${#missing[@]})); then
    echo "lab: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

install_python() {
  # Rebuild the virtualenv's packages only when the project's requirements change.
  local stamp="$VENV/.vce-installed"
  local wanted
  wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "lab: installing the project and its Python dependencies into $VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q ".[test]"
    echo "$wanted" > "$stamp"
  fi
}

install_all() {
  install_debian_packages "${DEBIAN_PACKAGES[@]}"
  install_python
}

install_npm_directories() {
  # npm ci again only when a directory's lock changes (it empties node_modules first).
  local directory stamp wanted
  for directory in "${NPM_DIRECTORIES[@]}"; do
    stamp="$directory/node_modules/.vce-installed"
    wanted=$(sha256sum "$directory/package-lock.json" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
      echo "lab: npm ci in $directory"
      (cd "$directory" && npm ci --no-audit --no-fund --loglevel=error)
      echo "$wanted" > "$stamp"
    fi
  done
}

install_browser_tools() {
  local packages=("${BROWSER_DEBIAN_PACKAGES[@]}")
  # The machine's own Node.js when it has one (a newer one than Debian's, often); else Debian's.
  command -v npm > /dev/null || packages+=(nodejs npm)
  install_debian_packages "${packages[@]}"
  install_npm_directories
}

demo() {
  install_all
  PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/ansible-playbook" playbooks/site.yml
  # The base image (tools.tinyguest); the daemons and the pool are already there.
  "$VENV/bin/python" -m tools.labhost
  PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/ansible-playbook" playbooks/demo.yml
}

MULTIHOST_DIR=/var/lib/vce-kvm/multihost  # as inventories/lab/hosts.yml says
MULTIHOST_PREFIX=vcelab

zones() {
  install_all
  install_debian_packages "${LAB_DEBIAN_PACKAGES[@]}"
  "$VENV/bin/python" -m tools.labhost
  # A lab recorded before a reboot (its namespaces are gone) or before its hosts ran sshd
  # is started anew.
  if [ -f "$MULTIHOST_DIR/lab.json" ] && ! zone_lab_answers; then
    zones_down
  fi
  if [ ! -f "$MULTIHOST_DIR/lab.json" ]; then
    "$VENV/bin/python" -m tools.multihost up "$MULTIHOST_DIR" --prefix "$MULTIHOST_PREFIX" > /dev/null
  fi
  PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/ansible-playbook" playbooks/zones.yml
}

zone_lab_answers() {
  # Its first host, over SSH as the playbook reaches it (the lab's key, its pinned host key).
  local subnet
  subnet=$(jq -r '.mgmt_subnet // empty' "$MULTIHOST_DIR/lab.json")
  [ -n "$subnet" ] && "$MULTIHOST_DIR/ssh/ssh" "root@172.30.$subnet.10" true 2> /dev/null
}

zones_down() {
  [ -f "$MULTIHOST_DIR/lab.json" ] && "$VENV/bin/python" -m tools.multihost down "$MULTIHOST_DIR"
  return 0
}

sanity() {
  # ansible-test sanity, every test, Python 3.11, empty ignore files (tools/ansible_test_sanity.py
  # says how it runs without ansible-test's CI host). 2.5-3.5 min the first time (it builds
  # its virtualenvs under ~/.ansible/test), then ~30 s.
  echo "lab: ansible-test sanity"
  "$VENV/bin/python" -m tools.ansible_test_sanity
}

run_tests() {
  install_all
  install_debian_packages "${LAB_DEBIAN_PACKAGES[@]}"
  install_browser_tools
  local py="$VENV/bin/python"
  echo "lab: pristine Debian 12 root: lab.sh install, then lab.sh demo until both VMs answer ping"
  "$py" -m tools.pristine_root check
  echo "lab: ruff"
  "$VENV/bin/ruff" check .
  "$VENV/bin/ruff" format --check .
  echo "lab: ansible-doc renders every module"
  for module in plugins/modules/*.py; do
    name=$(basename "$module" .py)
    [ "$name" = "__init__" ] && continue
    "$VENV/bin/ansible-doc" "vce.kvm.$name" > /dev/null
  done
  echo "lab: playbook syntax"
  for playbook in playbooks/*.yml; do
    PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/ansible-playbook" --syntax-check "$playbook" > /dev/null
  done
  echo "lab: ansible-lint (production profile: roles, playbooks, molecule)"
  PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/ansible-lint"
  sanity
  echo "lab: pytest, unit tier with coverage (no engine file under 60% from unit tests alone)"
  mkdir -p tests/output
  # Two workers (pytest-xdist): the unit tier is CPU-bound and its tests share nothing (the
  # test driver, scratch namespaces and PostgreSQL servers of their own): 11 min serial on 2 cores.
  COVERAGE_FILE=tests/output/.coverage PATH="$PWD/$VENV/bin:$PATH" \
    "$py" -m pytest -q -p no:cacheprovider -n 2 --durations=10 tests/unit \
    --cov=plugins/module_utils --cov-report=term --cov-report=json:tests/output/coverage.json
  "$py" -m tools.coverage_gate tests/output/coverage.json --minimum 60
  echo "lab: pytest (cli, pulumi, integration against a private libvirtd, guest boot, multi-host)"
  PATH="$PWD/$VENV/bin:$PATH" "$py" -m pytest -q -p no:cacheprovider --durations=20 tests \
    --ignore=tests/unit
  echo "lab: every benchmark's quick mode (small counts, nothing recorded: none breaks unnoticed)"
  PATH="$PWD/$VENV/bin:$PATH" "$py" bench/quick.py
  echo "lab: molecule test (kvm_host and tenant_environment on this machine, testinfra)"
  PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/molecule" test
}

case "${1:-}" in
  demo) demo ;;
  test) run_tests ;;
  install) install_all ;;
  zones) zones ;;
  zones-down) zones_down ;;
  *)
    echo "usage: $0 demo|test|install|zones|zones-down" >&2
    exit 2
    ;;
esac
