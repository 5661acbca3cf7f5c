// Reads run-suite.mjs's JSON lines on standard input and prints, per kind of test, how many
// passed, failed and were not reached, by the suite's own rules: a test whose setup failed, or
// that depends on a test that did not pass, is not reached.
//
// Usage: node run-suite.mjs BASE_URL | node summarize.mjs NAME

import { createInterface } from 'readline'

const name = process.argv[2] || 'cache'
const tests = new Map()
for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim()) {
    const test = JSON.parse(line)
    tests.set(test.id, test)
  }
}

function outcome (id) {
  const test = tests.get(id)
  if (test.result === null) return 'untested'
  for (const dependency of test.depends_on) {
    if (tests.has(dependency) && outcome(dependency) !== 'passed') return 'not reached'
  }
  if (test.result === true) return 'passed'
  if (Array.isArray(test.result) && test.result[0] === 'Setup') return 'not reached'
  return 'failed'
}

const counts = {}
for (const id of tests.keys()) {
  const kind = tests.get(id).kind
  counts[kind] = counts[kind] || { passed: 0, failed: 0, 'not reached': 0, untested: 0 }
  counts[kind][outcome(id)]++
}
for (const kind of ['required', 'optimal', 'check']) {
  const c = counts[kind] || { passed: 0, failed: 0, 'not reached': 0, untested: 0 }
  console.log(`${name}\t${kind}\t${c.passed}\t${c.failed}\t${c['not reached']}\t${c.untested}`)
}
