// Demo page: a kanban board of the entity `Task` (the built-in spec `builtin:kanban`, served as
// static/kanban.herald) on the keyed channel `task:demo`, shown as two live views, and a streamed
// "agent run" on `demo:agent`. Who is on the board (avatars, the card each one has open, live
// cursors) is the presence and the volatile events of `demo:presence`: a view subscription is not a
// presence member, so the board's people have a channel of their own. Anonymous: the development
// configuration lets anyone subscribe to and publish on the `task` and `demo` namespaces, allows
// ad-hoc filters on `task` and keeps presence on `demo`.
import { HeraldClient } from './herald.js';
import { backoffFromQuery, bindIndicator, h } from './ui.js';

const $ = (sel) => document.querySelector(sel);
const COLUMNS = ['todo', 'doing', 'done'];
const USERS = ['u1', 'u2', 'u3'];
const CHANNEL = 'task:demo';
const PRESENCE = 'demo:presence';
const COLORS = { u1: '#f4a6a6', u2: '#8cc8ff', u3: '#a6e3a1' };
let editingKey = null; // the card this page has open in the editor
let people = null; // the `demo:presence` subscription (section "who is here")
const params = new URLSearchParams(location.search);
const client = new HeraldClient({ name: 'demo', backoff: backoffFromQuery(params) });
window.heraldClient = client;
bindIndicator($('#conn'), client);

// ------------------------------------------------------------------ who am I

// ?user= wins over the stored choice, so two windows of one browser can be two users.
let me = USERS.includes(params.get('user')) ? params.get('user') : localStorage.getItem('herald-demo-user');
if (!USERS.includes(me)) me = 'u1';
$('#user').value = me;
$('#new-assignee').value = me;

fetch('static/kanban.herald')
  .then((r) => (r.ok ? r.text() : Promise.reject(new Error(`HTTP ${r.status}`))))
  .then((text) => ($('#spec-text').textContent = text))
  .catch((e) => ($('#spec-text').textContent = `could not load the spec: ${e.message}`));

function status(text, isError = false) {
  const el = $('#board-status');
  el.textContent = text;
  el.className = isError ? 'error' : 'muted';
}

// ------------------------------------------------------------------ writes

function publish(data, key, op, type) {
  return client.publish(CHANNEL, data, { key, op, type }).catch((e) => status(`${type} failed: ${e.message}`, true));
}
const move = (key, to) => publish({ status: to }, key, 'merge', 'task.moved');
const reassign = (key, assignee) => publish({ assignee }, key, 'merge', 'task.assigned');
const remove = (key) => publish(null, key, 'delete', 'task.deleted');
function addTask(title, assignee, taskStatus = 'todo') {
  // Keys sort by creation time: both views list records by key.
  const key = `t-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
  return publish({ title, status: taskStatus, assignee }, key, 'upsert', 'task.created');
}

// ------------------------------------------------------------------ "All tasks": every record

const all = client.subscribeView(CHANNEL, { sub: `${CHANNEL}#all` });
const rendered = new Map(); // key → JSON of the last rendered value

function renderBoard() {
  const cards = [...all.rows.entries()].sort(([a], [b]) => a.localeCompare(b));
  for (const col of COLUMNS) {
    const el = document.querySelector(`.column[data-status="${col}"]`);
    const here = cards.filter(([, v]) => (COLUMNS.includes(v.status) ? v.status : 'todo') === col);
    el.querySelector('.count').textContent = String(here.length);
    el.querySelector('.cards').replaceChildren(...here.map(([key, v]) => cardEl(key, v, col)));
  }
  const seen = new Set();
  for (const [key, v] of cards) {
    const json = JSON.stringify(v);
    if (rendered.has(key) && rendered.get(key) !== json) flash(key);
    rendered.set(key, json);
    seen.add(key);
  }
  for (const key of [...rendered.keys()]) if (!seen.has(key)) rendered.delete(key);
  $('#board').dataset.cards = String(cards.length);
}

function flash(key) {
  const el = document.querySelector(`#board .card[data-key="${CSS.escape(key)}"]`);
  if (!el) return;
  el.classList.add('flash');
  setTimeout(() => el.classList.remove('flash'), 600);
}

function assigneeSelect(key, v) {
  return h('select', { class: 'assignee', title: 'assignee', onchange: (e) => reassign(key, e.target.value) },
    USERS.map((u) => h('option', { value: u, selected: u === v.assignee }, u)));
}

function cardEl(key, v, col) {
  const i = COLUMNS.indexOf(col);
  const editors = editorsOf(key);
  return h('div', { class: key === editingKey ? 'card open' : 'card', draggable: 'true', dataset: { key, status: col, assignee: v.assignee ?? '' }, ondragstart: (e) => e.dataTransfer.setData('text/plain', key) },
    h('button', { type: 'button', class: 'left', title: 'move left', disabled: i === 0, onclick: () => move(key, COLUMNS[i - 1]) }, '←'),
    h('span', { class: 'title', title: 'open to edit', onclick: () => openEditor(key) }, v.title ?? key),
    editors.map((name) => h('span', { class: 'editing', dataset: { name }, style: `background:${colorOf(name)}` }, `${name} editing`)),
    assigneeSelect(key, v),
    h('button', { type: 'button', class: 'right', title: 'move right', disabled: i === COLUMNS.length - 1, onclick: () => move(key, COLUMNS[i + 1]) }, '→'),
    h('button', { type: 'button', class: 'remove', title: 'delete', onclick: () => remove(key) }, '×'));
}

for (const col of document.querySelectorAll('.column')) {
  col.addEventListener('dragover', (e) => {
    e.preventDefault();
    col.classList.add('drop');
  });
  col.addEventListener('dragleave', () => col.classList.remove('drop'));
  col.addEventListener('drop', (e) => {
    e.preventDefault();
    col.classList.remove('drop');
    const key = e.dataTransfer.getData('text/plain');
    if (key && all.rows.has(key)) move(key, col.dataset.status);
  });
}

all.on('rows', (rows) => {
  if (editingKey && !rows.has(editingKey)) closeEditor();
  renderBoard();
});
all.on('subscribed', (e) => {
  $('#board').dataset.ready = 'true';
  status(`at offset ${e.position.offset}${e.resumed ? (e.recovered ? ' · resumed, nothing missed' : ' · resynced') : ''}`);
});
for (const op of ['insert', 'update', 'delete']) {
  all.on(op, (e) => status(`offset ${e.publication.offset}: ${e.publication.type ?? op}`));
}
all.on('error', (e) => status(e.message, true));

// ------------------------------------------------------------------ "My active tasks"

// The spec's view ActiveTasks (status != "done") ANDed with an ad-hoc filter on the assignee.
// Cards enter and leave with a short animation; `data-anim` (enter / leave) marks it, and
// `#mine[data-log]` lists the view's events (`insert:KEY update:KEY delete:KEY:left`) for tests.
let mine;
const mineEl = $('#mine');

function subscribeMine() {
  mine?.unsubscribe();
  mineEl.replaceChildren();
  mineEl.dataset.log = '';
  delete mineEl.dataset.ready;
  const filter = `assignee == ${JSON.stringify(me)}`;
  $('#mine-filter').textContent = `ActiveTasks and ${filter}`;
  // One name per user: the hub never sees two views of one name with different filters.
  const view = client.subscribeView(CHANNEL, { view: 'ActiveTasks', filter, sub: `${CHANNEL}#mine-${me}` });
  mine = view;
  const log = (entry) => {
    if (mine === view) mineEl.dataset.log = `${mineEl.dataset.log} ${entry}`.trim();
  };
  view.on('insert', (e) => log(`insert:${e.key}`));
  view.on('update', (e) => log(`update:${e.key}`));
  view.on('delete', (e) => log(`delete:${e.key}:${e.reason}`));
  view.on('rows', (rows) => mine === view && renderMine(rows));
  view.on('subscribed', () => {
    if (mine === view) mineEl.dataset.ready = 'true';
  });
  view.on('error', (e) => status(`my tasks: ${e.message}`, true));
}

function mineItem(key, v) {
  return h('li', { class: 'card', dataset: { key, status: v.status } },
    h('span', { class: 'title' }, v.title ?? key),
    h('span', { class: `badge ${v.status}` }, v.status));
}

/** Makes the list equal to `rows`: new keys enter, gone keys leave, the rest are redrawn. */
function renderMine(rows) {
  const shown = new Map();
  for (const el of [...mineEl.children]) {
    if (el.dataset.anim === 'leave') continue;
    if (rows.has(el.dataset.key)) shown.set(el.dataset.key, el);
    else leave(el);
  }
  for (const key of [...rows.keys()].sort()) {
    const v = rows.get(key);
    const old = shown.get(key);
    const el = mineItem(key, v);
    if (old) {
      // In place, so an enter animation under way is not restarted.
      old.dataset.status = v.status;
      old.replaceChildren(...el.childNodes);
      continue;
    }
    el.dataset.anim = 'enter';
    el.addEventListener('animationend', () => delete el.dataset.anim, { once: true });
    // In key order, among the rows that stay (leaving ones are on their way out).
    const next = [...mineEl.children].find((c) => c.dataset.anim !== 'leave' && c.dataset.key > key);
    mineEl.insertBefore(el, next ?? null);
  }
  mineEl.dataset.count = String(rows.size);
  $('#mine-empty').hidden = rows.size > 0;
}

function leave(el) {
  el.dataset.anim = 'leave';
  const gone = () => el.remove();
  el.addEventListener('animationend', gone, { once: true });
  // No animation runs (hidden tab, reduced motion): remove it anyway.
  setTimeout(gone, 600);
}

$('#user').addEventListener('change', (e) => {
  me = e.target.value;
  localStorage.setItem('herald-demo-user', me);
  $('#new-assignee').value = me;
  const url = new URL(location.href);
  url.searchParams.set('user', me);
  history.replaceState(null, '', url);
  subscribeMine();
  sharePresence();
});
subscribeMine();

// ------------------------------------------------------------------ who is here

// Every page is a member of `demo:presence` with `info` {name, editing}: the avatars group the
// members by name (two windows of one name are one avatar with "×2"), a card shows who else has it
// open, and pointer moves over the board go out as volatile `cursor` events (no offset, no
// history: a missed cursor position is simply superseded by the next).
people = client.subscribe(PRESENCE, { presence: true, info: { name: me, editing: null } });
const hereEl = $('#here');

const colorOf = (name) => COLORS[name] ?? '#c9cbd1';
const infoOf = (m) => (m.info && typeof m.info === 'object' ? m.info : {});

/** Names of the other members that have card `key` open. */
function editorsOf(key) {
  const names = new Set();
  if (!people) return [];
  for (const m of people.presence.members.values()) {
    if (m.member !== people.presence.self && infoOf(m).editing === key) names.add(String(infoOf(m).name ?? m.user));
  }
  return [...names].sort();
}

function renderHere() {
  const byName = new Map();
  for (const m of people.presence.members.values()) {
    const name = String(infoOf(m).name ?? (m.user || 'anonymous'));
    const entry = byName.get(name) ?? { tabs: 0, me: false };
    entry.tabs++;
    entry.me ||= m.member === people.presence.self;
    byName.set(name, entry);
  }
  const names = [...byName.keys()].sort();
  hereEl.replaceChildren(...names.map((name) => {
    const { tabs, me: mine } = byName.get(name);
    return h('span', { class: mine ? 'avatar me' : 'avatar', dataset: { name, tabs: String(tabs) }, title: mine ? `${name} (you)` : name, style: `background:${colorOf(name)}` },
      name, tabs > 1 ? h('span', { class: 'tabs' }, `×${tabs}`) : null);
  }));
  hereEl.dataset.names = names.join(' ');
  $('#here-count').textContent = people.presence.ready ? `${people.presence.counts.members} window${people.presence.counts.members === 1 ? '' : 's'}` : '';
}

people.presence.on('change', () => {
  renderHere();
  renderBoard();
});
people.presence.on('leave', (e) => dropCursor(e.member.client));
people.on('error', (e) => status(`presence: ${e.message}`, true));

function sharePresence() {
  people.setPresence({ name: me, editing: editingKey }).catch((e) => status(`presence: ${e.message}`, true));
}

function openEditor(key) {
  const v = all.rows.get(key);
  if (!v) return;
  editingKey = key;
  $('#editor').hidden = false;
  $('#editor').dataset.key = key;
  $('#edit-title').value = v.title ?? '';
  $('#edit-title').focus();
  sharePresence();
  renderBoard();
}

function closeEditor() {
  if (editingKey === null) return;
  editingKey = null;
  $('#editor').hidden = true;
  delete $('#editor').dataset.key;
  sharePresence();
  renderBoard();
}

$('#editor').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const key = editingKey;
  const title = $('#edit-title').value.trim();
  if (key && title && title !== all.rows.get(key)?.title) publish({ title }, key, 'merge', 'task.renamed');
  closeEditor();
});
$('#edit-close').addEventListener('click', closeEditor);
$('#edit-title').addEventListener('keydown', (e) => e.key === 'Escape' && closeEditor());

// Cursors: positions as fractions of the board, at most one event per 50 ms (the namespace
// allows 30 a second), the last position always sent.
const boardEl = $('#board');
const cursorsEl = $('#cursors');
const cursors = new Map(); // connection id → { el, timer }
const CURSOR_EVERY_MS = 50;
let cursorAt = 0;
let cursorNext = null;
let cursorTimer = null;

function sendCursor(pos) {
  cursorNext = pos;
  if (cursorTimer) return;
  const wait = Math.max(0, cursorAt + CURSOR_EVERY_MS - Date.now());
  cursorTimer = setTimeout(() => {
    cursorTimer = null;
    cursorAt = Date.now();
    // Refused ones (rate_limited, offline) are dropped: the next move sends a newer position.
    client.volatile(PRESENCE, 'cursor', { name: me, ...cursorNext }).catch(() => {});
  }, wait);
}

boardEl.addEventListener('pointermove', (e) => {
  const r = boardEl.getBoundingClientRect();
  sendCursor({ x: (e.clientX - r.left) / r.width, y: (e.clientY - r.top) / r.height });
});
boardEl.addEventListener('pointerleave', () => sendCursor({ x: null, y: null }));

function dropCursor(id) {
  const c = cursors.get(id);
  if (!c) return;
  clearTimeout(c.timer);
  c.el.remove();
  cursors.delete(id);
}

people.on('volatile', (e) => {
  if (e.type !== 'cursor' || e.client === client.info?.client) return;
  const d = e.data ?? {};
  if (typeof d.x !== 'number' || typeof d.y !== 'number') return dropCursor(e.client);
  let c = cursors.get(e.client);
  if (!c) {
    c = { el: h('div', { class: 'cursor' }), timer: 0 };
    cursorsEl.append(c.el);
    cursors.set(e.client, c);
  }
  const name = String(d.name ?? e.user ?? '');
  c.el.textContent = name;
  c.el.dataset.name = name;
  c.el.style.color = colorOf(name);
  c.el.style.left = `${Math.min(Math.max(d.x, 0), 1) * 100}%`;
  c.el.style.top = `${Math.min(Math.max(d.y, 0), 1) * 100}%`;
  // A cursor that stops moving fades out; one of a window that leaves goes with its member.
  clearTimeout(c.timer);
  c.timer = setTimeout(() => dropCursor(e.client), 10000);
});

// ------------------------------------------------------------------ forms

$('#add-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('#new-card');
  const title = input.value.trim();
  if (!title) return;
  input.value = '';
  addTask(title, $('#new-assignee').value);
});
$('#seed').addEventListener('click', async () => {
  const samples = [['Write the docs', 'u1', 'todo'], ['Ship the TypeScript client', 'u2', 'doing'], ['Chaos test the Redis engine', 'u3', 'todo'], ['Record the demo video', 'u1', 'done']];
  for (const [title, assignee, s] of samples) await addTask(title, assignee, s);
});

// ------------------------------------------------------------------ agent run

const agent = client.subscribe('demo:agent');
let currentRun;
const PLAN = [
  ['Reading the repository', 'I read the protocol, the engines and the open issues. '],
  ['Checking the guarantees', 'Ordering, gap-free resume and snapshots hold in the tests; the browser client resumes after a network cut. '],
  ['Drafting the release notes', 'Herald 1.0: one binary, in-memory or Redis engine, resume without loss, keyed state with snapshots, a TypeScript client and a live dashboard. '],
  ['Planning the rollout', 'Canary one node behind the load balancer, watch reconnect rates on the dashboard, then roll the rest. '],
  ['Done', 'The plan is ready.'],
];

function renderAgent(p) {
  const d = p.data ?? {};
  if (p.type === 'run.started') {
    currentRun = d.run;
    $('#agent-out').textContent = '';
    $('#agent-out').dataset.run = d.run;
    $('#agent-steps').textContent = `run ${d.run}: “${d.prompt}”`;
    $('#agent-progress').value = 0;
    $('#agent-status').textContent = 'running';
  }
  if (d.run !== currentRun) return;
  if (p.type === 'token') $('#agent-out').append(d.text);
  if (p.type === 'progress') {
    $('#agent-progress').max = d.of;
    $('#agent-progress').value = d.step;
    $('#agent-steps').textContent = `step ${d.step} of ${d.of}: ${d.label}`;
  }
  if (p.type === 'run.finished') {
    $('#agent-status').textContent = `finished (${d.tokens} tokens)`;
    $('#agent-out').dataset.finished = 'true';
  }
}
agent.on('publication', renderAgent);

// The "agent" runs in whichever page pressed Start: it publishes each token as an event, the hub
// orders them, every page (including this one) renders what the hub delivers.
$('#agent-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const run = Math.random().toString(36).slice(2, 8);
  const key = 'run';
  const send = (type, data) => client.publish('demo:agent', { run, ...data }, { type, key, op: 'upsert' });
  $('#agent-start').disabled = true;
  try {
    await send('run.started', { prompt: $('#agent-prompt').value });
    let tokens = 0;
    for (let i = 0; i < PLAN.length; i++) {
      const [label, text] = PLAN[i];
      await send('progress', { step: i + 1, of: PLAN.length, label });
      for (const tok of text.match(/\S+\s*/g) ?? []) {
        await send('token', { text: tok });
        tokens++;
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    await send('run.finished', { tokens });
  } catch (e) {
    $('#agent-status').textContent = `run failed: ${e.message}`;
  } finally {
    $('#agent-start').disabled = false;
  }
});

client.connect();
