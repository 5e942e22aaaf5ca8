#!/usr/bin/env bash
# The main job on the embedded default (Gemma 3 270M on a loopback llama.cpp server), end to end:
#   1. label      llmclf classify with llm:local
#   2. evaluate   the teacher on the sst2 eval set (stored run + HTML report)
#   3. distill    teacher labels on SST-2 train texts -> a SetFit student in models/sst2 (+ ONNX)
#   4. evaluate   the student on the same eval set
#   5. route      router.yaml: the student first, llm:local when it is unsure
# Sizes are small so it finishes in a few minutes on 2 cores; raise them with
#   MAIN_JOB_TEXTS (texts the teacher labels, default 400) and MAIN_JOB_EVAL (eval cases, 200).
# State (cache, runs, review queue, the local server) lives in $LLMCLF_HOME (default ~/.llmclf).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
L=.venv/bin/llmclf
TEXTS=${MAIN_JOB_TEXTS:-400}
EVAL=${MAIN_JOB_EVAL:-200}
mkdir -p out

echo "== 1. label with the embedded LLM"
$L classify --task sst2 --backend llm:local \
  "a gorgeous, witty, seductive movie" "the plot is paper-thin and the jokes fall flat"

echo "== 2. evaluate the teacher (llm:local) on $EVAL sst2 cases"
$L eval --eval-set sst2 --backend llm:local --limit "$EVAL" --html out/teacher.html

echo "== 3. distill $TEXTS teacher-labelled texts into a SetFit student"
$L distill --task sst2 --teacher llm:local --unlabeled eval_sets/sst2/unlabeled.jsonl \
  --limit "$TEXTS" --eval-set sst2 --out models/sst2 --mode end-to-end --int8-bound 0.2 --force

echo "== 4. evaluate the student"
$L eval --eval-set sst2 --backend setfit:models/sst2 --limit "$EVAL" --html out/student.html

echo "== 5. route: the student first, the LLM when it is unsure (router.yaml)"
$L classify --task sst2 --backend router:router.yaml \
  "an utterly charming and hilarious film" "it is not a bad movie, just a forgettable one"
$L eval --eval-set sst2 --backend router:router.yaml --limit "$EVAL"

echo "done: serve it with  .venv/bin/llmclf serve --router router.yaml"
