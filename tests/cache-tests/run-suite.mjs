// Runs the HTTP Caching Tests suite (npm `http-cache-tests`) against the cache at a base URL and
// prints one JSON object per test on its own line: the test's id, its suite, its kind
// (`required`, `optimal` or `check`), the tests it depends on, and the suite's raw result
// (`true`, or `[kind, message]`). Judging the results is left to the caller.
//
// Usage: node run-suite.mjs BASE_URL (no trailing slash), from this folder after `npm ci`.

import { runTests, getResults } from 'http-cache-tests/client/runner.mjs'
import suites from 'http-cache-tests/tests/index.mjs'
import fetch from 'node-fetch'

const base = process.argv[2]
if (!base) {
  console.error('usage: node run-suite.mjs BASE_URL')
  process.exit(2)
}

await runTests(suites, fetch, false, base)
const results = getResults()
for (const suite of suites) {
  for (const test of suite.tests) {
    if (test.browser_only === true) continue
    console.log(JSON.stringify({
      id: test.id,
      suite: suite.id,
      kind: test.kind || 'required',
      depends_on: test.depends_on || [],
      name: test.name,
      result: results[test.id] === undefined ? null : results[test.id]
    }))
  }
}
