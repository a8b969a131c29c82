// Demo page: a kanban board on the keyed channel `demo:board` and a streamed "agent run" on
// `demo:agent`. Anonymous: the built-in `demo` namespace lets anyone subscribe and publish.
import { HeraldClient } from './herald.js';
import { backoffFromQuery, bindIndicator, h } from './ui.js';

const $ = (sel) => document.querySelector(sel);
const COLUMNS = ['todo', 'doing', 'done'];
const client = new HeraldClient({ name: 'demo', backoff: backoffFromQuery(new URLSearchParams(location.search)) });
window.heraldClient = client;
bindIndicator($('#conn'), client);

// ------------------------------------------------------------------ kanban

const board = client.subscribe('demo:board', { snapshot: true });
const rendered = new Map(); // key → JSON of the last rendered value

function renderBoard() {
  const cards = [...board.records.entries()]
    .filter(([, v]) => v && typeof v === 'object')
    .sort(([ka, a], [kb, b]) => (a.created ?? 0) - (b.created ?? 0) || ka.localeCompare(kb));
  for (const status of COLUMNS) {
    const col = document.querySelector(`.column[data-status="${status}"]`);
    const mine = cards.filter(([, v]) => (COLUMNS.includes(v.status) ? v.status : 'todo') === status);
    col.querySelector('.count').textContent = String(mine.length);
    col.querySelector('.cards').replaceChildren(...mine.map(([key, v]) => cardEl(key, v, status)));
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
  const el = document.querySelector(`.card[data-key="${CSS.escape(key)}"]`);
  if (!el) return;
  el.classList.add('flash');
  setTimeout(() => el.classList.remove('flash'), 600);
}

function cardEl(key, v, status) {
  const i = COLUMNS.indexOf(status);
  return h('div', { class: 'card', draggable: 'true', dataset: { key, status }, ondragstart: (e) => e.dataTransfer.setData('text/plain', key) },
    h('button', { type: 'button', class: 'left', title: 'move left', disabled: i === 0, onclick: () => move(key, COLUMNS[i - 1]) }, '←'),
    h('span', { class: 'title' }, v.title ?? key),
    h('button', { type: 'button', class: 'right', title: 'move right', disabled: i === COLUMNS.length - 1, onclick: () => move(key, COLUMNS[i + 1]) }, '→'),
    h('button', { type: 'button', class: 'remove', title: 'delete', onclick: () => remove(key) }, '×'));
}

function status(text, isError = false) {
  const el = $('#board-status');
  el.textContent = text;
  el.className = isError ? 'error' : 'muted';
}

function move(key, to) {
  client.publish('demo:board', { status: to, moved: Date.now() }, { key, op: 'merge', type: 'card.moved' })
    .catch((e) => status(`move failed: ${e.message}`, true));
}

function remove(key) {
  client.publish('demo:board', null, { key, op: 'delete', type: 'card.deleted' })
    .catch((e) => status(`delete failed: ${e.message}`, true));
}

function addCard(title) {
  const key = `card-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
  return client.publish('demo:board', { title, status: 'todo', created: Date.now() }, { key, op: 'upsert', type: 'card.created' });
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
    if (key && board.records.has(key)) move(key, col.dataset.status);
  });
}

board.on('records', renderBoard);
board.on('subscribed', (e) => {
  renderBoard();
  status(`at offset ${e.position.offset}${e.resumed ? (e.recovered ? ' · resumed, nothing missed' : ' · resynced') : ''}`);
});
board.on('publication', (p) => status(`offset ${p.offset}: ${p.type}${p.meta?.user ? ` by ${p.meta.user}` : ''}`));
board.on('resync', (e) => status(`board reloaded (${e.reason})`));
board.on('error', (e) => status(e.message, true));

$('#add-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('#new-card');
  const title = input.value.trim();
  if (!title) return;
  input.value = '';
  addCard(title).catch((e) => status(`add failed: ${e.message}`, true));
});
$('#seed').addEventListener('click', async () => {
  for (const t of ['Write the docs', 'Ship the TypeScript client', 'Chaos test the Redis engine', 'Record the demo video']) {
    await addCard(t).catch((e) => status(`add failed: ${e.message}`, true));
  }
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
