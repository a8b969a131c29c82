// Bundles the compiled client (dist/index.js and the modules it imports) into one self-contained ES
// module and writes it to the hub's embedded web assets as crates/server/web/herald.js (the pages
// import `/static/herald.js`, one file). With --check, fails when the committed copy differs from a
// fresh build (run `npm run build` and commit the result).
//
// The bundle is a concatenation, not a general bundler: it relies on what src/ keeps to (and fails
// loudly otherwise): relative imports only, named imports without renaming, no two modules
// declaring the same top-level name, and an index.js made only of `export { ... } from` lines.
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
export const webCopy = join(root, '..', '..', 'crates', 'server', 'web', 'herald.js');
const header =
  '// Generated from clients/typescript/src/ (index.ts and the modules it imports, in one file) by\n' +
  '// `npm run build` in clients/typescript.\n' +
  '// Do not edit: edit the TypeScript source and rebuild (a test fails when this copy is stale).\n';

/** The module `spec` imported from `from` as a path relative to dist/ (relative specifiers only). */
function resolveSpec(from, spec) {
  if (!spec.startsWith('./') && !spec.startsWith('../')) {
    throw new Error(`${from}: imports '${spec}': the web bundle takes relative imports only (the client has no runtime dependencies)`);
  }
  return posix.normalize(posix.join(posix.dirname(from), spec));
}

function parse(file) {
  const text = readFileSync(join(dist, file), 'utf8');
  return { file, text, sf: ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.JS) };
}

/** Modules reachable from `entry`, dependencies first; throws on an import cycle. */
function moduleOrder(entry) {
  const order = [];
  const done = new Set();
  const visiting = [];
  const visit = (file) => {
    if (done.has(file)) return;
    if (visiting.includes(file)) throw new Error(`import cycle: ${[...visiting.slice(visiting.indexOf(file)), file].join(' -> ')}`);
    visiting.push(file);
    const mod = parse(file);
    for (const st of mod.sf.statements) {
      if ((ts.isImportDeclaration(st) || ts.isExportDeclaration(st)) && st.moduleSpecifier) {
        visit(resolveSpec(file, st.moduleSpecifier.text));
      }
    }
    visiting.pop();
    done.add(file);
    order.push(mod);
  };
  visit(entry);
  return order;
}

/** The top-level names a statement declares. */
function declaredNames(st, file) {
  if ((ts.isFunctionDeclaration(st) || ts.isClassDeclaration(st)) && st.name) return [st.name.text];
  if (ts.isVariableStatement(st)) {
    return st.declarationList.declarations.map((d) => {
      if (!ts.isIdentifier(d.name)) throw new Error(`${file}: destructuring at the top level is not supported by the web bundle`);
      return d.name.text;
    });
  }
  return [];
}

/** A module's code with its imports removed and its `export` keywords dropped. */
function moduleBody(mod, owner) {
  const { file, text, sf } = mod;
  const cuts = []; // [start, end) ranges of text to remove
  for (const st of sf.statements) {
    if (ts.isImportDeclaration(st)) {
      const named = st.importClause?.namedBindings;
      if (st.importClause?.name || (named && !ts.isNamedImports(named))) {
        throw new Error(`${file}: default and namespace imports are not supported by the web bundle`);
      }
      for (const el of named?.elements ?? []) {
        if (el.propertyName) throw new Error(`${file}: renamed import '${el.propertyName.text} as ${el.name.text}' is not supported by the web bundle`);
      }
      cuts.push([st.getStart(sf), st.end]);
      continue;
    }
    if (ts.isExportDeclaration(st)) {
      if (st.moduleSpecifier || (st.exportClause && st.exportClause.elements.length > 0)) {
        throw new Error(`${file}: export lists are only supported in index.js by the web bundle`);
      }
      cuts.push([st.getStart(sf), st.end]); // `export {};`
      continue;
    }
    if (ts.isExportAssignment(st)) throw new Error(`${file}: default exports are not supported by the web bundle`);
    const mods = ts.canHaveModifiers(st) ? (ts.getModifiers(st) ?? []) : [];
    if (mods.some((m) => m.kind === ts.SyntaxKind.DefaultKeyword)) throw new Error(`${file}: default exports are not supported by the web bundle`);
    const exp = mods.find((m) => m.kind === ts.SyntaxKind.ExportKeyword);
    if (exp) {
      let end = exp.end;
      while (text[end] === ' ') end++;
      cuts.push([exp.getStart(sf), end]);
    }
    for (const name of declaredNames(st, file)) {
      if (owner.has(name)) throw new Error(`${file} and ${owner.get(name)} both declare '${name}': rename one (the web bundle shares one scope)`);
      owner.set(name, file);
    }
  }
  let out = '';
  let at = 0;
  for (const [start, end] of cuts) {
    out += text.slice(at, start);
    at = end;
    if (text[at] === '\n') at++; // the line the import took
  }
  out += text.slice(at);
  // The per-module source maps do not describe the joined file.
  out = out.replace(/^\/\/# sourceMappingURL=.*\n?/gm, '');
  return out.replace(/^\n+/, '').replace(/\n*$/, '\n');
}

/** The one-file ES module: every module index.js reaches, then index.js's exports. */
export function bundle() {
  const order = moduleOrder('index.js');
  const index = order.pop();
  const owner = new Map(); // top-level name -> module declaring it
  const bodies = order.map((mod) => `// ${mod.file}\n${moduleBody(mod, owner)}`);
  const exported = [];
  for (const st of index.sf.statements) {
    if (!ts.isExportDeclaration(st) || !st.moduleSpecifier || !st.exportClause || !ts.isNamedExports(st.exportClause)) {
      throw new Error('index.js: only `export { ... } from` lines are supported by the web bundle');
    }
    const from = resolveSpec('index.js', st.moduleSpecifier.text);
    for (const el of st.exportClause.elements) {
      if (el.propertyName) throw new Error(`index.js: renamed export '${el.propertyName.text} as ${el.name.text}' is not supported by the web bundle`);
      if (owner.get(el.name.text) !== from) throw new Error(`index.js: '${el.name.text}' is not declared at the top level of ${from}`);
      exported.push(el.name.text);
    }
  }
  const indexDoc = index.text.slice(0, index.sf.statements[0]?.getStart(index.sf) ?? index.text.length);
  return `${indexDoc.replace(/\n*$/, '\n')}${bodies.join('\n')}\nexport { ${exported.join(', ')} };\n`;
}

export function expected() {
  return header + bundle();
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
