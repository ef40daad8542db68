#!/usr/bin/env bash
# Boots every test guest under QEMU and checks its last serial line and exit status.
# Usage: guests/scripts/qemu-check.sh [tcg|kvm]   (default tcg; run `cargo build -p guests` first)
# QEMU's isa-debug-exit turns the guest's status s into the exit code (s << 1) | 1; a reset with
# -no-reboot exits 0. `memory` has no PVH note and cannot boot under QEMU: memory-pvh stands in.
set -u
accel=${1:-tcg}
case $accel in
    tcg) accel_args=(-accel tcg -cpu max) ;;
    kvm) accel_args=(-enable-kvm) ;;
    *) echo "usage: $0 [tcg|kvm]" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(ls -td "$root"/target/debug/build/guests-*/out 2>/dev/null | head -1)
[ -n "$out" ] || { echo "no built guests under $root/target; run cargo build -p guests" >&2; exit 2; }
failed=0
check() { # name machine smp mem expected-exit expected-line-prefix
    local name=$1 machine=$2 smp=$3 mem=$4 want_rc=$5 want=$6 log rc last
    log=$(mktemp)
    timeout 120 qemu-system-x86_64 -M "$machine" "${accel_args[@]}" -smp "$smp" -m "$mem" \
        -nographic -no-reboot -serial stdio -monitor none \
        -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$out/$name" >"$log" 2>/dev/null
    rc=$?
    # SeaBIOS (q35) prints its banner on the same serial port, without a newline before ours.
    last=$(tr -d '\r' <"$log" | grep -a . | tail -1 | sed 's/.*Booting from ROM\.\.//')
    rm -f "$log"
    if [ "$rc" = "$want_rc" ] && [[ "$last" == "$want"* ]]; then
        echo "ok    $name ($machine, -smp $smp, -m $mem): $last"
    else
        echo "FAIL  $name ($machine, -smp $smp, -m $mem): exit $rc, last line: $last"
        failed=1
    fi
}
check hello microvm 1 512M 1 "Hello from the popek hello guest!"
check smp microvm 2 512M 1 "smp: 2 of 2 CPUs checked in"
check smp microvm 4 512M 1 "smp: 4 of 4 CPUs checked in"
check timer microvm 1 512M 1 "timer: "
check timer q35 1 512M 1 "timer: "
check memory-pvh microvm 1 1G 1 "memory: verified "
check reset q35 1 512M 0 "reset: pulsing the i8042 reset line"
if [ "$accel" = tcg ]; then
    check int3 microvm 1 512M 1 "int3: breakpoint handled"
fi
exit $failed
