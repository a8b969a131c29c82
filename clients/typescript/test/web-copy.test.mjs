// The hub embeds crates/server/web/herald.js: it must be the build of the current source.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';
import { expected, webCopy } from '../scripts/copy-web.mjs';

test('crates/server/web/herald.js is up to date with src/ (run `npm run build`)', () => {
  assert.ok(existsSync(webCopy), `${webCopy} is missing: run npm run build`);
  assert.ok(readFileSync(webCopy, 'utf8') === expected(), `${webCopy} is stale: run \`npm run build\` in clients/typescript and commit it`);
});
