#!/usr/bin/env bash
# Boots every test guest under QEMU and checks its last serial line and exit status (the virtio
# guest with QEMU's virtio-blk, virtio-rng and virtio-net PCI devices).
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

# The virtio guest against QEMU's virtio-pci devices. microvm with pcie=on has ECAM only (found
# through the DSDT's _CBA: no MCFG) and leaves BARs unassigned; q35 has both mechanisms and
# SeaBIOS assigns the BARs. Net frames go through a UDP socket on loopback that sends to itself.
check_virtio() { # machine append expected-last-line expected-other-line|"" qemu-args...
    local machine=$1 append=$2 want=$3 also=$4 log rc last
    shift 4
    log=$(mktemp)
    timeout 120 qemu-system-x86_64 -M "$machine" "${accel_args[@]}" -smp 1 -m 512M \
        -nographic -no-reboot -serial stdio -monitor none -net none \
        -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$out/virtio" -append "$append" \
        "$@" >"$log" 2>/dev/null
    rc=$?
    last=$(tr -d '\r' <"$log" | grep -a . | tail -1 | sed 's/.*Booting from ROM\.\.//')
    if [ "$rc" = 1 ] && [ "$last" = "$want" ] && { [ -z "$also" ] || tr -d '\r' <"$log" | grep -aqxF "$also"; }; then
        echo "ok    virtio ($machine, $append): $last"
    else
        echo "FAIL  virtio ($machine, $append): exit $rc, last line: $last${also:+ (wanted also: $also)}"
        failed=1
    fi
    rm -f "$log"
}
disk=$(mktemp)
# 64 sectors: 8 of 0x5a, then zeros. FNV-1a 64 of those 8 sectors: 0x8ab9e262b32da325.
head -c 4096 /dev/zero | tr '\0' '\132' >"$disk"
truncate -s 32K "$disk"
blk=(-drive "file=$disk,format=raw,if=none,id=d0" -device virtio-blk-pci,drive=d0)
rng=(-device virtio-rng-pci)
port=$((40000 + RANDOM % 20000))
net=(-netdev "socket,id=n0,udp=127.0.0.1:$port,localaddr=127.0.0.1:$port" -device virtio-net-pci,netdev=n0)
uvm=microvm,acpi=on,pcie=on,pit=on
check_virtio $uvm "test=blk-read count=8" "virtio: 1 tests passed" \
    "blk: read 8 sectors at 0 fnv1a64=8ab9e262b32da325" "${blk[@]}"
check_virtio $uvm "test=blk,blk-read,rng sector=8 seed=3 count=16" "virtio: 3 tests passed" "" \
    "${blk[@]}" "${rng[@]}"
check_virtio $uvm "test=net nettag=5" "virtio: 1 tests passed" "net: received popek-guest-frame 5" \
    "${net[@]}"
check_virtio $uvm "test=blk,rng,net irq=msix" "virtio: 3 tests passed" "" \
    "${blk[@]}" "${rng[@]}" "${net[@]}"
check_virtio q35 "test=blk,rng pci=ports" "virtio: 2 tests passed" "" "${blk[@]}" "${rng[@]}"
check_virtio $uvm "test=blk" "virtio: 1 tests passed" "blk: write on read-only -> IOERR" \
    -drive "file=$disk,format=raw,if=none,id=d0,readonly=on" -device virtio-blk-pci,drive=d0
rm -f "$disk"
exit $failed
