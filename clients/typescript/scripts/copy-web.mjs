// Copies the compiled client (dist/index.js, a single self-contained ES module) to the hub's
// embedded web assets as crates/server/web/herald.js. With --check, fails when the committed copy
// differs from a fresh build (run `npm run build` and commit the result).
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const webCopy = join(root, '..', '..', 'crates', 'server', 'web', 'herald.js');
const header =
  '// Generated from clients/typescript/src/index.ts by `npm run build` in clients/typescript.\n' +
  '// Do not edit: edit the TypeScript source and rebuild (a test fails when this copy is stale).\n';

export function expected() {
  return header + readFileSync(join(root, 'dist', 'index.js'), 'utf8');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const want = expected();
  if (process.argv.includes('--check')) {
    const have = existsSync(webCopy) ? readFileSync(webCopy, 'utf8') : '';
    if (have !== want) {
      console.error(`${webCopy} is stale: run \`npm run build\` in clients/typescript and commit it`);
      process.exit(1);
    }
    console.log('web copy is up to date');
  } else {
    writeFileSync(webCopy, want);
    console.log(`wrote ${webCopy}`);
  }
}
