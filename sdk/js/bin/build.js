#!/usr/bin/env node
// Builds a JavaScript filter into a Sluice component, in two steps:
// 1. bundle the filter's entry module (package.json "main", else src/filter.js) and everything it
//    imports, the SDK included, into one ES module with rolldown: the component's JS engine loads
//    exactly one module, and `sluice:` imports stay imports (they are the host's interfaces);
// 2. componentize that module against the sluice:filter world with componentize-js (the
//    StarlingMonkey engine, snapshotted by wizer after the module has loaded).
//
// componentize-js is pinned at 0.19.3 and called directly rather than through jco's CLI: later
// versions wrap every export call in the component-model-async task machinery, written in JS and
// run by the engine's interpreter, which made a call about nine times dearer (see
// docs/benchmarks.md, "Filter call path"). jco stays pinned beside it as its dependency.
//
// WASI: a filter gets none of it unless its package.json asks, with
// `"sluice": { "wasi": ["clocks", "random", "stdio"] }`; everything else is disabled, so the
// component imports no WASI it does not use.
//
// Usage: sluice-js-build [--wit DIR] [--out FILE] [FILTER_DIR]
// Without --out, writes dist/NAME.wasm and prints its path.

import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { componentize } from '@bytecodealliance/componentize-js';
import { build } from 'rolldown';

const WASI_FEATURES = ['stdio', 'random', 'clocks', 'http', 'fetch-event'];

function parseArgs(argv) {
  const args = { dir: '.', wit: process.env.SLUICE_WIT_DIR, out: undefined };
  for (let index = 0; index < argv.length; index += 1) {
    const arg = argv[index];
    if (arg === '--wit') args.wit = argv[(index += 1)];
    else if (arg === '--out') args.out = argv[(index += 1)];
    else if (arg.startsWith('-')) throw new Error(`unknown option ${arg}`);
    else args.dir = arg;
  }
  return args;
}

function fail(message) {
  process.stderr.write(`sluice-js-build: ${message}\n`);
  process.exit(1);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const dir = resolve(args.dir);
  const manifestPath = join(dir, 'package.json');
  if (!existsSync(manifestPath)) fail(`${dir} has no package.json`);
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
  const name = basename(String(manifest.name ?? basename(dir)));
  const entry = resolve(dir, manifest.main ?? 'src/filter.js');
  if (!existsSync(entry)) fail(`entry module ${entry} does not exist (set "main" in package.json)`);

  // The SDK lives in the Sluice repository next to the WIT it implements.
  const sdkDir = dirname(dirname(fileURLToPath(import.meta.url)));
  const wit = resolve(args.wit ?? join(sdkDir, '..', '..', 'wit'));
  if (!existsSync(wit)) fail(`no WIT at ${wit}: pass --wit or set SLUICE_WIT_DIR`);

  const out = resolve(args.out ?? join(dir, 'dist', `${name}.wasm`));
  mkdirSync(dirname(out), { recursive: true });
  // Next to the output, so that builds to different outputs never share a bundle.
  const bundle = `${out}.bundle.js`;

  await build({
    input: entry,
    external: [/^sluice:/],
    logLevel: 'warn',
    output: { file: bundle, format: 'esm' },
  });

  const wanted = new Set(manifest.sluice?.wasi ?? []);
  for (const feature of wanted) {
    if (!WASI_FEATURES.includes(feature)) fail(`unknown WASI feature "${feature}" (use ${WASI_FEATURES.join(', ')})`);
  }
  const disableFeatures = WASI_FEATURES.filter((feature) => !wanted.has(feature));
  try {
    const { component } = await componentize(readFileSync(bundle, 'utf8'), {
      sourceName: basename(bundle),
      witPath: wit,
      worldName: 'plugin',
      disableFeatures,
    });
    writeFileSync(out, component);
  } finally {
    rmSync(bundle, { force: true });
  }
  // Asked for a path, the caller knows it; otherwise say where the component is.
  if (!args.out) process.stdout.write(`${out}\n`);
}

main().catch((error) => fail(error instanceof Error ? error.message : String(error)));
