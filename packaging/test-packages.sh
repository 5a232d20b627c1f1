#!/usr/bin/env bash
# Checks the packages that `make packages` built: the .deb is installed into a
# scratch root with dpkg (upgrade and removal included), the .rpm into another
# with rpm; the files, the conffile handling, the unit and both binaries are
# checked from there. Nothing is installed on this system. Needs root (dpkg
# --root writes root-owned files).
set -uo pipefail

dir=${1:-target/packages}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
deb=$dir/loxilight_${version}-1_amd64.deb
rpm=$dir/loxilight-${version}-1.x86_64.rpm
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

passed=0
failed=0
# check NAME COMMAND...: runs COMMAND, prints its output only when it fails.
check() {
	local name=$1
	shift
	local out
	if out=$("$@" 2>&1); then
		passed=$((passed + 1))
		echo "ok   $name"
	else
		failed=$((failed + 1))
		echo "FAIL $name"
		[ -n "$out" ] && sed 's/^/     /' <<<"$out"
	fi
}

for f in "$deb" "$rpm"; do
	if [ ! -f "$f" ]; then
		echo "error: $f is missing: run 'make packages' first" >&2
		exit 1
	fi
done

files=(usr/bin/loxilight usr/bin/loxicmd etc/loxilight/loxilight.toml usr/share/doc/loxilight/README.md)

# --- .deb, into a scratch root with its own dpkg database. Its libraries
# (libc, libelf, zlib) are the host's, hence --force-depends.
root=$scratch/deb
admin=$root/var/lib/dpkg
mkdir -p "$admin/info" "$admin/updates"
touch "$admin/status"
dpkg_root() { dpkg --root="$root" --log=/dev/null --force-depends "$@"; }

check "deb: dpkg installs it into a scratch root" dpkg_root -i "$deb"
check "deb: dpkg reports it installed" \
	bash -c "dpkg-query --admindir='$admin' -W -f='\${Status}' loxilight | grep -qx 'install ok installed'"
for f in "${files[@]}" lib/systemd/system/loxilight.service; do
	check "deb: ships /$f" test -s "$root/$f"
done
check "deb: the binaries are executable" test -x "$root/usr/bin/loxilight" -a -x "$root/usr/bin/loxicmd"
check "deb: loxilight --version runs" bash -c "'$root/usr/bin/loxilight' --version | grep -qx 'loxilight $version'"
check "deb: loxicmd --version runs" bash -c "'$root/usr/bin/loxicmd' --version | grep -qx 'loxicmd $version'"
check "deb: the config is a conffile" \
	bash -c "dpkg-query --admindir='$admin' -W -f='\${Conffiles}' loxilight | grep -q '^ /etc/loxilight/loxilight.toml '"

# The unit, as systemd reads it, pointing at the scratch root's binary.
unit=$scratch/loxilight.service
sed "s|/usr/bin/loxilight|$root/usr/bin/loxilight|" "$root/lib/systemd/system/loxilight.service" >"$unit"
check "unit: systemd-analyze verify" bash -c "out=\$(systemd-analyze verify '$unit' 2>&1); echo \"\$out\"; [ -z \"\$out\" ]"
check "unit: restarts on failure" grep -qx 'Restart=on-failure' "$unit"
check "unit: hardening exposure at most 5.0 of 10 (systemd-analyze security)" \
	systemd-analyze security --offline=true --threshold=50 "$unit"

# An administrator's change survives a reinstall; removal keeps it, purge does not.
echo 'metrics_listen = "127.0.0.1:9999"' >>"$root/etc/loxilight/loxilight.toml"
check "deb: reinstall keeps the edited config" \
	bash -c "dpkg --root='$root' --log=/dev/null --force-depends --force-confold -i '$deb' >/dev/null && grep -q 9999 '$root/etc/loxilight/loxilight.toml'"
check "deb: remove keeps the config" \
	bash -c "dpkg --root='$root' --log=/dev/null -r loxilight >/dev/null && test ! -e '$root/usr/bin/loxilight' && test -e '$root/etc/loxilight/loxilight.toml'"
check "deb: purge removes the config" \
	bash -c "dpkg --root='$root' --log=/dev/null -P loxilight >/dev/null && test ! -e '$root/etc/loxilight/loxilight.toml'"

# --- .rpm: its listing, then an install into a scratch root with its own database.
check "rpm: rpm -qlp lists the files" \
	bash -c "diff <(rpm -qlp '$rpm' 2>/dev/null | sort) <(printf '%s\n' /etc/loxilight/loxilight.toml /usr/bin/loxicmd /usr/bin/loxilight /usr/lib/systemd/system/loxilight.service /usr/share/doc/loxilight/README.md)"
check "rpm: the config is %config(noreplace)" \
	bash -c "rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' '$rpm' 2>/dev/null | grep -qx '/etc/loxilight/loxilight.toml cn'"
root=$scratch/rpm
check "rpm: rpm installs it into a scratch root" \
	bash -c "rpm --root '$root' --initdb && rpm --root '$root' -i --nodeps '$rpm' 2>&1 | grep -v 'Alien\|assuming you know' || true; test -x '$root/usr/bin/loxilight'"
check "rpm: loxilight --version runs" bash -c "'$root/usr/bin/loxilight' --version | grep -qx 'loxilight $version'"
check "rpm: loxicmd --version runs" bash -c "'$root/usr/bin/loxicmd' --version | grep -qx 'loxicmd $version'"

echo "packages: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
