// `npm pack` ships a usable package without a manual build: its prepack script builds dist/, and
// the tarball holds the ESM modules, their type declarations and source maps, the sources the maps
// point to, README and LICENSE, and nothing of the development tree.
//
// The pack runs in a copy of the package without dist/, so the test proves prepack builds (a stale
// dist/ in the checkout cannot make it pass) and leaves the checkout's dist/ and the hub's web copy
// untouched. `--dry-run` lists the tarball without writing it and needs no network.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/** The paths `npm pack` would put in the tarball, packing a copy of the package without dist/. */
function packedFiles() {
  const copy = mkdtempSync(join(tmpdir(), 'herald-pack-'));
  try {
    cpSync(root, copy, {
      recursive: true,
      filter: (src) => src === root || !['dist', 'node_modules'].includes(basename(src)),
    });
    // The build needs TypeScript; the copy uses the checkout's installed dev dependencies.
    symlinkSync(join(root, 'node_modules'), join(copy, 'node_modules'), 'dir');
    const out = execFileSync('npm', ['pack', '--dry-run', '--json'], {
      cwd: copy,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'], // prepack's output goes to stderr; stdout is the JSON
    });
    const [report] = JSON.parse(out);
    return report.files.map((f) => f.path);
  } finally {
    rmSync(copy, { recursive: true, force: true });
  }
}

test('npm pack builds dist/ and ships modules, types, source maps, README and LICENSE only', () => {
  const files = packedFiles();
  const has = (path) => files.includes(path);
  for (const path of [
    'package.json',
    'README.md',
    'LICENSE',
    'dist/index.js',
    'dist/index.d.ts',
    'dist/index.js.map',
    'dist/index.d.ts.map',
    'src/index.ts', // what the maps point to
  ]) {
    assert.ok(has(path), `${path} is not in the tarball: ${files.join(', ')}`);
  }

  // Every module the package exports resolves inside the tarball, with its declarations.
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  assert.equal(pkg.type, 'module');
  for (const [subpath, target] of Object.entries(pkg.exports)) {
    const targets = typeof target === 'string' ? [target] : Object.values(target);
    for (const t of targets) assert.ok(has(t.replace(/^\.\//, '')), `export ${subpath} -> ${t} is not in the tarball`);
    if (typeof target !== 'string') assert.ok(target.types, `export ${subpath} declares no types`);
  }
  for (const js of files.filter((f) => f.startsWith('dist/') && f.endsWith('.js'))) {
    assert.ok(has(js.replace(/\.js$/, '.d.ts')), `${js} has no declarations in the tarball`);
    assert.ok(has(`${js}.map`), `${js} has no source map in the tarball`);
  }

  const strays = files.filter((f) => /^(test|scripts|node_modules)\//.test(f) || f === 'tsconfig.json' || f.endsWith('.tgz'));
  assert.deepEqual(strays, [], 'development files in the tarball');
});
