// Herald dashboard: signs in with an admin token (never the API key), is pushed the hub's figures
// on the `sys:stats` channel (counters, nodes, busiest channels; charts of the last five minutes),
// tails any channel and publishes over the same WebSocket.
import { HeraldClient } from './herald.js';
import { backoffFromQuery, bindIndicator, fmtTime, h } from './ui.js';

const KEY = 'herald.adminToken';
const STATS = 'sys:stats';
/** How much of the pushed figures the charts keep and draw. */
const WINDOW_MS = 5 * 60 * 1000;
const $ = (sel) => document.querySelector(sel);
let client;
let tail;
let unbindIndicator;
/** The node this page is connected to: on a cluster every node publishes its own figures. */
let node;
/** Pushed samples of this node, oldest first: { t, publications_per_sec, deliveries_per_sec, connections }. */
let samples = [];

function showLogin(message = '') {
  $('#app-view').hidden = true;
  $('#login-view').hidden = false;
  $('#login-error').textContent = message;
  $('#admin-token').focus();
}

function showApp() {
  $('#login-view').hidden = true;
  $('#app-view').hidden = false;
}

/** Drops the token and the connection, back to the sign-in form. */
function signOut(message = '') {
  sessionStorage.removeItem(KEY);
  unbindIndicator?.();
  client?.close();
  client = undefined;
  tail = undefined;
  samples = [];
  showLogin(message);
}

/** Why the hub refused the token, for a person. */
function refusal(reason, code) {
  if (code === 103 || reason === 'forbidden') return 'That token has no admin role: mint one with `herald token --admin`.';
  if (reason === 'token_expired') return 'That token has expired: mint a new one.';
  if (reason === 'unauthorized' || code === 101) return 'That token was not accepted by this hub.';
  return `Sign-in failed: ${reason}${code ? ` (${code})` : ''}`;
}

/**
 * Connects with the admin token and subscribes to the hub's figures (`sys:stats`, admin only):
 * signed in once that subscription is accepted. Nothing is polled; the page never holds the API key.
 */
function signIn(token) {
  const params = new URLSearchParams(location.search);
  $('#login-error').textContent = 'connecting…';
  client = new HeraldClient({ name: 'dashboard', backoff: backoffFromQuery(params), token });
  window.heraldClient = client; // for debugging in the console (and the e2e tests)
  const mine = client;
  let admitted = false;
  unbindIndicator = bindIndicator($('#conn'), client);
  client.on('state', (s) => {
    if (client !== mine) return;
    if (s.node) node = s.node;
    // Refused at connect (bad or expired token): back to the form.
    if (s.state === 'offline' && s.reason !== 'closed' && (!admitted || s.reason === 'token_expired' || s.reason === 'unauthorized')) {
      signOut(refusal(s.reason, s.code));
    }
  });
  const stats = client.subscribe(STATS);
  stats.on('subscribed', () => {
    if (client !== mine || admitted) return;
    admitted = true;
    sessionStorage.setItem(KEY, token);
    showApp();
    loadRecentStats(mine);
    const ch = params.get('tail');
    if (ch) {
      $('#tail-channel').value = ch;
      startTail(ch);
    }
  });
  stats.on('publication', (pub) => {
    if (client === mine) onStats(pub);
  });
  stats.on('error', (err) => {
    if (client !== mine) return;
    if (!admitted) signOut(refusal(err.errorName, err.code));
    else $('#info-error').textContent = `figures unavailable: ${err.message}`;
  });
  client.connect();
}

/** Fills the charts from the channel's history (five minutes are kept while someone watches). */
function loadRecentStats(mine) {
  mine.history(STATS, { limit: 300 }).then((hist) => {
    if (client !== mine) return;
    const known = new Set(samples.map((s) => s.t));
    for (const pub of hist.publications) {
      const t = Date.parse(pub.time);
      if (pub.data?.node === node && !known.has(t)) samples.push(sample(pub.data, t));
    }
    samples.sort((a, b) => a.t - b.t);
    drawCharts();
  }).catch(() => {});
}

function sample(stats, t) {
  return { t, publications_per_sec: stats.publications_per_sec, deliveries_per_sec: stats.deliveries_per_sec, connections: stats.connections };
}

function onStats(pub) {
  const stats = pub.data;
  // Another node's figures (same channel on a cluster): this page shows the node it is connected to.
  if (!stats || (node && stats.node !== node)) return;
  const t = Date.parse(pub.time) || Date.now();
  samples.push(sample(stats, t));
  while (samples.length && samples[0].t < t - WINDOW_MS) samples.shift();
  $('#info-error').textContent = '';
  renderStats(stats);
  drawCharts();
}

function fmtUptime(s) {
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${hh}h` : hh ? `${hh}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

function fmtRate(n) {
  return n >= 100 ? String(Math.round(n)) : String(Math.round(n * 10) / 10);
}

function renderStats(stats) {
  $('#stat-clients').firstChild.textContent = String(stats.connections);
  $('#stat-subs').firstChild.textContent = String(stats.subscriptions);
  $('#stat-pubs').firstChild.textContent = fmtRate(stats.publications_per_sec);
  $('#stat-dels').firstChild.textContent = fmtRate(stats.deliveries_per_sec);
  $('#stat-uptime').firstChild.textContent = fmtUptime(stats.uptime_secs ?? 0);
  $('#stat-version').textContent = `v${stats.version}`;
  $('#stats-node').textContent = `· node ${stats.node}`;
  $('#nodes tbody').replaceChildren(
    ...stats.nodes.map((n) =>
      h('tr', { dataset: { node: n.id } },
        h('td', { class: 'mono' }, n.id, n.id === stats.node ? h('span', { class: 'muted' }, ' (this)') : ''),
        h('td', { class: 'mono' }, n.address ?? ''),
        h('td', { class: 'num' }, n.connections),
        h('td', { class: 'num' }, n.subscriptions),
        h('td', {}, n.version ?? '')),
    ),
  );
  renderChannels(stats.top_channels ?? [], stats.channels ?? 0);
  renderBridges(stats.extensions?.bridges ?? []);
}

// Event-bus bridges (docs/bridge.md): whether this node reads each source, whether it is up, lag.
function renderBridges(list) {
  $('#bridges-panel').hidden = list.length === 0;
  $('#bridges tbody').replaceChildren(
    ...list.map((b) =>
      h('tr', { dataset: { bridge: b.name } },
        h('td', { class: 'mono' }, b.name),
        h('td', {}, b.source),
        h('td', {}, !b.leader ? 'standby' : b.up ? 'up' : 'down'),
        h('td', { class: 'num' }, b.lag ?? '–'),
        h('td', { class: 'num' }, b.published),
        h('td', { class: 'num' }, b.dead_lettered)),
    ),
  );
}

function renderChannels(list, total) {
  $('#channels-empty').hidden = list.length > 0;
  $('#channels-total').textContent = total > list.length ? `· top ${list.length} of ${total}` : '';
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

/**
 * Draws each chart's field as an SVG polyline (viewBox 300×60) over the samples of the last
 * WINDOW_MS; a young page spans what it has (at least 30 s) so its first samples are not a sliver.
 */
function drawCharts() {
  const end = samples.length ? samples[samples.length - 1].t : Date.now();
  const span = Math.min(WINDOW_MS, Math.max(30_000, end - (samples[0]?.t ?? end)));
  for (const fig of document.querySelectorAll('figure.chart')) {
    const field = fig.dataset.field;
    const points = samples.filter((s) => s.t >= end - span);
    const peak = Math.max(0, ...points.map((s) => s[field]));
    const max = Math.max(1, peak);
    fig.querySelector('polyline').setAttribute('points', points
      .map((s) => `${(300 - ((end - s.t) / span) * 300).toFixed(1)},${(58 - (s[field] / max) * 56).toFixed(1)}`)
      .join(' '));
    fig.dataset.points = String(points.length);
    const last = points[points.length - 1];
    fig.querySelector('figcaption b').textContent = last ? `${fmtRate(last[field])} (max ${fmtRate(peak)})` : '';
  }
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
  signIn($('#admin-token').value.trim());
});
$('#logout').addEventListener('click', () => signOut());
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
    // Over the WebSocket with the admin token (an admin may publish to any channel but `sys:*`).
    const r = await client.publish($('#pub-channel').value.trim(), data, {
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

// `#token=…` (the link `herald serve` prints in development): taken once, then dropped from the
// address bar. The fragment never reaches the server.
const fromLink = new URLSearchParams(location.hash.slice(1)).get('token');
if (fromLink) history.replaceState(null, '', location.pathname + location.search);
const saved = fromLink || sessionStorage.getItem(KEY);
if (saved) signIn(saved);
else showLogin();
