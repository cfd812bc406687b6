#!/bin/sh
# thinlto-backend -B on a tree whose thin link is done (out/vmlinux.thinlto-index),
# plain spawns vs --warm, alternated RUNS times: wall and CPU (user, sys, the
# compiles included) per run, and a digest of all natives after each run (the
# two modes must agree).
#
#   cargo run -p xtask -- fe --objects 2000      # target/gen-2000
#   (cd target/gen-2000 && mkdir -p out && thinlto-index order vmlinux.a > out/builtin.order &&
#    thinlto-index link --ldflags '-m elf_x86_64 -z noexecstack -mllvm -import-instr-limit=5' \
#        --index out/vmlinux.thinlto-index out/builtin.order > /dev/null)
#   examples/warm-bench.sh target/gen-2000 2
#
# usage: warm-bench.sh TREE [RUNS]   (BIN: the directory of thinlto-backend,
# default target/debug of this checkout; LLVM=-19 unless set)
set -e
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$here/target/debug}
: "${LLVM:=-19}"
export LLVM
cd "$1"
for i in $(seq 1 "${2:-3}"); do
  for mode in plain warm; do
    flag=; [ $mode = warm ] && flag=--warm
    /usr/bin/time -f "$mode wall %e s user %U s sys %S s" \
      "$BIN/thinlto-backend" --index out/vmlinux.thinlto-index -B -q --no-summary $flag > /dev/null
    find . -name '*.thinlto-native.o' | sort | xargs sha256sum | sha256sum | sed "s/^/$mode natives /"
  done
done 2>&1
