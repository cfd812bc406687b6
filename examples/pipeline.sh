#!/usr/bin/env bash
# The distributed ThinLTO flow (stages 2-4 and modpost) as a shell pipeline
# of thinlto-dist's tools. Run it from the root of a tree whose front end is
# built (objects, .cmd files, vmlinux.a):
#
#   PATH=/path/to/thinlto-dist/bin:$PATH LLVM=-19 \
#   KBUILD_LDFLAGS='-m elf_x86_64 -z noexecstack' examples/pipeline.sh [OUT]
#
# The toolchain comes from LLVM= or CC/LD/AR as for kbuild (LLVM= first). Top-level
# outputs go to OUT (default out-pipe); per-object outputs beside the objects.
set -euo pipefail

out=${1:-out-pipe}
jobs=${JOBS:-$(nproc)}
ldflags=${KBUILD_LDFLAGS:-}
mkdir -p "$out"

# Stage 2: member order, then the thin link; the manifest goes straight to
# the backend (stage 3), whose per-job JSON records we keep.
thinlto-index order vmlinux.a > "$out/builtin.order"
thinlto-index link --ldflags "$ldflags" -o "$out/vmlinux.thinlto-index" \
	--imports "$out/builtin.order" |
	thinlto-backend -q -j "$jobs" > "$out/backend.jsonl"

# Stage 4: the thin archive with natives substituted, then vmlinux.o.
thinlto-backend archive --order "$out/builtin.order" \
	--index "$out/vmlinux.thinlto-index" -o "$out/vmlinux.a"
# LD as kbuild and the tools choose it: LLVM= beats the environment's LD.
case "${LLVM:-}" in
*/) LD="${LLVM}ld.lld" ;;
-*) LD="ld.lld${LLVM}" ;;
?*) LD=ld.lld ;;
*) LD=${LD:-ld.lld} ;;
esac
# shellcheck disable=SC2086 # KBUILD_LDFLAGS is a word list, as in kbuild
$LD $ldflags -r -o "$out/vmlinux.o" \
	--whole-archive "$out/vmlinux.a" --no-whole-archive --start-group --end-group

# modpost's view: the archive's members, their CRCs, the exports.
thinlto-index order "$out/vmlinux.a" > "$out/.vmlinux.objs"
modpost-ir symvers "$out/vmlinux.o" --objects "$out/.vmlinux.objs" \
	-o "$out/vmlinux.symvers" --export-c "$out/.vmlinux.export.c"
