// Herald dashboard: admin login by API key, hub and channel overview from the HTTP API, a live tail
// of any channel over WebSocket (admin token minted by the API), and a publish form.
import { HeraldApi, HeraldClient } from './herald.js';
import { backoffFromQuery, bindIndicator, fmtTime, h } from './ui.js';

const KEY = 'herald.apiKey';
const $ = (sel) => document.querySelector(sel);
let api;
let client;
let tail;
let pollTimer;

function showLogin(message = '') {
  $('#app-view').hidden = true;
  $('#login-view').hidden = false;
  $('#login-error').textContent = message;
  $('#api-key').focus();
}

async function login(key) {
  // The API beside this page, also under a prefix (`/live` → `/live/api/…`, by the page's base).
  const candidate = new HeraldApi(new URL('.', document.baseURI).href, key);
  try {
    await candidate.info();
  } catch (err) {
    sessionStorage.removeItem(KEY);
    showLogin(err.code === 401 || err.errorName === 'unauthorized' ? 'That API key was not accepted.' : `Sign-in failed: ${err.message}`);
    return;
  }
  sessionStorage.setItem(KEY, key);
  api = candidate;
  $('#login-view').hidden = true;
  $('#app-view').hidden = false;
  start();
}

function start() {
  const params = new URLSearchParams(location.search);
  client = new HeraldClient({
    name: 'dashboard',
    backoff: backoffFromQuery(params),
    // A fresh admin token for every connection and every in-band refresh.
    token: async () => (await api.token({ sub: 'dashboard', roles: ['admin'], ttl_secs: 3600 })).token,
  });
  window.heraldClient = client; // for debugging in the console (and the e2e tests)
  bindIndicator($('#conn'), client);
  client.connect();
  poll();
  const ch = params.get('tail');
  if (ch) {
    $('#tail-channel').value = ch;
    startTail(ch);
  }
}

async function poll() {
  clearTimeout(pollTimer);
  try {
    const [info, channels] = await Promise.all([api.info(), api.channels()]);
    renderInfo(info);
    renderChannels(channels.channels ?? []);
    $('#info-error').textContent = '';
  } catch (err) {
    if (err.errorName === 'unauthorized') {
      sessionStorage.removeItem(KEY);
      location.reload();
      return;
    }
    $('#info-error').textContent = `hub unreachable: ${err.message}`;
  }
  pollTimer = setTimeout(poll, 2000);
}

function fmtUptime(s) {
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${hh}h` : hh ? `${hh}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

function renderInfo(info) {
  $('#stat-clients').firstChild.textContent = String(info.connections);
  $('#stat-subs').firstChild.textContent = String(info.subscriptions);
  $('#stat-uptime').firstChild.textContent = fmtUptime(info.uptime_secs ?? 0);
  $('#stat-version').textContent = `v${info.version}`;
  const nodes = info.nodes?.length ? info.nodes : [{ id: info.node, address: location.host, connections: info.connections, subscriptions: info.subscriptions, version: info.version }];
  $('#nodes tbody').replaceChildren(
    ...nodes.map((n) =>
      h('tr', { dataset: { node: n.id } },
        h('td', { class: 'mono' }, n.id, n.id === info.node ? h('span', { class: 'muted' }, ' (this)') : ''),
        h('td', { class: 'mono' }, n.address ?? ''),
        h('td', { class: 'num' }, n.connections),
        h('td', { class: 'num' }, n.subscriptions),
        h('td', {}, n.version ?? '')),
    ),
  );
}

function renderChannels(list) {
  list.sort((a, b) => b.subscribers - a.subscribers || a.channel.localeCompare(b.channel));
  $('#channels-empty').hidden = list.length > 0;
  $('#channels tbody').replaceChildren(
    ...list.map((c) =>
      h('tr', { class: 'clickable', dataset: { channel: c.channel }, title: 'tail this channel', onclick: () => {
        $('#tail-channel').value = c.channel;
        $('#pub-channel').value = c.channel;
        startTail(c.channel);
      } },
        h('td', { class: 'mono' }, c.channel),
        h('td', { class: 'num' }, c.subscribers)),
    ),
  );
}

function tailLine(pub) {
  return h('li', { dataset: { offset: pub.offset, id: pub.id } },
    h('span', { class: 'off' }, `#${pub.offset}`),
    h('span', { class: 'muted' }, fmtTime(pub.time)),
    h('span', { class: 'type', title: pub.type }, pub.key ? `${pub.type} ${pub.op ?? ''} ${pub.key}` : pub.type),
    h('span', { class: 'data' }, JSON.stringify(pub.data)));
}

function tailNotice(text) {
  $('#tail').prepend(h('li', { class: 'notice' }, text));
}

function startTail(channel) {
  if (tail) tail.unsubscribe();
  $('#tail').replaceChildren();
  $('#tail-status').textContent = `subscribing to ${channel}…`;
  const sub = client.subscribe(channel);
  tail = sub;
  sub.on('subscribed', (e) => {
    if (tail !== sub) return;
    $('#tail-status').textContent = `${channel} at ${e.position.epoch}:${e.position.offset}${e.resumed ? ' (resumed)' : ''}`;
    $('#tail').dataset.channel = channel;
  });
  sub.on('publication', (pub) => {
    if (tail !== sub) return;
    const list = $('#tail');
    list.prepend(tailLine(pub));
    while (list.children.length > 500) list.lastChild.remove();
  });
  sub.on('resync', (e) => {
    if (tail === sub) tailNotice(`stream restarted (${e.reason}): continuing from ${e.position.epoch}:${e.position.offset}`);
  });
  sub.on('error', (e) => {
    if (tail === sub) $('#tail-status').textContent = `error: ${e.message}`;
  });
  // Load the recent history so the tail is not empty.
  client.history(channel, { limit: 20 }).then((hist) => {
    if (tail !== sub || $('#tail').children.length) return;
    for (const pub of hist.publications) if (!sub.position || pub.offset <= sub.position.offset) $('#tail').prepend(tailLine(pub));
  }).catch(() => {});
}

$('#login').addEventListener('submit', (ev) => {
  ev.preventDefault();
  login($('#api-key').value.trim());
});
$('#logout').addEventListener('click', () => {
  sessionStorage.removeItem(KEY);
  client?.close();
  location.reload();
});
$('#tail-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const ch = $('#tail-channel').value.trim();
  if (!$('#pub-channel').value) $('#pub-channel').value = ch;
  startTail(ch);
});
$('#tail-clear').addEventListener('click', () => $('#tail').replaceChildren());
$('#publish-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const out = $('#pub-result');
  let data;
  try {
    data = JSON.parse($('#pub-data').value || 'null');
  } catch (err) {
    out.textContent = `data is not JSON: ${err.message}`;
    out.className = 'mono error';
    return;
  }
  try {
    const r = await api.publish($('#pub-channel').value.trim(), data, {
      type: $('#pub-type').value.trim() || undefined,
      key: $('#pub-key').value.trim() || undefined,
      op: $('#pub-op').value || undefined,
    });
    out.textContent = `published ${r.id}${r.duplicate ? ' (duplicate)' : ''}`;
    out.className = 'mono muted';
  } catch (err) {
    out.textContent = err.message;
    out.className = 'mono error';
  }
});

const saved = sessionStorage.getItem(KEY);
if (saved) login(saved);
else showLogin();
