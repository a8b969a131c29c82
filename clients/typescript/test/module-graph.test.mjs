// The client's modules form an acyclic graph (Herald issue 12: no module imports a module that
// imports it back), counting type-only imports too, which the compiled JavaScript no longer shows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const src = join(dirname(fileURLToPath(import.meta.url)), '..', 'src');

/** module name (e.g. `client`) -> the src modules it imports, type-only imports included. */
function importGraph() {
  const graph = new Map();
  for (const file of readdirSync(src).filter((f) => f.endsWith('.ts'))) {
    const text = readFileSync(join(src, file), 'utf8');
    const deps = [...text.matchAll(/^(?:import|export)\b[^;]*?\bfrom\s+'\.\/([\w-]+)\.js'/gms)].map((m) => m[1]);
    graph.set(file.replace(/\.ts$/, ''), new Set(deps));
  }
  return graph;
}

test('src modules import each other without a cycle', () => {
  const graph = importGraph();
  assert.ok(graph.get('client')?.has('subscription'), 'the import scan found nothing: fix its pattern');
  const done = new Set();
  const path = [];
  const visit = (name) => {
    if (done.has(name)) return;
    const at = path.indexOf(name);
    assert.ok(at < 0, `import cycle: ${[...path.slice(at), name].join(' -> ')}`);
    assert.ok(graph.has(name), `${path.at(-1)} imports ./${name}.js, which is not in src/`);
    path.push(name);
    for (const dep of graph.get(name)) visit(dep);
    path.pop();
    done.add(name);
  };
  for (const name of graph.keys()) visit(name);
});
